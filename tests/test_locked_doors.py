"""Ray token authentication and MLflow accounts, with real processes on 127.0.0.1: a local sweep
and a `ray start --head` refuse clients without the token; an MLflow server with accounts refuses
anonymous writes, takes the sweep's credentials and gives read accounts nothing to write."""

import glob
import ipaddress
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.chaos import MlflowServer, answers_health, free_port, wait_for  # noqa: E402

pytestmark = pytest.mark.slow
SMOKE = str(REPO / "sweeps" / "smoke.yaml")
BIN = Path(sys.executable).parent

# A client of the cluster at argv[1]: runs one task and prints the address its node advertises.
PROBE = """
import sys, ray
ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False)
assert ray.get(ray.remote(lambda: 42).remote(), timeout=60) == 42
print("RAN", *sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]), flush=True)
"""


REFUSED = ("InvalidAuthToken", "Unauthenticated", "Failed to connect")  # what Ray's client says when refused


def probe(address: str, env: dict, tmp: Path, name: str) -> tuple[int | None, str, str]:
    """(exit code or None if it was still trying, stdout, stderr) of a client of `address`. A
    refused client may retry for minutes: once Ray has said why, it is stopped."""
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    with open(out, "w") as o, open(err, "w") as e:
        client = subprocess.Popen([sys.executable, "-c", PROBE, address], stdout=o, stderr=e, env=env)
    deadline = time.monotonic() + 120
    while client.poll() is None and time.monotonic() < deadline:
        if any(word in err.read_text() for word in REFUSED[:2]) and time.monotonic() > deadline - 110:
            break  # refused, and given ten seconds to run anything regardless
        time.sleep(0.5)
    code = client.poll()
    if code is None:
        client.kill()
        client.wait()
    return code, out.read_text(), err.read_text()


