"""deploy/slurm/minima.sbatch on a real one-node SLURM on 127.0.0.1 (munged, slurmctld and slurmd
with their files in a temp dir): a whole sweep; a sweep cancelled with scancel, resubmitted, warned
of its time limit (USR1) so that it requeues itself, and finished with every trial exactly once.
Fails, never skips, when SLURM cannot start. Bad input is refused before any of it starts."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "slurm" / "minima.sbatch"
SMOKE = ROOT / "sweeps" / "smoke.yaml"
DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
# packs whose members stop at 10 epochs or run long: cut after some trials finished, none lost
LONG = ["--set", "axes.weight_decay=[0.0]", "--set", "axes.epochs=[10, 1500]", "--set", "base.stop_at_train_acc=null",
        "--set", "checkpoint_every=50"]


@dataclass
class Slurm:
    root: Path
    env: dict[str, str]  # SLURM_CONF for the client commands
    ray_tmp: str  # node-local and short, as the batch script needs

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()}")
        return out

    def job(self, job_id: int) -> dict[str, str]:
        line = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait(self, job_id: int, states: set[str], timeout_s: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info["JobState"] in states:
                return info
            time.sleep(1)
        raise AssertionError(f"job {job_id} is {info['JobState']}, not {states}, after {timeout_s} s:\n"
                             f"{self.output(job_id)[-4000:]}")

    def output(self, job_id: int) -> str:
        path = self.root / f"job-{job_id}.out"
        return path.read_text(errors="replace") if path.exists() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def slurm_conf(root: Path, host: str, user: str, munge_socket: Path) -> str:
    return f"""ClusterName=minimatest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
MailProg=/bin/true
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def ours(conf: Path) -> list[int]:
    """Processes started under this SLURM (slurmstepd, the jobs' Ray and drivers): they carry its
    SLURM_CONF in their environment."""
    mark = f"SLURM_CONF={conf}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [c for c in DAEMONS + COMMANDS if shutil.which(c) is None and not Path(f"/usr/sbin/{c}").exists()]
    if missing:
        pytest.fail(f"SLURM cannot start: {', '.join(missing)} not installed (apt-get install slurm-wlm munge; .ci/run does)")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log", "munge-key", "munge"):
        (root / sub).mkdir()
    (root / "munge-key").chmod(0o700)
    key = root / "munge-key" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = root / "munge" / "munge.socket"
    host, user = socket.gethostname().split(".")[0], getpass.getuser()
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host, user, munge_socket))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["SLURM_CONF"] = str(conf)
    ray_tmp = tempfile.mkdtemp(prefix="mr", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    daemons: list[subprocess.Popen] = []
    sbin = lambda name: shutil.which(name) or f"/usr/sbin/{name}"  # noqa: E731
    commands = [
        [sbin("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}",
         f"--pid-file={root}/munge/munged.pid", f"--seed-file={root}/munge/munged.seed",
         f"--log-file={root}/log/munged.log"],
        [sbin("slurmctld"), "-D", "-f", str(conf)],
        [sbin("slurmd"), "-D", "-f", str(conf), "-N", host],
    ]
    handle = Slurm(root, env, ray_tmp)
    try:
        for cmd in commands:
            log = open(root / "log" / f"{Path(cmd[0]).name}.out", "w")
            daemons.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            if cmd[0].endswith("munged"):
                wait_for(lambda: munge_socket.exists(), 20, "munged's socket")

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=30)
            return out.stdout.strip() == "idle"

        try:
            wait_for(idle, 60, "the SLURM node to be idle")
        except AssertionError as err:
            logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted((root / "log").iterdir()))
            pytest.fail(f"SLURM cannot start: {err}\n{logs}")
        yield handle
    finally:
        if daemons and all(d.poll() is None for d in daemons):
            subprocess.run(["scancel", "--user", user], env=env, capture_output=True, timeout=60)
            with contextlib.suppress(AssertionError):  # the jobs' own cleanup: Ray stopped, temp dirs removed
                wait_for(lambda: not subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True,
                                                    timeout=30).stdout.strip(), 60, "cancelled jobs to end")
        for daemon in reversed(daemons):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGTERM)
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
        for pid in ours(conf):  # whatever a job left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def submit(slurm: Slurm, places: Path, *args: str, with_minima: bool = False) -> int:
    """sbatch the script with the smoke sweep, or have `minima submit --slurm` do it."""
    env = {**slurm.env,
           "MINIMA_VENV": sys.prefix,  # the job's environment: this test's venv, running this checkout
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "MINIMA_STORAGE": str(places / "results"),
           "MINIMA_TRACKING_URI": f"sqlite:///{places / 'mlflow.db'}",
           "MINIMA_TOKEN_DIR": str(places / "tokens"),
           "MINIMA_RAY_TMP": slurm.ray_tmp}
    options = [f"--cpus-per-task={os.cpu_count()}", f"--output={slurm.root}/job-%j.out"]
    if with_minima:
        cmd = [sys.executable, "-m", "minima.cli", "submit", str(SMOKE), "--slurm", *args,
               *(f"--sbatch={option}" for option in options)]
    else:
        cmd = ["sbatch", "--parsable", *options, str(SCRIPT), str(SMOKE), *args]
    out = subprocess.run(cmd, env=env, cwd=places, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().split(";")[0])


