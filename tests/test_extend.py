"""Extending a stored sweep on real local Ray and real MLflow (SQLite in a temp dir): only the
trials a file adds run, the sweep stays one (one MLflow parent, one export), a file that would
change stored trials is refused before Ray starts, and a killed extension resumes."""

import json
import os
import signal
import subprocess
import sys
from collections import Counter

import pytest

from test_sweep_e2e import SMOKE, assert_complete_histories, exported, minima, mlflow_runs, places, wait_for

pytestmark = pytest.mark.slow


def new_members(tmp_path, name, part):
    """(trial folder, member) of the trials a part of the sweep ran, from Ray's results there."""
    from sweeps.storage.results import stored_trials

    return [(t["trial_dir"], t["member"]) for t in stored_trials(str(tmp_path / "results" / name / part))]


def finals_per_key(tmp_path, name):
    """trial key -> number of final reports stored for it, over the whole sweep's folder."""
    from sweeps.design.keys import keys_of
    from sweeps.storage.results import final_rows, list_trial_dirs, read_result_rows, read_trial_params
    from trainables.reports import member_values

    out: Counter = Counter()
    for trial_dir in list_trial_dirs(str(tmp_path / "results" / name)):
        params = read_trial_params(trial_dir)
        if params is None:  # a trial Ray has only just made a folder for
            continue
        members = member_values(params)
        out.update(keys_of(members[m]).trial for m in final_rows(read_result_rows(trial_dir)))
    return out


