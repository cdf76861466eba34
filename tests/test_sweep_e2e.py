"""End to end on real local Ray and real MLflow (SQLite in a temp dir): run, fail, kill, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

SMOKE = str(Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml")
pytestmark = pytest.mark.slow


def minima(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def places(tmp_path):
    return [f"--set", f"storage={tmp_path / 'results'}", "--set", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]


def mlflow_runs(tmp_path, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=10_000)
    parents = [r for r in runs if r.data.tags.get("minima.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("minima.role") != "parent"]
    return client, parents, children


def final_rows(tmp_path, name):
    """trial folder -> number of final reports in Ray's result.json (each trial must have one)."""
    out = {}
    for result in (tmp_path / "results" / name).glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        out[result.parent.name] = sum(1 for r in rows if r.get("final"))
    return out


def assert_complete_histories(client, children):
    for run in children:
        if run.data.tags.get("status") == "error":
            continue
        history = client.get_metric_history(run.info.run_id, "test_acc")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, len(steps) + 1)), f"gaps or duplicates in {run.info.run_name}: {steps}"
        expected = int(run.data.metrics["train_epochs"]) + int(run.data.params["pretrain_epochs"])
        assert len(steps) == expected


def test_smoke_sweep_logs_one_child_run_per_trial(tmp_path):
    out = minima("run", SMOKE, *places(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "8 ok" in out.stdout and "[minima] 8/8 done" in out.stderr
    client, parents, children = mlflow_runs(tmp_path, "smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert len({r.data.tags["trial_key"] for r in children}) == 8
    assert len({r.data.tags["cell"] for r in children}) == 4  # 2 x 2 cells, 2 seeds each
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "ok"
        assert run.data.params["width"] == "64" and run.data.params["weight_decay"] in ("0.0", "0.0005")
        assert {"sweep", "cell", "seed", "trial_id", "git_commit", "package_version"} <= set(run.data.tags)
        assert "local_energy_5pct" in run.data.metrics and "config/width" not in run.data.metrics
    assert_complete_histories(client, children)
    assert set(final_rows(tmp_path, "smoke").values()) == {1}
    again = minima("run", SMOKE, *places(tmp_path), cwd=tmp_path)  # the same name twice is refused
    assert again.returncode == 2 and "minima resume smoke" in again.stderr


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="needs a machine without CUDA to make trials raise")
def test_raising_and_diverging_trials_do_not_stop_the_sweep(tmp_path):
    out = minima("run", SMOKE, *places(tmp_path), "--name", "faults", "--set", "axes.pretrain_epochs=[0]",
                 "--set", "axes.weight_decay=[0.0]", "--set", "axes.lr=[0.1, 1.0e6]",
                 "--set", "axes.device=[cpu, cuda]", "--set", "seeds=1", cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]  # some trials failed: say so, after finishing the rest
    assert "1 ok" in out.stdout and "1 diverged" in out.stdout and "2 error" in out.stdout
    client, parents, children = mlflow_runs(tmp_path, "faults")
    by_status = Counter((r.info.status, r.data.tags.get("status")) for r in children)
    assert by_status == {("FINISHED", "ok"): 1, ("FINISHED", "diverged"): 1, ("FAILED", "error"): 2}
    failed = [r for r in children if r.data.tags.get("status") == "error"]
    assert all("cuda" in r.data.tags["error"] for r in failed)


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_driver_resumes_with_one_run_per_trial(tmp_path):
    args = [sys.executable, "-m", "sweeps.cli", "run", SMOKE, *places(tmp_path), "--name", "killed",
            "--set", "base.epochs=40", "--set", "base.stop_at_train_acc=null", "--set", "checkpoint_every=2"]
    driver = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_for(lambda: sum(final_rows(tmp_path, "killed").values()) >= 2, 240, "two finished trials")
        time.sleep(2)  # let running trials get partway and checkpoint
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    finished_before = sum(final_rows(tmp_path, "killed").values())
    assert finished_before < 8, "the sweep finished before it could be killed; lengthen the trials"

    out = minima("resume", "killed", "--storage", str(tmp_path / "results"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "8 ok" in out.stdout
    assert sorted(final_rows(tmp_path, "killed").values()) == [1] * 8  # every trial completed exactly once
    client, parents, children = mlflow_runs(tmp_path, "killed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 8 and len({r.data.tags["trial_key"] for r in children}) == 8
    assert all(r.info.status == "FINISHED" for r in children)
    assert_complete_histories(client, children)
