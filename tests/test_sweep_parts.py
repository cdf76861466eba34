"""A large grid sweep runs as several Tune experiments ("parts") in sequence under one sweep:
the split (fast), and a real sweep in parts through the CLI (slow: local Ray, SQLite MLflow)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps.run.notices import plan_lines
from sweeps.run.parts import PART_ENV, PART_RAY_TRIALS, part_count, ray_trials_per_part, split_plan
from sweeps.design.plan import planned
from sweeps.storage.results import list_trial_dirs
from sweeps.design.spec import parse_sweep
from sweeps.storage.sweep_files import part_path, run_settings, write_spec

REPO = Path(__file__).resolve().parent.parent


def tiny_grid(root: Path, name: str = "parts", seeds: int = 3, pack=1, **extra) -> dict:
    """A grid of 4 cells x `seeds` tiny mnist1d trials (MLP 16x1, 2 epochs), half of them
    pretraining 1 epoch (shared)."""
    return {"name": name,
            "base": {"dataset": "mnist1d", "model": "mlp", "width": 16, "depth": 1, "epochs": 2,
                     "stop_at_train_acc": None, "flatness_samples": 0},
            "axes": {"pretrain_epochs": [0, 1], "weight_decay": [0.0, 1.0e-4]}, "seeds": seeds, "search": "grid",
            "resources": {"cpu": 1, "gpu": 0}, "pack": pack, "storage": str(root / "results"),
            "tracking_uri": f"sqlite:///{root / 'mlflow.db'}", **extra}


def test_a_grid_past_the_limit_is_cut_evenly_in_plan_order_and_stored(tmp_path, monkeypatch):
    spec, plan = planned(parse_sweep(tiny_grid(tmp_path)), 2)
    assert len(plan.ray_trials) == 12
    assert ray_trials_per_part(plan) is None  # the default limit: one experiment, as before parts
    monkeypatch.setenv(PART_ENV, "5")
    per_part = ray_trials_per_part(plan)
    assert per_part == 4 and part_count(plan, per_part) == 3  # 12 in 5s -> 3 x 4, not 5 + 5 + 2
    parts = split_plan(plan, per_part)
    assert [p.ray_trials for p in parts] == [plan.ray_trials[i:i + 4] for i in (0, 4, 8)]
    assert [n for p in parts for n in p.needs] == list(plan.needs)
    assert [p.num_trials for p in parts] == [4, 4, 4]
    for part in parts:  # each keeps the shared pretrainings its own trials need
        assert {j.key for j in part.jobs} == {key for need in part.needs for key, _ in need}
    assert any(line.startswith("parts     3 Tune experiments of up to 4 Ray trials") for line in plan_lines(plan))

    write_spec(spec, True, part_count(plan, per_part), per_part)
    settings = run_settings(spec)
    assert settings["parts"] == 3 and settings["ray_trials_per_part"] == 4
    monkeypatch.delenv(PART_ENV)  # a resume cuts as the run file says, whatever the limit now
    again = split_plan(planned(spec, 2)[1], settings["ray_trials_per_part"])
    assert [p.ray_trials for p in again] == [p.ray_trials for p in parts]
    assert part_path(spec, 2) == f"{tmp_path / 'results' / 'parts'}/part-002"


def test_packs_are_never_cut_and_other_searches_are_not_split(tmp_path, monkeypatch):
    monkeypatch.setenv(PART_ENV, "2")
    _, plan = planned(parse_sweep(tiny_grid(tmp_path, pack=3)), 2)
    assert len(plan.ray_trials) == 4 and ray_trials_per_part(plan) == 2
    assert [len(p.ray_trials) for p in split_plan(plan, 2)] == [2, 2]
    assert sum(p.num_trials for p in split_plan(plan, 2)) == 12
    random = tiny_grid(tmp_path, search={"kind": "random", "num_samples": 20, "seed": 0},
                       axes={"weight_decay": {"low": 1e-5, "high": 1e-2, "scale": "log"}})
    assert ray_trials_per_part(planned(parse_sweep(random), 2)[1]) is None
    monkeypatch.setenv(PART_ENV, "zero")
    with pytest.raises(Exception, match=PART_ENV):
        ray_trials_per_part(plan)
    assert PART_RAY_TRIALS >= 1000  # a sweep that size has always run as one experiment


def test_trial_folders_of_every_part_are_listed(tmp_path):
    for folder in ("trial_a", "part-000/trial_b", "part-001/trial_c", "pretrained/x", "part-001/other"):
        (tmp_path / folder).mkdir(parents=True)
    listed = [d.removeprefix(f"{tmp_path}/") for d in list_trial_dirs(str(tmp_path))]
    assert listed == ["part-000/trial_b", "part-001/trial_c", "trial_a"]


# --- a real sweep in parts --------------------------------------------------------------------

def minima(*args, cwd, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "minima.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def parts_env(limit: int) -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env[PART_ENV] = str(limit)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def write_yaml(tmp_path: Path, sweep: dict) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(sweep))  # JSON is YAML
    return str(path)


def final_counts(folder: Path) -> dict:
    """trial folder (part/trial) -> final reports in its result.json"""
    out = {}
    for result in folder.glob("part-*/trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        out[f"{result.parent.parent.name}/{result.parent.name}"] = sum(1 for r in rows if r.get("final"))
    return out


def mlflow_runs(tmp_path: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=10_000)
    parents = [r for r in runs if r.data.tags.get("minima.role") == "parent"]
    return parents, [r for r in runs if r.data.tags.get("minima.role") != "parent"]


@pytest.mark.slow
def test_a_sweep_in_parts_is_one_sweep_to_its_user(tmp_path):
    env = parts_env(5)
    sweep = write_yaml(tmp_path, tiny_grid(tmp_path))
    out = minima("run", sweep, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "parts     3 Tune experiments of up to 4 Ray trials" in out.stderr
    assert "12 ok" in out.stdout and "[minima] 12/12 done" in out.stderr, out.stdout + out.stderr[-3000:]
    assert "not fully logged" not in out.stdout + out.stderr  # one writer took every part's runs
    folder = tmp_path / "results" / "parts"
    assert sorted(p.name for p in folder.glob("part-*")) == ["part-000", "part-001", "part-002"]
    assert not list(folder.glob("trial_*")) and (folder / "minima_sweep.json").exists()
    assert sorted(final_counts(folder).values()) == [1] * 12
    assert all(len(list(p.glob("trial_*"))) == 4 for p in folder.glob("part-*"))
    assert json.loads((folder / "minima_run.json").read_text())["ray_trials_per_part"] == 4
    # every part done and its runs seen taken whole by the writer: the resume below reads none back
    confirmed = json.loads((folder / "minima_mlflow.json").read_text())["confirmed"]
    assert confirmed == {"part-000": 4, "part-001": 4, "part-002": 4}
    parents, children = mlflow_runs(tmp_path, "parts")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 12 and len({r.data.tags["trial_key"] for r in children}) == 12
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}

    exported = minima("export", "parts", "--storage", str(tmp_path / "results"), "--out", str(tmp_path / "export"),
                      cwd=tmp_path, env=env)
    assert exported.returncode == 0, exported.stderr[-3000:]
    import pyarrow.parquet as pq

    trials = pq.read_table(tmp_path / "export" / "trials.parquet")
    assert trials.num_rows == 12 and len(set(trials.column("trial_key").to_pylist())) == 12
    assert set(trials.column("status").to_pylist()) == {"ok"}

    again = minima("run", sweep, cwd=tmp_path, env=env)  # the same name twice is refused, as in one part
    assert again.returncode == 2 and "minima resume parts" in again.stderr, again.stderr[-3000:]
    resumed = minima("resume", "parts", "--storage", str(tmp_path / "results"), cwd=tmp_path, env=env)
    assert resumed.returncode == 0 and "12 ok" in resumed.stdout, resumed.stdout + resumed.stderr[-3000:]  # all skipped
    assert "not fully logged" not in resumed.stdout + resumed.stderr  # read back from the store
    assert sorted(final_counts(folder).values()) == [1] * 12


@pytest.mark.slow
def test_a_killed_sweep_in_parts_resumes_with_each_trial_once(tmp_path):
    env = parts_env(5)
    sweep = write_yaml(tmp_path, tiny_grid(tmp_path, name="killed", checkpoint_every=2,
                                           base={**tiny_grid(tmp_path)["base"], "epochs": 40}))
    log = tmp_path / "driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen([sys.executable, "-m", "minima.cli", "run", sweep], cwd=tmp_path, env=env,
                                  stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    folder = tmp_path / "results" / "killed"
    try:
        deadline = time.monotonic() + 300
        while sum(final_counts(folder).values()) < 5 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.5)  # killed in the second part, after the first has finished
        assert sum(final_counts(folder).values()) >= 5, f"no trial of the second part finished:\n{log.read_text()[-3000:]}"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    assert sum(final_counts(folder).values()) < 12, "the sweep finished before it could be killed"
    assert (folder / "part-000" / "minima_part_done.json").exists()  # skipped by the resume
    assert not (folder / "part-001" / "minima_part_done.json").exists()  # restored or started again

    # where the killed sweep stands, from its storage alone: the first part done, the rest as Tune left them
    status = minima("status", "killed", "--storage", str(tmp_path / "results"), "--json", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr[-3000:]
    s = json.loads(status.stdout)
    counts = s["counts"]
    assert s["trials"] == 12 and sum(counts.values()) == 12
    assert counts["ok"] == sum(1 for n in final_counts(folder).values() if n) and counts["error"] == 0
    assert counts["running"] + counts["pending"] + counts.get("unfinished", 0) == 12 - counts["ok"] > 0
    assert s["parts"][0]["part"] == "part-000" and s["parts"][0]["done"] and s["parts"][0]["counts"] == {"ok": 4}
    assert not s["parts"][1]["done"] and s["parts"][1]["state_saved"]
    assert s["not_started"] >= 4 * (3 - len(s["parts"]))  # a part not begun has no folder: its trials are pending
    assert s["mlflow"]["state"] == "unknown"  # the killed run never reached its end-of-sweep check

    out = minima("resume", "killed", "--storage", str(tmp_path / "results"), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "12 ok" in out.stdout and "not fully logged" not in out.stdout, out.stdout + out.stderr[-3000:]
    finals = final_counts(folder)
    # none lost; a trial whose final report landed in the seconds before the kill, after Tune's
    # last saved state, resumes from its last checkpoint and reports its final row again
    assert len(finals) == 12 and all(n >= 1 for n in finals.values()), finals
    exported = minima("export", "killed", "--storage", str(tmp_path / "results"), "--out", str(tmp_path / "export"),
                      cwd=tmp_path, env=env)
    assert exported.returncode == 0, exported.stderr[-3000:]
    import pyarrow.parquet as pq

    trials = pq.read_table(tmp_path / "export" / "trials.parquet")  # one row per trial, however often it reported
    assert trials.num_rows == 12 and len(set(trials.column("trial_key").to_pylist())) == 12
    assert set(trials.column("status").to_pylist()) == {"ok"}
    parents, children = mlflow_runs(tmp_path, "killed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 12 and all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["trial_key"] for r in children}) == 12