def test_extending_a_sweep_runs_only_the_new_trials_and_keeps_the_rest(tmp_path):
    first = minima("run", SMOKE, *places(tmp_path), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before_trials, before_curves = exported(tmp_path, "smoke")

    wider = ["--set", "seeds=3", "--set", "axes.pretrain_epochs=[0, 5, 8]"]
    out = minima("run", SMOKE, *places(tmp_path), *wider, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "8 trials kept, 10 new" in out.stderr and "18 trials: 18 ok" in out.stdout
    assert out.stderr.index("8 trials kept") < out.stderr.index("Ray")  # said before Ray started
    assert len(new_members(tmp_path, "smoke", "part-001")) == 10  # Ray ran the 10 new trials, no more
    assert sorted(finals_per_key(tmp_path, "smoke").values()) == [1] * 18

    client, parents, children = mlflow_runs(tmp_path, "smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 18 and len({r.data.tags["trial_key"] for r in children}) == 18
    assert {r.info.status for r in children} == {"FINISHED"}
    assert_complete_histories(client, children)
    # the sweep's own trials, read back once, and the new part: neither changes again, so neither is read back again
    confirmed = json.loads((tmp_path / "results" / "smoke" / "minima_mlflow.json").read_text())["confirmed"]
    assert confirmed == {".": 8, "part-001": 10}

    trials, curves = exported(tmp_path, "smoke")
    assert len(trials) == 18 and trials.index.is_unique
    kept = before_trials.index
    columns = [c for c in before_trials.columns if c not in ("trial_id",)]
    import pandas as pd

    pd.testing.assert_frame_equal(trials.loc[kept, columns], before_trials[columns], check_dtype=False)
    pd.testing.assert_frame_equal(curves.loc[kept, before_curves.columns].drop(columns="trial_id"),
                                  before_curves.drop(columns="trial_id"), check_dtype=False)

    status = minima("status", "smoke", "--storage", str(tmp_path / "results"), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr[-3000:]
    parts = {p["part"]: p for p in json.loads(status.stdout)["parts"]}
    assert parts["."]["extension"] == 0 and parts["."]["counts"] == {"ok": 8}
    assert parts["part-001"]["extension"] == 1 and parts["part-001"]["counts"] == {"ok": 10}

    again = minima("run", SMOKE, *places(tmp_path), *wider, cwd=tmp_path)  # adds nothing: refused as before
    assert again.returncode == 2 and "already has results" in again.stderr

    changed = minima("run", SMOKE, *places(tmp_path), *wider, "--set", "base.lr=0.2", cwd=tmp_path)
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "base.lr 0.1 -> 0.2" in changed.stderr and "--name NEW_NAME" in changed.stderr
    assert "Traceback" not in changed.stderr and "Ray" not in changed.stderr
    dropped = minima("run", SMOKE, *places(tmp_path), "--set", "seeds=3", "--set", "axes.pretrain_epochs=[0, 8]",
                     cwd=tmp_path)
    assert dropped.returncode == 2 and "axes.pretrain_epochs loses [5]" in dropped.stderr, dropped.stderr[-3000:]
    assert not (tmp_path / "results" / "smoke" / "part-002").exists()


def test_a_killed_extension_resumes_with_every_trial_once(tmp_path):
    # members that stop at 10 or 150 epochs, so the extension is killed partway
    slow = ["--name", "grow", "--set", "axes.weight_decay=[0.0]", "--set", "axes.epochs=[10, 150]",
            "--set", "base.stop_at_train_acc=null", "--set", "checkpoint_every=2"]
    first = minima("run", SMOKE, *places(tmp_path), *slow, "--set", "seeds=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sum(finals_per_key(tmp_path, "grow").values()) == 4

    args = [sys.executable, "-m", "minima.cli", "run", SMOKE, *places(tmp_path), *slow, "--set", "seeds=3"]
    driver = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_for(lambda: sum(finals_per_key(tmp_path, "grow").values()) >= 6, 300, "two new trials finished")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    assert sum(finals_per_key(tmp_path, "grow").values()) < 12, "the extension ended before it could be killed"

    out = minima("resume", "grow", "--storage", str(tmp_path / "results"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "12 trials: 12 ok" in out.stdout
    assert sorted(finals_per_key(tmp_path, "grow").values()) == [1] * 12
    client, parents, children = mlflow_runs(tmp_path, "grow")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 12 and len({r.data.tags["trial_key"] for r in children}) == 12
    assert {r.info.status for r in children} == {"FINISHED"}
    assert_complete_histories(client, children)


DEMO = SMOKE.replace("smoke.yaml", "demo.yaml")


def test_a_boundary_search_refines_a_finished_grid_without_running_its_trials_again(tmp_path):
    """Two commands: a coarse grid, then a boundary search over the same sweep whose first round
    is the grid's trials (its first fit counts them) and whose new trials are all new cells."""
    one_slice = ["--name", "refine", "--set", "axes.weight_decay=[0.0]", "--set", "axes.augmentation=[none]",
                 "--set", "seeds=2", "--set", "base.flatness_samples=1"]
    grid = minima("run", DEMO, *places(tmp_path), *one_slice, "--set", "axes.pretrain_epochs=[0, 40]", cwd=tmp_path)
    assert grid.returncode == 0, grid.stderr[-3000:]
    grid_keys = set(finals_per_key(tmp_path, "refine"))
    assert len(grid_keys) == 4

    out = minima("run", DEMO, *places(tmp_path), *one_slice, "--set", "axes.pretrain_epochs={low: 0, high: 40, count: 2}",
                 "--set", "search={kind: boundary, max_trials: 4}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 of its 4 trials are the boundary search's first round" in out.stderr
    assert "boundary search round 1: 4 trials done" in out.stderr  # the first fit is the grid's trials
    history = json.loads((tmp_path / "results" / "refine" / "part-001" / "boundary_search.json").read_text())
    assert history["rounds"][0]["stored"] == 4 and history["rounds"][0]["queued"] == 0
    finals = finals_per_key(tmp_path, "refine")
    ran = sum(r["queued"] for r in history["rounds"])
    assert ran > 0 and set(finals.values()) == {1} and len(finals) == 4 + ran  # every trial once, the grid's kept
    assert len(new_members(tmp_path, "refine", "part-001")) == ran
    assert f"{4 + ran} trials: {4 + ran} ok" in out.stdout
    _, parents, children = mlflow_runs(tmp_path, "refine")
    assert len(parents) == 1 and len(children) == 4 + ran and {r.info.status for r in children} == {"FINISHED"}
    trials, _ = exported(tmp_path, "refine")
    assert len(trials) == 4 + ran and set(grid_keys) <= set(trials.index)
