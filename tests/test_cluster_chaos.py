"""Reliability with real processes on 127.0.0.1: a multi-node Ray cluster losing a node, an
MLflow server going down and coming back (or never), a driver killed mid-sweep."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.chaos import MlflowServer, chaos_run, free_port  # noqa: E402

pytestmark = pytest.mark.slow
SMOKE = str(REPO / "sweeps" / "smoke.yaml")


def test_node_loss_server_outage_and_driver_kill_lose_nothing(tmp_path):
    result = chaos_run(tmp_path)
    happened = [what for _, what in result["timeline"]]
    assert any("worker node SIGKILLed" in w for w in happened) and any("mlflow server back" in w for w in happened)
    assert any(w.startswith("driver SIGKILLed") for w in happened), happened  # the driver died mid-sweep
    assert any(w == "resume exited 0" for w in happened), (tmp_path / "driver.log").read_text()[-3000:]
    assert result["trials"] == 8 and result["export_rows"] == 8 and result["mlflow_runs"] == 8
    assert (result["lost"], result["duplicated"], result["mis_resumed"], result["running_runs"]) == (0, 0, 0, 0), result
    assert result["checkpoints_beyond_kept"] == 0, result  # deletions a killed driver deferred were done
    # trials of the killed node and driver resumed from checkpoints (one that had none yet
    # may legitimately start over)
    assert result["ray_trial_restarts"] - result["restarts_from_scratch"] >= 1, result


def test_a_tracking_server_that_never_returns_loses_nothing_and_says_how_to_replay(tmp_path):
    import pandas as pd

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here, for the whole sweep
    storage = tmp_path / "results"
    out = subprocess.run([sys.executable, "-m", "minima.cli", "run", SMOKE, "--set", f"storage={storage}",
                          "--set", f"tracking_uri={dead}", "--set", "base.epochs=3"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "8 trials: 8 ok" in out.stdout  # training never waited for the tracking server
    assert "MLflow: 8 of 8 finished trials are not fully logged" in out.stderr
    assert f"minima sync-mlflow smoke --storage {storage} --tracking-uri {dead}" in out.stderr
    export = subprocess.run([sys.executable, "-m", "minima.cli", "export", "smoke", "--storage", str(storage),
                             "--out", str(tmp_path / "export")], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "export" / "trials.parquet")
    assert len(trials) == 8 and set(trials["status"]) == {"ok"}  # the export reads storage, not MLflow

    server = MlflowServer(tmp_path)  # a server comes up at last: the replay fills it
    server.start()
    try:
        sync = subprocess.run([sys.executable, "-m", "minima.cli", "sync-mlflow", "smoke", "--storage", str(storage),
                               "--tracking-uri", server.uri], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env={**os.environ, **server.client_env})
        assert sync.returncode == 0 and "8 finished" in sync.stdout, sync.stderr[-3000:]
        from sweeps.tracking.mlflow_audit import audit_mlflow

        with server.credentials():
            audit = audit_mlflow(str(storage / "smoke"), server.uri, "smoke")
        assert audit.complete and audit.trials == 8
    finally:
        server.stop()