def without_ray_auth(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return {**env, **(extra or {})}


def listening_addresses(port: int) -> set:
    """The addresses a TCP port listens on, from /proc/net (nothing is sent anywhere)."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(host)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(ipaddress.ip_address(words[:width]))
    return found


def is_loopback(address) -> bool:
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def session_gcs_port(driver_pid: int) -> int | None:
    """The GCS port of the local Ray that the process `driver_pid` started (Ray names the session
    folder after its driver's pid and writes the port beside it)."""
    for session in glob.glob(f"/tmp/ray/session_*_{driver_pid}"):
        ports = glob.glob(f"{session}/gcs_server_port_*")
        if ports and Path(ports[0]).read_text().strip():
            return int(Path(ports[0]).read_text().strip())
    return None


def test_a_local_sweep_runs_with_token_auth_and_clients_without_the_token_run_nothing(tmp_path):
    """Also: a token that a plain `ray.init()` left readable by everyone is replaced, so whoever
    read it cannot join the sweep's Ray with it."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    leaked = "1" * 64
    (home / ".ray" / "auth_token").write_text(leaked)
    (home / ".ray" / "auth_token").chmod(0o644)
    # Ray's default for a local cluster: token authentication; the data cache as before
    env = without_ray_auth({"HOME": str(home), "MINIMA_DATA_DIR": os.environ.get("MINIMA_DATA_DIR")
                            or str(Path.home() / ".cache" / "minima" / "data")})
    driver = subprocess.Popen([sys.executable, "-m", "minima.cli", "run", SMOKE, "--set", f"storage={tmp_path / 'r'}",
                               "--set", f"tracking_uri=sqlite:///{tmp_path / 'm.db'}", "--set", "base.epochs=100",
                               "--set", "base.stop_at_train_acc=null"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: session_gcs_port(driver.pid) is not None or driver.poll() is not None, 120,
                 "the sweep's local Ray")
        port = session_gcs_port(driver.pid)
        assert port, driver.communicate()[1][-3000:]
        # the sweep's Ray answers on loopback only: no other machine reaches its GCS
        listening = listening_addresses(port)
        assert listening and all(is_loopback(a) for a in listening), listening
        # a local client without the token (another user on a shared node) runs nothing
        address = f"127.0.0.1:{port}"
        token = (home / ".ray" / "auth_token").read_text().strip()
        assert token != leaked
        local = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HOME": str(home)}  # clients here reach it at 127.0.0.1
        clients = {"no token": without_ray_auth({**local, "RAY_AUTH_MODE": "disabled"}),
                   "a wrong token": without_ray_auth({**local, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}),
                   "the leaked token": without_ray_auth({**local, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": leaked}),
                   "the token": without_ray_auth({**local, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})}
        with ThreadPoolExecutor(len(clients)) as pool:
            tried = dict(zip(clients, pool.map(lambda kv: probe(address, kv[1], tmp_path, kv[0].replace(" ", "_")),
                                               clients.items())))
        assert driver.poll() is None, "the sweep ended before every client had tried: probes prove nothing"
    finally:
        out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0 and "8 trials: 8 ok" in out, err[-3000:]
    for who in ("no token", "a wrong token", "the leaked token"):
        code, stdout, stderr = tried[who]
        assert code != 0 and "RAN" not in stdout, (who, stdout)
        assert any(word in stderr for word in REFUSED), (who, stderr[-2000:])
    # the same client with the token runs a task, on a node whose address is loopback
    code, stdout, stderr = tried["the token"]
    assert code == 0 and "RAN 127.0.0.1" in stdout, stderr[-2000:]
    assert os.stat(home / ".ray" / "auth_token").st_mode & 0o077 == 0  # the token is this user's only


@pytest.fixture(scope="module")
def accounts_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth` with secrets made as on a cluster head."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-accounts"))
    server.start()
    yield server
    server.stop()


def test_mlflow_with_accounts_refuses_anonymous_writes_and_read_accounts_write_nothing(accounts_server, tmp_path,
                                                                                       monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = accounts_server.uri
    created = requests.post(f"{uri}/api/2.0/mlflow/experiments/create", json={"name": "anonymous"}, timeout=30)
    assert created.status_code in (401, 403), created.text
    wrong = requests.post(f"{uri}/api/2.0/mlflow/experiments/create", json={"name": "anonymous"}, timeout=30,
                          auth=("admin", "password1234"))  # MLflow's old default admin password
    assert wrong.status_code in (401, 403), wrong.text

    # a sweep without credentials is refused before Ray starts, naming the fix
    places = ["--set", f"storage={tmp_path / 'r'}", "--set", f"tracking_uri={uri}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    refused = subprocess.run([sys.executable, "-m", "minima.cli", "run", SMOKE, *places], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "MLFLOW_TRACKING_USERNAME" in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr and not (tmp_path / "r" / "smoke").exists()

    with accounts_server.credentials():
        admin = MlflowClient(uri)
        exp = admin.create_experiment("admins-sweep")
        run = admin.create_run(exp)
        account = subprocess.run([sys.executable, "-m", "minima.cli", "mlflow-user", "reader", "--tracking-uri", uri],
                                 capture_output=True, text=True, timeout=120, env={**os.environ})
    assert account.returncode == 0, account.stderr[-2000:]
    password = account.stdout.strip().splitlines()[-1]
    with monkeypatch.context() as reading:
        reading.setenv("MLFLOW_TRACKING_USERNAME", "reader")
        reading.setenv("MLFLOW_TRACKING_PASSWORD", password)
        reader = MlflowClient(uri)
        assert reader.get_run(run.info.run_id).info.experiment_id == exp  # reads
        with pytest.raises(MlflowException) as denied:
            reader.log_metric(run.info.run_id, "test_acc", 0.5)
        assert denied.value.get_http_status_code() == 403
        with pytest.raises(MlflowException):
            reader.delete_run(run.info.run_id)
    with accounts_server.credentials():
        assert MlflowClient(uri).get_run(run.info.run_id).info.lifecycle_stage == "active"


def test_a_read_account_cannot_take_over_a_sweeps_experiment(accounts_server, tmp_path, monkeypatch):
    """basic-auth lets any account create an experiment and manage it. A reader who makes the
    experiment of a sweep it read in a sweep file is refused before Ray starts; an experiment the
    sweep made takes no run, tag or deletion from a reader."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from sweeps.cluster.mlflow_auth import claim_experiment

    uri = accounts_server.uri
    with accounts_server.credentials():
        account = subprocess.run([sys.executable, "-m", "minima.cli", "mlflow-user", "eve", "--tracking-uri", uri],
                                 capture_output=True, text=True, timeout=120, env={**os.environ})
    assert account.returncode == 0, account.stderr[-2000:]
    eve = {"MLFLOW_TRACKING_USERNAME": "eve", "MLFLOW_TRACKING_PASSWORD": account.stdout.strip().splitlines()[-1]}
    with monkeypatch.context() as as_eve:
        for key, value in eve.items():
            as_eve.setenv(key, value)
        reader = MlflowClient(uri)
        trap = reader.create_experiment("claimed")  # MLflow lets a read account do this
        planted = reader.create_run(trap, tags={"minima.trial_key": "planted"})
        reader.set_terminated(planted.info.run_id, "FINISHED")

    with accounts_server.credentials():
        refused = subprocess.run([sys.executable, "-m", "minima.cli", "run", SMOKE, "--name", "claimed",
                                  "--set", f"storage={tmp_path / 'r'}", "--set", f"tracking_uri={uri}"],
                                 capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ})
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "'claimed'" in refused.stderr and "eve" in refused.stderr and "--name" in refused.stderr
        assert "Traceback" not in refused.stderr and not (tmp_path / "r" / "claimed").exists()

        assert claim_experiment(uri, "fresh", {"mlflow.experimentKind": "custom_model_development"}) is None
        fresh = MlflowClient(uri).get_experiment_by_name("fresh")
        assert fresh is not None  # made before any trial, by the sweep's own account
        assert claim_experiment(uri, "fresh", {}) is None  # found again: still only the admin's
    with monkeypatch.context() as as_eve:
        for key, value in eve.items():
            as_eve.setenv(key, value)
        reader = MlflowClient(uri)
        assert reader.get_experiment(fresh.experiment_id).name == "fresh"  # reads
        for write in (lambda: reader.create_run(fresh.experiment_id),
                      lambda: reader.set_experiment_tag(fresh.experiment_id, "owner", "eve"),
                      lambda: reader.delete_experiment(fresh.experiment_id)):
            with pytest.raises(MlflowException) as denied:
                write()
            assert denied.value.get_http_status_code() == 403


def test_submit_needs_the_clusters_token_and_the_sweep_logs_with_the_heads_credentials(accounts_server, tmp_path):
    """A real Ray head with token auth and the Jobs API on 127.0.0.1, started as deploy/aws/cluster.yaml starts
    it (the MLflow client credentials in its environment); `minima submit` must run the sweep there."""
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    from sweeps.cluster.ray_auth import make_private_token

    token_file = make_private_token(tmp_path / "cluster.token")  # the head's own token, not this user's default
    token = token_file.read_text()
    head_env = {**without_ray_auth({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}),
                **accounts_server.client_env, "PATH": f"{BIN}:{os.environ['PATH']}"}
    port, dashboard = free_port(), free_port()
    start = subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
                            "--dashboard-agent-listen-port", str(free_port()),  # not Ray's fixed default
                            "--disable-usage-stats"], env=head_env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr[-2000:]
    address = f"http://127.0.0.1:{dashboard}"
    user_env = {k: v for k, v in without_ray_auth().items() if not k.startswith("MLFLOW_TRACKING_")}
    places = ["--set", f"storage={tmp_path / 'results'}", "--set", f"tracking_uri={accounts_server.uri}"]

    def submit(env, *extra):
        return subprocess.run([sys.executable, "-m", "minima.cli", "submit", SMOKE, "--address", address,
                               "--working-dir", str(REPO), *places, "--set", "base.epochs=2", *extra],
                              capture_output=True, text=True, timeout=420, env=env, cwd=tmp_path)

    try:
        relative = subprocess.run([sys.executable, "-m", "minima.cli", "submit", SMOKE, "--address", address,
                                   "--working-dir", str(REPO)], capture_output=True, text=True, timeout=120,
                                  env=user_env, cwd=tmp_path)
        assert relative.returncode == 2 and "storage: 'minima_results' is relative" in relative.stderr

        # no token: this user's own default token file is not the cluster's
        for env in ({**user_env, "HOME": str(tmp_path)}, user_env,
                    {**user_env, "RAY_AUTH_TOKEN": "f" * 64}):
            refused = submit(env)
            assert refused.returncode == 2 and "refused the job" in refused.stderr, refused.stderr[-2000:]
            assert "minima fetch-token deploy/aws/cluster.yaml" in refused.stderr and "Traceback" not in refused.stderr
            assert token not in refused.stderr + refused.stdout
        anonymous = requests.get(f"{address}/api/jobs/", timeout=30)
        assert anonymous.status_code == 401
        with pytest.raises(Exception, match="(?i)auth"):
            JobSubmissionClient(address).submit_job(entrypoint="echo pwned")

        out = submit({**user_env, "RAY_AUTH_TOKEN_PATH": str(token_file)})
        assert out.returncode == 0, out.stderr[-2000:]
        job_id = out.stdout.strip().splitlines()[-1]
        assert "ray job logs" in out.stderr and token not in out.stdout + out.stderr
        client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
        wait_for(lambda: client.get_job_status(job_id) in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED),
                 400, "the submitted job to end")
        logs = client.get_job_logs(job_id)
        assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, logs[-3000:]
        assert "8 ok" in logs and "not fully logged" not in logs, logs[-3000:]
        assert len(client.list_jobs()) == 1  # the refused submissions left no job behind
        status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, job_id],
                                env={**user_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)},
                                capture_output=True, text=True, timeout=120)
        assert status.returncode == 0 and "succeeded" in (status.stdout + status.stderr).lower(), status.stderr[-2000:]
        assert f"RAY_AUTH_MODE=token ray job status --address {address} {job_id}" in out.stderr
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=head_env, capture_output=True, timeout=120)
    with accounts_server.credentials():
        mlflow_client = MlflowClient(accounts_server.uri)
        runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("smoke").experiment_id])
    children = [r for r in runs if r.data.tags.get("minima.role") != "parent"]
    assert len(runs) == 9 and len(children) == 8 and all(r.info.status == "FINISHED" for r in runs)


