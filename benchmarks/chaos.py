"""Claim: a sweep on a multi-node Ray cluster survives a worker node SIGKILLed, a tracking
server down for ~20 s and a SIGKILLed driver, and loses, duplicates and mis-resumes nothing.

Evidence, with real processes on 127.0.0.1: a Ray cluster of a head (no CPUs) and two worker
nodes (`ray.cluster_utils.Cluster`, each node its own raylet and processes) with token
authentication, a real `mlflow server --app-name basic-auth` (SQLite) as the tracking URI that
the driver logs to with the admin's credentials, the sweep's storage on a path every node shares.
One chaos run: start the sweep; once a trial has checkpointed, SIGKILL a worker node (a spare
joins, as an autoscaler would add one) and stop the MLflow server; restart it 20 s later;
SIGKILL the driver at its next checkpoint; `minima resume` the sweep; then count, against
the same trials run uninterrupted in this process:

- lost: trials without exactly one `ok` row in the Parquet export or one FINISHED MLflow run
  with its final metrics;
- duplicated: extra export rows, extra MLflow runs, repeated steps in an MLflow history;
- mis_resumed: trials whose final metrics differ from the uninterrupted run, or whose curves
  (export or MLflow) have gaps;
- and how the Ray trials restarted (Ray counts `iterations_since_restore` from 1 again): from a
  checkpoint, or from scratch (step 1 again: right for a trial that had not checkpointed yet).

    python benchmarks/chaos.py [--runs 3]      # prints JSON, one entry per chaos run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path


SWEEP = {  # 8 trials in packs of 2: 4 Ray trials over 2 single-CPU nodes
    "name": "chaos",
    "base": {"dataset": "mnist1d", "model": "mlp", "width": 32, "depth": 2, "epochs": 800,
             "stop_at_train_acc": None, "flatness_samples": 1},
    "axes": {"pretrain_epochs": [0, 5], "weight_decay": [0.0, 5.0e-4]},
    "seeds": 2,
    "pack": 2,
    "max_failures": 3,
    "checkpoint_every": 5,
}
OUTAGE_S = 20.0

# Token authentication for the cluster this process starts, its nodes and its drivers. Ray reads
# the mode once, when it is first imported, so it is set here, before any Ray import.
os.environ.setdefault("RAY_AUTH_MODE", "token")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def answers_health(base_url: str) -> bool:
    """Whether an MLflow server (or UI) at `base_url` answers its /health."""
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store and, as on the cluster head, accounts
    (--app-name basic-auth, secrets made by `minima head-secrets`'s code); `client_env` holds the
    admin's credentials the sweep driver logs with."""

    def __init__(self, root: Path, accounts: bool = True):
        from sweeps.cluster.mlflow_auth import HeadSecrets, provision, read_env_file

        self.db = root / "mlflow-server.db"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None
        self.server_env: dict[str, str] = {}
        self.client_env: dict[str, str] = {}
        if accounts:
            secrets = HeadSecrets(root / "secrets")
            provision(secrets)
            self.server_env, self.client_env = read_env_file(secrets.server_env), read_env_file(secrets.client_env)

    def start(self, timeout_s: float = 120) -> None:
        env = {**os.environ, **self.server_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        mlflow = str(Path(sys.executable).parent / "mlflow")
        accounts = ["--app-name", "basic-auth"] if self.server_env else []
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [mlflow, "server", *accounts, "--backend-store-uri", f"sqlite:///{self.db}", "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for(self.healthy, timeout_s, "the MLflow server to answer /health")

    @contextlib.contextmanager
    def credentials(self):
        """This process's MLflow clients log in as the admin while inside."""
        saved = {k: os.environ.get(k) for k in self.client_env}
        os.environ.update(self.client_env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def healthy(self) -> bool:
        return answers_health(self.uri)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # as a crash would: no clean shutdown
            self.proc.wait()


class LocalCluster:
    """A Ray head without CPUs and single-CPU worker nodes, each a separate raylet, with token
    authentication as on the cluster (this user's ~/.ray/auth_token)."""

    def __init__(self, workers: int = 2):
        from ray.cluster_utils import Cluster

        from sweeps.cluster.ray_auth import AUTH_MODE_ENV, make_private_token

        if os.environ.get(AUTH_MODE_ENV) != "token":  # Ray reads it once, when first imported
            raise RuntimeError(f"{AUTH_MODE_ENV}=token must be set before Ray is imported (this module does)")
        make_private_token()

        self.cluster = Cluster(initialize_head=True, connect=False,
                               head_node_args={"num_cpus": 0, "include_dashboard": False})
        self.workers = [self.cluster.add_node(num_cpus=1) for _ in range(workers)]
        self.address = self.cluster.address

    def kill_worker(self, index: int = 0) -> None:
        """SIGKILL every process of one worker node, as a reclaimed spot instance."""
        node = self.workers.pop(index)
        self.cluster.remove_node(node, allow_graceful=False)

    def add_worker(self) -> None:
        self.workers.append(self.cluster.add_node(num_cpus=1))

    def shutdown(self) -> None:
        self.cluster.shutdown()


def minima_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "minima.cli", *args]


def _finals(experiment: Path) -> int:
    count = 0
    for result in experiment.glob("trial_*/result.json"):
        for line in result.read_text().splitlines():
            count += '"final": true' in line
    return count


def _checkpointed(experiment: Path) -> bool:
    return any(experiment.glob("trial_*/checkpoint_*"))


def _checkpoints(experiment: Path) -> set[str]:
    return {str(p.relative_to(experiment)) for p in experiment.glob("trial_*/checkpoint_*")}


def reference_results(spec) -> dict[str, dict]:
    """Every trial of the sweep run uninterrupted in this process (one pack: bit-equal to alone)."""
    from sweeps.design.keys import trial_key
    from trainables.packed import run_pack

    values = spec.trial_values()
    results = run_pack(values)
    return {trial_key(v): r.summary for v, r in zip(values, results)}


def chaos_run(root: Path, cluster_workers: int = 2, kill_driver: bool = True, log=print) -> dict:
    """One chaos run in `root`; returns its timeline and the lost/duplicated/mis-resumed counts."""
    import yaml

    from sweeps.design.spec import parse_sweep

    root.mkdir(parents=True, exist_ok=True)
    storage = root / "shared-storage"  # every node writes checkpoints here, as to s3://
    server = MlflowServer(root)
    spec_data = {**SWEEP, "storage": str(storage), "tracking_uri": server.uri}
    sweep_file = root / "chaos.yaml"
    sweep_file.write_text(yaml.safe_dump(spec_data))
    spec = parse_sweep(spec_data)
    experiment = storage / spec.name
    events: list[tuple[float, str]] = []
    t0 = time.monotonic()

    def mark(what: str) -> None:
        events.append((round(time.monotonic() - t0, 1), what))
        log(f"[chaos {events[-1][0]:6.1f}s] {what}")

    server.start()
    mark("mlflow server up")
    try:
        cluster = LocalCluster(cluster_workers)
    except BaseException:
        server.stop()
        raise
    mark(f"ray cluster up: head + {cluster_workers} workers at {cluster.address}")
    env = {**os.environ, **server.client_env, "RAY_ADDRESS": cluster.address}
    driver_log = open(root / "driver.log", "w")
    try:
        driver = subprocess.Popen(minima_cmd("run", str(sweep_file)), cwd=root, env=env, stdout=driver_log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        mark("driver started")
        wait_for(lambda: _checkpointed(experiment), 300, "a first trial checkpoint")
        cluster.kill_worker(0)
        mark("worker node SIGKILLed")
        server.stop()
        mark("mlflow server stopped")
        cluster.add_worker()
        mark("replacement worker joined")
        time.sleep(OUTAGE_S)
        server.start()
        mark(f"mlflow server back after {OUTAGE_S:.0f} s")
        if kill_driver:
            seen = _checkpoints(experiment)
            wait_for(lambda: bool(_checkpoints(experiment) - seen) or driver.poll() is not None, 300,
                     "a new checkpoint after the outage")
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
                mark(f"driver SIGKILLed ({_finals(experiment)} final reports stored)")
                resumed = subprocess.run(minima_cmd("resume", spec.name, "--storage", str(storage)), cwd=root,
                                         env=env, stdout=driver_log, stderr=subprocess.STDOUT, timeout=900)
                mark(f"resume exited {resumed.returncode}")
            else:
                mark("the sweep finished before the driver could be killed")
        else:
            driver.wait(timeout=900)
            mark(f"driver exited {driver.returncode}")
    finally:
        driver_log.close()
        cluster.shutdown()
    with server.credentials():
        counts = audit(spec, root, server.uri)
    server.stop()
    return {"timeline": events, **counts}


def restarts(experiment: Path) -> tuple[int, int]:
    """(restarts, restarts from scratch) of Ray trials, read from their stored reports: a
    restored trial counts Ray's `iterations_since_restore` from 1 again, and one restarted
    from scratch reports its step 1 again. (Trials report in batches, each checkpoint with
    every row before it, so a restored trial usually replays no row: steps need not go back.)"""
    total = scratch = 0
    for result in experiment.glob("trial_*/result.json"):
        for i, line in enumerate(result.read_text().splitlines()):
            report = json.loads(line)
            if i == 0 or report.get("iterations_since_restore") != 1:
                continue
            total += 1
            rows = report.get("records") or [report]
            steps = [r["step"] for r in rows if not r.get("final") and (r.get("member") or 0) == 0]
            scratch += bool(steps) and steps[0] == 1
    return total, scratch


def audit(spec, root: Path, tracking_uri: str) -> dict:
    """Lost, duplicated and mis-resumed trials: export and MLflow against uninterrupted runs."""
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from analysis.export import export_sweep
    from sweeps.storage.sweep_files import experiment_path
    from sweeps.run.tuner import CHECKPOINTS_TO_KEEP

    reference = reference_results(spec)
    export_sweep(experiment_path(spec), root / "export", spec.name, tracking_uri)
    trials = pq.read_table(root / "export" / "trials.parquet").to_pylist()
    curves = pq.read_table(root / "export" / "curves.parquet", columns=["trial_id", "step"]).to_pylist()
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs = [r for r in client.search_runs([experiment.experiment_id], max_results=10_000)
            if r.data.tags.get("minima.role") != "parent"]

    rows = Counter(t["trial_key"] for t in trials)
    run_count = Counter(r.data.tags.get("trial_key") for r in runs)
    steps_by_trial: dict[str, list[int]] = {}
    for c in curves:
        steps_by_trial.setdefault(c["trial_id"], []).append(c["step"])
    lost, duplicated, mis_resumed = set(), 0, set()
    lost_detail: list[dict] = []  # why each lost trial counts as lost, to diagnose it
    duplicated += sum(n - 1 for n in rows.values() if n > 1)
    duplicated += sum(n - 1 for n in run_count.values() if n > 1)
    by_key = {t["trial_key"]: t for t in trials}
    runs_by_key = {r.data.tags.get("trial_key"): r for r in runs}
    for key, expected in reference.items():
        row, run = by_key.get(key), runs_by_key.get(key)
        if row is None or row["status"] != "ok" or run is None or run.info.status != "FINISHED" \
                or "test_acc" not in run.data.metrics or "train_epochs" not in run.data.metrics:
            lost.add(key)
            lost_detail.append({"trial_key": key, "export_status": row and row["status"],
                                "export_error": row and (row["error"] or "")[-300:],
                                "mlflow_status": run and run.info.status,
                                "mlflow_final_logged": bool(run and "train_epochs" in run.data.metrics)})
            continue
        for metric in ("test_acc", "train_acc", "test_loss", "local_energy_5pct"):
            if row[metric] != expected[metric] or run.data.metrics.get(metric) != expected[metric]:
                mis_resumed.add(key)
        steps = sorted(steps_by_trial.get(row["trial_id"], []))
        if steps != list(range(1, len(steps) + 1)) or len(steps) != expected["train_epochs"] + row["pretrain_epochs"]:
            mis_resumed.add(key)
        history = [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")]
        duplicated += len(history) - len(set(history))
        if sorted(set(history)) != list(range(1, len(steps) + 1)):
            mis_resumed.add(key)
    restarted, from_scratch = restarts(Path(experiment_path(spec)))
    kept = [len(list(t.glob("checkpoint_*"))) for t in Path(experiment_path(spec)).glob("trial_*")]
    return {"trials": len(reference), "lost": len(lost), "duplicated": duplicated,
            "checkpoints_beyond_kept": sum(max(0, n - CHECKPOINTS_TO_KEEP) for n in kept),
            "ray_trial_restarts": restarted, "restarts_from_scratch": from_scratch, "lost_detail": lost_detail,
            "mis_resumed": len(mis_resumed), "mlflow_runs": len(runs),
            "running_runs": sum(r.info.status == "RUNNING" for r in runs), "export_rows": len(trials)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (logs, storage)")
    args = parser.parse_args()
    out = []
    for i in range(args.runs):
        root = Path(tempfile.mkdtemp(prefix=f"minima-chaos-{i}-"))
        t0 = time.perf_counter()
        result = chaos_run(root, log=lambda m: print(m, file=sys.stderr, flush=True))
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        out.append(result)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    totals = {k: sum(r[k] for r in out) for k in ("lost", "duplicated", "mis_resumed", "running_runs",
                                                   "ray_trial_restarts", "restarts_from_scratch",
                                                   "checkpoints_beyond_kept")}
    print(json.dumps({"benchmark": "chaos", "runs": args.runs, "trials_per_run": out[0]["trials"],
                      "totals": totals, "per_run": out}, indent=2))


if __name__ == "__main__":
    main()
