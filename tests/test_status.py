"""`minima status` on sweeps stored by real interrupted runs (tests/fixtures/stored_sweeps.tar.gz:
Tune's own experiment states, with trials still RUNNING and PENDING), its bad input, and the
cost columns of the export, which status and the report add up. The finished smoke sweep, a
real failed trial and a sweep in parts killed mid-way are in test_sweep_e2e.py and
test_sweep_parts.py."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from minima.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "stored_sweeps.tar.gz"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """The two stored sweeps, under ./store (their specs name a relative storage)."""
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path / "fixture", filter="data")
    (tmp_path / "store").mkdir()
    for name in ("fx_grid", "fx_search"):
        (tmp_path / "fixture" / name).rename(tmp_path / "store" / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "store"


def status(capsys, *args) -> tuple[int, str, str]:
    code = main(["status", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_sweep_whose_state_lists_running_and_pending_trials(store, capsys):
    # the boundary search was killed with 14 trials finished, one running and one Tune had queued
    code, out, _ = status(capsys, "fx_search", "--storage", "store", "--json")
    s = json.loads(out)
    assert code == 0
    assert s["counts"] == {"ok": 14, "diverged": 0, "error": 0, "running": 1, "pending": 1}
    assert s["trials"] == 16 and s["budget"] == 28 and s["eta_s"] is None  # a budget is no count owed: no ETA
    assert s["ray_trials"] == 15 and s["failed"] == [] and s["parts"] == []
    assert s["mlflow"]["state"] == "off"  # run with --no-mlflow
    slowest = [t["hours"] for t in s["slowest"]]
    assert len(slowest) == 5 and slowest == sorted(slowest, reverse=True)
    assert s["trial_hours"] == pytest.approx(s["cost"]["cpu_hours"])  # 1 CPU per Ray trial, no GPU
    assert s["cost"]["gpu_hours"] == 0 and s["cost"]["gpu_hours_by_accelerator"] == {}

    # the packed grid was killed with both packs of 4 running, one member finished
    code, out, _ = status(capsys, "fx_grid", "--storage", "store", "--json")
    s = json.loads(out)
    assert s["counts"] == {"ok": 1, "diverged": 0, "error": 0, "running": 7, "pending": 0}
    assert s["trials"] == 8 and s["ray_trials"] == 2 and s["cost"]["cells"] == 4
    assert sorted(t["outcomes"].get("running", 0) for t in s["slowest"]) == [3, 4]

    code, out, _ = status(capsys, "fx_grid", "--storage", "store")
    assert code == 0 and "trials    8: 1 ok, 0 diverged, 0 error, 7 running, 0 pending" in out
    assert "CPU-hours" in out and "per cell (4 cells)" in out


def test_every_sweep_of_a_storage_in_one_table(store, capsys):
    code, out, _ = status(capsys, "--storage", "store")
    lines = out.splitlines()
    assert code == 0 and lines[0] == f"storage {store}"
    assert lines[1].split()[:7] == ["sweep", "trials", "ok", "diverged", "error", "running", "pending"]
    assert [line.split()[:7] for line in lines[2:]] == [["fx_grid", "8", "1", "0", "0", "7", "0"],
                                                        ["fx_search", "16", "14", "0", "0", "1", "1"]]
    code, out, _ = status(capsys, "--storage", "store", "--json")
    listed = json.loads(out)
    assert [s["name"] for s in listed["sweeps"]] == ["fx_grid", "fx_search"]
    assert all("slowest" not in s and "counts" in s and "mlflow" in s for s in listed["sweeps"])
    (store.parent / "empty").mkdir()
    assert status(capsys, "--storage", "empty")[:2] == (0, f"no sweeps under {store.parent / 'empty'}\n")


def test_a_trial_tune_marked_errored_is_listed_with_the_end_of_its_error(store, capsys):
    state_file = next((store / "fx_search").glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    for pair in state["trial_data"]:
        trial = json.loads(pair[0])
        if trial["status"] == "RUNNING":
            trial["status"] = "ERROR"  # as Tune stores a trial that raised with no retries left
            pair[0] = json.dumps(trial)
            errored = trial["trial_id"]
    state_file.write_text(json.dumps(state))
    (store / "fx_search" / f"trial_{errored}" / "error.txt").write_text(
        "Traceback (most recent call last):\n" + "".join(f'  File "x.py", line {i}\n' for i in range(20))
        + "RuntimeError: CUDA out of memory\n")
    code, out, _ = status(capsys, "fx_search", "--storage", "store", "--json")
    s = json.loads(out)
    assert s["counts"]["error"] == 1 and s["counts"]["running"] == 0
    [failed] = s["failed"]
    assert failed["trial"] == f"trial_{errored}" and failed["members"] == 1
    assert failed["error"].endswith("RuntimeError: CUDA out of memory") and len(failed["error"].splitlines()) == 5
    code, out, _ = status(capsys, "fx_search", "--storage", "store")
    assert f"failed    trial_{errored} (1 trial: 1 error):" in out and "CUDA out of memory" in out


def test_a_name_or_storage_that_is_not_there_exits_2_with_one_line(store, capsys):
    code, out, err = status(capsys, "nope", "--storage", "store")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no sweep named 'nope'" in err and "--storage" in err
    code, out, err = status(capsys, "--storage", "elsewhere")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "does not exist" in err and "--storage" in err
    code, out, err = status(capsys, "fx_grid", "--storage", "elsewhere")
    assert code == 2 and "no sweep named 'fx_grid'" in err


def test_a_packs_cost_is_split_over_its_members_by_epochs_and_adds_up(store, capsys):
    from analysis.export import export_sweep
    from sweeps.storage.costs import HeldResources
    from sweeps.storage.trial_end import read_trial_end

    held = HeldResources((2.0, 0.5))
    result = export_sweep(str(store / "fx_grid"), store.parent / "out", "fx_grid", held=held)
    trials = pd.read_parquet(result.trials_path)
    epoch_rows = pd.read_parquet(result.curves_path).groupby("trial_id").size()  # each member's, finished or not
    assert {"ray_trial_time_s", "cost_share", "cpu_s", "gpu_s", "accelerator_type"} <= set(trials)
    assert trials["accelerator_type"].isna().all()  # no GPU held (and the fixture predates the field)
    for ray_trial, pack in trials.groupby("ray_trial_id"):
        end = read_trial_end(str(store / "fx_grid" / f"trial_{ray_trial}"))
        seconds = end.time_total_s
        assert len(pack) == 4 and (pack["ray_trial_time_s"] == seconds).all()
        assert pack["cost_share"].sum() == pytest.approx(1.0)
        assert pack["cpu_s"].sum() == pytest.approx(2 * seconds) and pack["gpu_s"].sum() == pytest.approx(0.5 * seconds)
        epochs = pack["trial_id"].map(epoch_rows)
        assert list(pack["cost_share"]) == pytest.approx(list(epochs / epochs.sum()))
    assert trials["cost_share"].nunique() > 1  # a member that stopped earlier ran fewer epochs: a smaller share

    # status adds up the same costs (the stored spec asked 1 CPU per Ray trial)
    code, out, _ = status(capsys, "fx_grid", "--storage", "store", "--json")
    cost = json.loads(out)["cost"]
    assert cost["cpu_hours"] * 3600 == pytest.approx(trials["cpu_s"].sum() / 2)
    assert cost["cell_cpu_hours_mean"] * cost["cells"] == pytest.approx(cost["cpu_hours"])


def test_the_eta_goes_by_the_latest_finishes_and_stops_when_they_stop():
    from sweeps.run.status import eta_s

    ends = list(range(1000, 1200, 2))  # a trial finished every 2 s
    assert eta_s(ends, 50, now=1200) == pytest.approx(100.0)
    assert eta_s([0, 0, 0] + ends, 50, now=1200) == pytest.approx(100.0)  # only the latest 100 set the rate
    assert eta_s(ends, 0, now=1200) is None and eta_s(ends[:1], 50, now=1200) is None
    assert eta_s(ends, 50, now=1198 + 299) is not None  # 5 minutes without a finish: still a rate
    assert eta_s(ends, 50, now=1198 + 301) is None  # past that (and 20 intervals): a stopped driver, no ETA