def ui_processes(port: int) -> list[int]:
    """Pids of processes whose command line names this port (the UI server and its workers)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"127.0.0.1:{port}" in cmdline or f"--port {port}" in cmdline:
                pids.append(int(proc.name))
    return pids


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_minima_ui_starts_only_the_ui_and_stops_with_its_children(tmp_path, stop):
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "minima.cli", "ui", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                           "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    try:
        wait_for(lambda: answers_health(f"http://127.0.0.1:{port}"), 120, "minima ui to answer")
        time.sleep(2)  # anything it starts after the first answer
        family = descendants(ui.pid)
        commands = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode() for p in family if alive(p)]
        assert family and not [c for c in commands if "huey" in c or "job" in c.lower()], commands
        ui.send_signal(stop)
        ui.wait(timeout=30)
    finally:
        if ui.poll() is None:
            ui.kill()
        output = ui.stdout.read().decode(errors="replace")
    wait_for(lambda: not [p for p in family if alive(p)], 30, "the UI's processes to exit")
    assert not [p for p in ui_processes(port) if alive(p)], output[-2000:]
    assert "Traceback" not in output, output[-2000:]


def command_lines() -> list[str]:
    """Every process's command line, whole, as `ps -ww` shows any user (plain `ps` cuts at 80 columns)."""
    lines = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            lines.append(Path(cmdline).read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # the process ended meanwhile
            continue
    return lines


def test_the_heads_mlflow_server_takes_its_database_uri_from_the_environment_not_argv(tmp_path):
    """deploy/aws/cluster.yaml's command that starts MLflow on the head, run here with the head's
    home in a temp dir: the database URI (a Postgres one holds a password) is on no process's command line,
    which every user of the head can read with `ps`."""
    import secrets

    import yaml

    head = yaml.safe_load((REPO / "deploy" / "aws" / "cluster.yaml").read_text())["head_start_ray_commands"]
    command = next(c for c in head if "mlflow server" in c)
    port = free_port()
    assert "--port 5000" in command
    command = command.replace("--port 5000", f"--port {port}")
    home = tmp_path / "home"
    home.mkdir()
    env = {**without_ray_auth(), "HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    made = subprocess.run([str(BIN / "minima"), "head-secrets"], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    marker = f"pw{secrets.token_hex(6)}"  # stands for a password inside the URI
    db = tmp_path / marker / "mlflow.db"
    db.parent.mkdir()
    (home / ".minima-env").write_text(f"export MINIMA_MLFLOW_DB=sqlite:///{db}\n"
                                      f"export MINIMA_ARTIFACTS={tmp_path / 'artifacts'}\n")
    starter = subprocess.Popen(["bash", "-c", command], env=env, cwd=home, start_new_session=True)
    assert starter.wait(timeout=60) == 0
    try:
        host = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()[0]
        wait_for(lambda: answers_health(f"http://{host}:{port}"), 120, "the head's MLflow server to answer /health")
        argv = command_lines()
        assert any("mlflow" in line and "server" in line for line in argv)
        assert not [line for line in argv if marker in line]
        assert db.exists()  # the server opened the database it was given
    finally:
        os.killpg(starter.pid, signal.SIGKILL)  # the server and its workers: the starter's session