def final_rows(results: Path, name: str) -> dict:
    """(Ray trial folder, pack member) -> how many final reports Ray's result.json holds for it."""
    out: Counter = Counter()
    for result in (results / name).glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        rows = [row for r in rows for row in (r.get("records") or [r])]  # a pack's report holds its members' rows
        out.update((result.parent.name, r.get("member")) for r in rows if r.get("final"))
    return dict(out)


def assert_one_mlflow_run_per_trial(places: Path, name: str, trials: int) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{places / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("minima.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("minima.role") != "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == trials and len({r.data.tags["trial_key"] for r in children}) == trials
    assert {(r.info.status, r.data.tags.get("status")) for r in children} == {("FINISHED", "ok")}


def ray_client_gets_in(address: str, **auth: str) -> bool:
    """Whether a Ray client with this token setting runs a task on the job's Ray."""
    code = "import ray; ray.init(log_to_driver=False); print('ran', ray.get(ray.remote(lambda: 7).remote()))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env.update(RAY_ADDRESS=address, RAY_AUTH_MODE="token", **auth)
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        return False
    return "ran 7" in out.stdout


@pytest.mark.slow
def test_a_sweep_runs_on_slurm_with_one_mlflow_run_per_trial(slurm, tmp_path):
    job = submit(slurm, tmp_path, with_minima=True)
    token_modes = set()

    def done() -> bool:  # meanwhile: the job's Ray token, readable by its user only
        for token in (tmp_path / "tokens").glob("*.token"):
            with contextlib.suppress(FileNotFoundError):
                token_modes.add((stat.S_IMODE(token.parent.stat().st_mode), stat.S_IMODE(token.stat().st_mode)))
        return slurm.job(job)["JobState"] not in ("PENDING", "RUNNING", "COMPLETING")

    wait_for(done, 300, f"job {job}")
    info, log = slurm.job(job), slurm.output(job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    assert "sweep smoke: 8 trials: 8 ok" in log and "token auth on" in log
    assert token_modes == {(0o700, 0o600)}
    assert sorted(final_rows(tmp_path / "results", "smoke").values()) == [1] * 8
    assert_one_mlflow_run_per_trial(tmp_path, "smoke", 8)
    assert not list((tmp_path / "tokens").iterdir()) and not os.listdir(slurm.ray_tmp)  # token and temp dirs gone


@pytest.mark.slow
def test_a_cancelled_then_requeued_sweep_finishes_every_trial_once(slurm, tmp_path):
    results = tmp_path / "results"
    first = submit(slurm, tmp_path, "--name", "cut", *LONG)
    wait_for(lambda: "Ray head at" in slurm.output(first), 300, "the job's Ray")
    address = re.search(r"Ray head at (\S+)", slurm.output(first)).group(1)
    token = next((tmp_path / "tokens").glob("*.token"))
    assert not ray_client_gets_in(address, RAY_AUTH_TOKEN="0" * 64)  # a wrong token runs nothing
    assert ray_client_gets_in(address, RAY_AUTH_TOKEN_PATH=str(token))  # the job's own token does
    wait_for(lambda: sum(final_rows(results, "cut").values()) >= 2, 300, "two finished trials")
    slurm.run("scancel", str(first))
    assert slurm.wait(first, {"CANCELLED"}, 120)["JobState"] == "CANCELLED"
    finished = sum(final_rows(results, "cut").values())
    assert 2 <= finished < 8, "the sweep finished before it could be cancelled; lengthen the trials"

    again = submit(slurm, tmp_path, "--name", "cut", *LONG)
    wait_for(lambda: "has results: resuming it" in slurm.output(again), 300, "the resubmitted job to resume")
    time.sleep(3)
    slurm.run("scancel", "--batch", "--signal=USR1", str(again))  # what --signal=B:USR1@... sends near the limit
    wait_for(lambda: slurm.job(again)["Restarts"] == "1", 300, "the job to requeue itself")
    assert sum(final_rows(results, "cut").values()) < 8
    slurm.wait(again, {"PENDING"}, 120)
    # SLURM holds a requeued job for 2 minutes; it also refuses ("Job credential revoked") a start
    # in the same second as the revocation of the last run's credential
    time.sleep(2)
    slurm.run("scontrol", "update", f"JobId={again}", "StartTime=now")
    info = slurm.wait(again, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 600)
    log = slurm.output(again)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    assert "time limit near" in log and f"requeueing job {again}" in log
    stopped = log[log.index("time limit near"):log.index(f"requeueing job {again}")]
    assert "8/8 done" not in stopped, stopped  # the trials Tune stopped are not counted done
    assert log.count("has results: resuming it") == 2 and "sweep cut: 8 trials: 8 ok" in log
    assert sorted(final_rows(results, "cut").values()) == [1] * 8  # every trial finished exactly once
    assert_one_mlflow_run_per_trial(tmp_path, "cut", 8)
    assert not list((tmp_path / "tokens").iterdir()) and not os.listdir(slurm.ray_tmp)


@pytest.mark.parametrize("case, says", [
    ("outside a job", "not inside a SLURM job"),
    ("no sweep file", "no sweep file"),
    ("missing sweep file", "nope.yaml: no such sweep file"),
    ("storage unset", "MINIMA_STORAGE is not set"),
    ("storage relative", "MINIMA_STORAGE=results is relative"),
    ("secrets readable", "others may read it; chmod 600 it"),
    ("long temp dir", "too long for Ray's socket paths"),
    ("trial bigger than a node", "resources.cpu: 4096 CPUs per trial"),
])
def test_bad_input_is_refused_in_one_line_with_exit_2(tmp_path, case, says):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MINIMA_STORAGE", "MINIMA_ENV"))}
    env.update(SLURM_JOB_ID="4242", MINIMA_VENV=sys.prefix, MINIMA_STORAGE=str(tmp_path / "results"),
               MINIMA_TOKEN_DIR=str(tmp_path / "tokens"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    args = [str(SMOKE)]
    if case == "outside a job":
        del env["SLURM_JOB_ID"]
    elif case == "no sweep file":
        args = []
    elif case == "missing sweep file":
        args = ["nope.yaml"]
    elif case == "storage unset":
        del env["MINIMA_STORAGE"]
    elif case == "storage relative":
        env["MINIMA_STORAGE"] = "results"
    elif case == "secrets readable":
        secrets = tmp_path / "minima.env"
        secrets.write_text("export MLFLOW_TRACKING_PASSWORD=x\n")
        secrets.chmod(0o644)
        env["MINIMA_ENV_FILE"] = str(secrets)
    elif case == "long temp dir":
        env["MINIMA_RAY_TMP"] = str(tmp_path)
    elif case == "trial bigger than a node":
        args += ["--set", "resources.cpu=4096"]
    out = subprocess.run(["bash", str(SCRIPT), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    assert says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "tokens").exists()  # nothing was started


def test_minima_submit_slurm_refuses_before_sbatch_what_the_job_would(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MINIMA_STORAGE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["PATH"] = str(tmp_path)  # no sbatch: a call to it would fail differently

    def submit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "minima.cli", "submit", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    unset = submit(str(SMOKE), "--slurm")
    assert unset.returncode == 2 and "export MINIMA_STORAGE" in unset.stderr
    bad = submit(str(SMOKE), "--slurm", "--set", "seeds=many")
    assert bad.returncode == 2 and "seeds" in bad.stderr and "Traceback" not in bad.stderr
    env["MINIMA_STORAGE"] = str(tmp_path / "results")
    no_sbatch = submit(str(SMOKE), "--slurm")
    assert no_sbatch.returncode == 2 and "sbatch not found" in no_sbatch.stderr
    stray = submit(str(SMOKE), "--address", "http://127.0.0.1:8265", "--sbatch=--nodes=2")
    assert stray.returncode == 2 and "--sbatch goes with --slurm" in stray.stderr
