"""Sweeps stored by an earlier version of the tool still resume and export to the same tables.

`fixtures/stored_sweeps.tar.gz` holds two sweeps interrupted by killing their driver (kill -9 on
its process group) and the exports of their resumed runs, as that version made them: `fx_grid`
(a grid with shared pretraining and packed trials, 2 of 2 Ray trials checkpointed, none
finished) and `fx_search` (a boundary search, 14 of 16 issued trials finished, its searcher's
state pickled by Tune). Their sweep files are in the archive. A resumed trial continues from its
checkpoint bit for bit, so every metric must come out equal; wall times and versions may not.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "stored_sweeps.tar.gz"


def minima(*args, cwd):
    return subprocess.run([sys.executable, "-m", "minima", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fx_grid", "fx_search"])
def test_a_stored_sweep_resumes_and_exports_as_before(tmp_path, name):
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path / "fixture", filter="data")
    store = tmp_path / "moved"  # not where it was made: its spec says storage "store", relative
    store.mkdir()
    (tmp_path / "fixture" / name).rename(store / name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    resumed = minima("resume", name, "--storage", str(store), cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    exported = minima("export", name, "--storage", str(store), "--out", str(tmp_path / "out"), "--no-mlflow",
                      cwd=elsewhere)
    assert exported.returncode == 0, exported.stderr[-3000:]

    # the columns that version exported, less the volatile ones (wall time, versions, run ids)
    expected_trials = pd.read_parquet(tmp_path / "fixture" / f"{name}.expected_trials.parquet")
    trials = (pd.read_parquet(tmp_path / "out" / "trials.parquet")[list(expected_trials.columns)]
              .sort_values("trial_key").reset_index(drop=True))
    curves = (pd.read_parquet(tmp_path / "out" / "curves.parquet").drop(columns=["epoch_time_s"])
              .sort_values(["trial_id", "stage", "epoch"]).reset_index(drop=True))
    expected_curves = pd.read_parquet(tmp_path / "fixture" / f"{name}.expected_curves.parquet")
    assert (trials["status"] == "ok").all() and len(trials) == len(expected_trials)
    pd.testing.assert_frame_equal(trials, expected_trials, check_exact=True)
    pd.testing.assert_frame_equal(curves, expected_curves, check_exact=True)


class Planted:
    """What someone who can write a sweep's folder could put there: unpickling it runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_sweep_folder_others_could_write_is_not_resumed(tmp_path, monkeypatch):
    """Tune unpickles a sweep's stored state on resume: a planted tuner.pkl must never load."""
    import os
    import pickle

    from minima.cli import main

    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path / "fixture", filter="data")
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "fixture" / "fx_grid").rename(store / "fx_grid")
    marker = tmp_path / "code-ran"
    (store / "fx_grid" / "tuner.pkl").write_bytes(pickle.dumps(Planted(marker)))
    monkeypatch.chdir(tmp_path)
    trial = next((store / "fx_grid").glob("trial_*"))
    trial.chmod(trial.stat().st_mode | 0o020)  # group-writable: a lab's shared group may plant files
    assert main(["resume", "fx_grid", "--storage", "store"]) == 2 and not marker.exists()
    trial.chmod(trial.stat().st_mode & ~0o020)
    monkeypatch.setattr(os, "getuid", lambda: 4242)  # every file now belongs to someone else
    assert main(["resume", "fx_grid", "--storage", "store"]) == 2 and not marker.exists()
