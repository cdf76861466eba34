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

from sweeps.run.tuner import CHECKPOINTS_TO_KEEP

SMOKE = str(Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml")
pytestmark = pytest.mark.slow


def minima(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "minima.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def places(tmp_path):
    return ["--set", f"storage={tmp_path / 'results'}", "--set", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]


def mlflow_runs(tmp_path, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=10_000)
    parents = [r for r in runs if r.data.tags.get("minima.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("minima.role") != "parent"]
    return client, parents, children


def final_rows(tmp_path, name):
    """(trial folder, pack member) -> number of final reports in Ray's result.json (each trial
    must have one)."""
    out: Counter = Counter()
    for result in (tmp_path / "results" / name).glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        rows = [row for r in rows for row in (r.get("records") or [r])]  # packs batch rows per report
        out.update((result.parent.name, r.get("member")) for r in rows if r.get("final"))
    return dict(out)


def assert_complete_histories(client, children):
    for run in children:
        if run.data.tags.get("status") == "error":
            continue
        history = client.get_metric_history(run.info.run_id, "test_acc")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, len(steps) + 1)), f"gaps or duplicates in {run.info.run_name}: {steps}"
        expected = int(run.data.metrics["train_epochs"]) + int(run.data.params["pretrain_epochs"])
        assert len(steps) == expected


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke sweep, run once for the tests that read its results."""
    tmp_path = tmp_path_factory.mktemp("smoke")
    out = minima("run", SMOKE, *places(tmp_path), cwd=tmp_path)
    return tmp_path, out


def test_smoke_sweep_logs_one_child_run_per_trial(smoke_run):
    tmp_path, out = smoke_run
    assert out.returncode == 0, out.stderr[-3000:]
    assert "8 ok" in out.stdout and "[minima] 8/8 done" in out.stderr
    assert "shared    2 pretraining runs (up to 5 epochs) serve 4 trials" in out.stderr  # one per seed
    assert "packed    2 Ray trials of up to 4 trials each" in out.stderr  # auto on 2 CPUs
    assert len(list((tmp_path / "results" / "smoke").glob("trial_*"))) == 2  # auto: 2 packs of 4 on 2 CPUs
    assert "invalid value" not in out.stderr  # Ray's TensorBoard logger would print each pack's records
    assert not list((tmp_path / "results" / "smoke").glob("trial_*/progress.csv"))  # result.json only
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


def test_smoke_sweep_exports_to_parquet_and_fits_phases(smoke_run):
    import pandas as pd

    tmp_path, out = smoke_run
    assert out.returncode == 0, out.stderr[-3000:]
    export = minima("export", "smoke", "--out", str(tmp_path / "export"), "--storage", str(tmp_path / "results"),
                    cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "export" / "trials.parquet")
    curves = pd.read_parquet(tmp_path / "export" / "curves.parquet")
    assert len(trials) == 8 and trials["trial_id"].is_unique and set(trials["status"]) == {"ok"}
    assert trials["mlflow_run_id"].notna().all() and trials["mlflow_run_id"].is_unique
    assert str(trials["width"].dtype) == "int64" and str(trials["weight_decay"].dtype) == "float64"
    assert trials["clip_norm"].isna().all() and trials["reached_global_min"].dtype == bool
    assert trials["model"].eq("mlp").all() and trials["git_commit"].notna().all()
    expected_rows = int((trials["pretrain_epochs"] + trials["train_epochs"]).sum())
    assert len(curves) == expected_rows  # one row per trial, stage and epoch
    packs = trials.groupby("ray_trial_id")  # 2 packs of 4 on 1 CPU each: the members' shares add up to the pack
    assert packs.size().tolist() == [4, 4] and (packs["cost_share"].sum().round(9) == 1).all()
    assert (packs["cpu_s"].sum() - packs["ray_trial_time_s"].first()).abs().max() < 1e-9
    assert (trials["gpu_s"] == 0).all() and trials["accelerator_type"].isna().all()  # CPU only
    epochs = trials["pretrain_epochs"] + trials["train_epochs"]
    assert (trials["cost_share"] - epochs / trials["ray_trial_id"].map(epochs.groupby(trials["ray_trial_id"]).sum())
            ).abs().max() < 1e-12
    assert set(curves["stage"]) == {"pretrain", "train"} and curves.groupby("trial_id")["step"].is_monotonic_increasing.all()
    phase = minima("phase", str(tmp_path / "export" / "trials.parquet"), "--y", "weight_decay",
                   "--out", str(tmp_path / "phase"), cwd=tmp_path)
    assert phase.returncode == 0, phase.stderr[-3000:]
    result = json.loads((tmp_path / "phase" / "phase.json").read_text())
    assert result["n_trials"] == 8 and len(result["boundary"]) == 2
    assert all(b["x_critical"] is None and b["reason"] for b in result["boundary"])  # 15 epochs fit nothing
    assert (tmp_path / "phase" / "phase.png").exists() and (tmp_path / "phase" / "curves.png").exists()
    client, parents, _ = mlflow_runs(tmp_path, "smoke")
    attached = {Path(a.path).name for a in client.list_artifacts(parents[0].info.run_id, "phase")}
    assert {"phase.json", "phase.png", "phase.svg", "curves.png"} <= attached
    report = minima("report", "smoke", "--out", str(tmp_path / "report"), "--storage", str(tmp_path / "results"),
                    cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Phase diagram" in page and "data:image/png;base64," in page and "(n=" in page
    assert "mu_Y(F; L)" in page and 'alt="measures"' in page  # mu and flatness by phase
    cpu_hours = trials["cpu_s"].sum() / 3600
    assert f"This diagram cost 0 GPU-hours ({cpu_hours:.3g} CPU-hours)" in page
    curves = pd.read_parquet(tmp_path / "export" / "curves.parquet")
    assert curves["l1_path_norm"].notna().all() and curves.loc[curves["stage"] == "train", "mu_linear"].notna().any()


def test_status_of_the_finished_smoke_sweep(smoke_run):
    tmp_path, out = smoke_run
    assert out.returncode == 0, out.stderr[-3000:]
    storage = str(tmp_path / "results")
    status = minima("status", "smoke", "--storage", storage, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr[-3000:]
    s = json.loads(status.stdout)
    assert s["counts"] == {"ok": 8, "diverged": 0, "error": 0, "running": 0, "pending": 0}
    assert (s["trials"], s["ray_trials"], s["not_started"], s["eta_s"], s["failed"]) == (8, 2, 0, None, [])
    assert s["mlflow"]["state"] == "complete", s["mlflow"]  # as the sweep's own end-of-run check found it
    assert s["started"] <= s["last_result"] and 0 < s["trial_hours"] == s["cost"]["cpu_hours"]
    assert s["cost"]["gpu_hours"] == 0 and s["cost"]["cells"] == 4
    assert [t["members"] for t in s["slowest"]] == [4, 4] and s["parts"] == []

    listed = minima("status", "--storage", storage, cwd=tmp_path)
    rows = [line.split() for line in listed.stdout.splitlines()[2:]]
    assert listed.returncode == 0 and ["smoke", "8", "8", "0", "0", "0", "0"] in [r[:7] for r in rows]
    assert any(r[0] == "smoke" and r[-1] == "complete" for r in rows)
    missing = minima("status", "nope", "--storage", storage, cwd=tmp_path)
    assert missing.returncode == 2 and "no sweep named 'nope'" in missing.stderr and "Traceback" not in missing.stderr


def test_shared_and_packed_sweep_equals_the_trial_by_trial_sweep(smoke_run):
    """Every trial's metrics, final and per epoch, match exactly with sharing and packing off."""
    tmp_path, out = smoke_run
    assert out.returncode == 0, out.stderr[-3000:]
    plain = minima("run", SMOKE, *places(tmp_path), "--name", "plain", "--set", "pack=1",
                   "--set", "share_pretraining=false", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "shared    " not in plain.stderr and "packed    " not in plain.stderr
    assert len(list((tmp_path / "results" / "plain").glob("trial_*"))) == 8
    (packed, packed_curves), (alone, alone_curves) = exported(tmp_path, "smoke"), exported(tmp_path, "plain")
    assert set(packed["pack_size"]) == {4} and set(alone["pack_size"]) == {1}
    assert_same_trials((packed, packed_curves), (alone, alone_curves))


def test_auto_packs_each_architecture_by_itself(tmp_path):
    """On CPU auto packs the 64-wide MLPs and runs the 1024-wide ones alone (plain trials in
    Tune's grid of member lists); every trial's metrics equal the trial-by-trial sweep's."""
    small = ["--set", "axes.width=[64, 1024]", "--set", "axes.pretrain_epochs=[0, 2]", "--set", "base.epochs=4",
             "--set", "share_pretraining=false", "--set", "seeds=1"]
    mixed = minima("run", SMOKE, *places(tmp_path), "--name", "mixed", *small, cwd=tmp_path)
    assert mixed.returncode == 0, mixed.stderr[-3000:]
    assert "packed    6 Ray trials of up to 2 trials each" in mixed.stderr  # 64 wide: 2 packs, for 2 slots
    assert "alone     dataset=mnist1d model=mlp width=1024" in mixed.stderr
    plain = minima("run", SMOKE, *places(tmp_path), "--name", "plain", *small, "--set", "pack=1", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    packed, alone = exported(tmp_path, "mixed"), exported(tmp_path, "plain")
    assert packed[0].groupby("width")["pack_size"].unique().map(list).to_dict() == {64: [2], 1024: [1]}
    assert_same_trials(packed, alone)
    _, _, children = mlflow_runs(tmp_path, "mixed")
    assert len(children) == 8 and {r.info.status for r in children} == {"FINISHED"}


def exported(tmp_path, name):
    """A sweep's trials and curves from its Parquet export, keyed by trial key (and step)."""
    import pandas as pd

    export = minima("export", name, "--out", str(tmp_path / f"eq_{name}"), "--storage", str(tmp_path / "results"),
                    cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / f"eq_{name}" / "trials.parquet").set_index("trial_key").sort_index()
    curves = pd.read_parquet(tmp_path / f"eq_{name}" / "curves.parquet").merge(
        trials.reset_index()[["trial_id", "trial_key"]], on="trial_id")
    return trials, curves.set_index(["trial_key", "step"]).sort_index()


def assert_same_trials(one, other):
    """Every trial's final metrics and per-epoch curve, exactly equal."""
    import pandas as pd

    metrics = ["status", "test_acc", "train_acc", "test_loss", "train_epochs", "local_energy_1pct", "local_energy_10pct"]
    pd.testing.assert_frame_equal(one[0][metrics], other[0][metrics])
    per_epoch = ["stage", "epoch", "test_acc", "train_loss", "step_loss", "grad_norm", "weight_norm", "dist_from_init"]
    pd.testing.assert_frame_equal(one[1][per_epoch], other[1][per_epoch])


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
    status = minima("status", "faults", "--storage", str(tmp_path / "results"), "--json", cwd=tmp_path)
    s = json.loads(status.stdout)
    assert s["counts"] == {"ok": 1, "diverged": 1, "error": 2, "running": 0, "pending": 0}
    assert sum(t["members"] for t in s["failed"]) == 2 and all("cuda" in t["error"] for t in s["failed"])


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_driver_resumes_with_one_run_per_trial(tmp_path):
    # packs of 4 whose members stop at 10 or 150 epochs: killed after some members finished
    args = [sys.executable, "-m", "minima.cli", "run", SMOKE, *places(tmp_path), "--name", "killed",
            "--set", "axes.weight_decay=[0.0]", "--set", "axes.epochs=[10, 150]",
            "--set", "base.stop_at_train_acc=null", "--set", "checkpoint_every=2"]
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
    status = minima("status", "killed", "--storage", str(tmp_path / "results"), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr[-3000:]
    counts = json.loads(status.stdout)["counts"]  # the packs Tune last stored as running, members that finished
    assert counts["ok"] == finished_before
    assert counts["running"] + counts["pending"] + counts.get("unfinished", 0) == 8 - finished_before

    out = minima("resume", "killed", "--storage", str(tmp_path / "results"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "8 ok" in out.stdout
    assert sorted(final_rows(tmp_path, "killed").values()) == [1] * 8  # every trial completed exactly once
    client, parents, children = mlflow_runs(tmp_path, "killed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 8 and len({r.data.tags["trial_key"] for r in children}) == 8
    assert all(r.info.status == "FINISHED" for r in children)
    assert_complete_histories(client, children)
    # checkpoints the killed driver had still to delete are gone; Ray's last ones stay
    trials = list((tmp_path / "results" / "killed").glob("trial_*"))
    assert trials and all(1 <= len(list(t.glob("checkpoint_*"))) <= CHECKPOINTS_TO_KEEP for t in trials)
    assert not list((tmp_path / "results" / "killed").rglob(".*.tmp-*"))


def test_random_and_optuna_searches_run_every_seed(tmp_path):
    space = ["--set", "axes.weight_decay={low: 1e-5, high: 1e-2, scale: log}", "--set", "axes.pretrain_epochs=[0, 2]",
             "--set", "base.epochs=2"]
    out = minima("run", SMOKE, *places(tmp_path), "--name", "rnd", *space,
                 "--set", "search={kind: random, num_samples: 3, seed: 7}", "--set", "seeds=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    out = minima("run", SMOKE, *places(tmp_path), "--name", "opt", *space,
                 "--set", "search={kind: optuna, num_samples: 2, metric: test_acc, mode: max}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    _, _, random_runs = mlflow_runs(tmp_path, "rnd")
    drawn = {float(r.data.params["weight_decay"]) for r in random_runs}
    assert len(random_runs) == 3 and len(drawn) >= 2 and all(1e-5 <= w <= 1e-2 for w in drawn)
    _, _, optuna_runs = mlflow_runs(tmp_path, "opt")
    configs = Counter(r.data.params["weight_decay"] for r in optuna_runs)
    assert len(optuna_runs) == 4 and set(configs.values()) == {2}  # each proposal runs both seeds
    assert {r.data.params["seed"] for r in optuna_runs} == {"0", "1"}


def test_sync_mlflow_replays_a_sweep_idempotently(smoke_run):
    """`minima sync-mlflow` re-logs from the sweep's storage: for a tracking server that was down."""
    tmp_path, out = smoke_run
    assert out.returncode == 0, out.stderr[-3000:]
    other = tmp_path / "replay.db"
    for _ in range(2):  # the second pass must change nothing
        sync = minima("sync-mlflow", "smoke", "--storage", str(tmp_path / "results"),
                      "--tracking-uri", f"sqlite:///{other}", cwd=tmp_path)
        assert sync.returncode == 0, sync.stderr[-3000:]
        assert "8 trials synced" in sync.stdout and "8 finished" in sync.stdout
    from mlflow.tracking import MlflowClient

    live_client, _, live = mlflow_runs(tmp_path, "smoke")
    client = MlflowClient(f"sqlite:///{other}")
    replayed = client.search_runs([client.get_experiment_by_name("smoke").experiment_id], max_results=100)
    children = [r for r in replayed if r.data.tags.get("minima.role") != "parent"]
    assert len(children) == 8 and all(r.info.status == "FINISHED" for r in replayed)
    assert_complete_histories(client, children)
    by_key = {r.data.tags["trial_key"]: r for r in live}
    for run in children:
        original = by_key[run.data.tags["trial_key"]]
        assert run.data.params == original.data.params
        assert run.data.metrics == original.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "local_energy_5pct")) == 1


def test_boundary_search_runs_real_trials_in_rounds_and_exports_them(tmp_path):
    """Wiring on real Ray, MLflow and trials: the coarse grid, a refit round, one MLflow run and
    one export row per trial, the rounds saved with the experiment, the declared x scale used."""
    import pandas as pd

    out = minima("run", SMOKE, *places(tmp_path), "--name", "edge", "--set", "base.epochs=4",
                 "--set", "axes.pretrain_epochs={low: 0, high: 6, count: 2}",
                 "--set", "search={kind: boundary, max_trials: 12}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "boundary search round 1: 6 trials done" in out.stdout + out.stderr
    assert "done (budget 12)" in out.stderr and "ETA --" in out.stderr  # a budget, not a count owed
    history = json.loads((tmp_path / "results" / "edge" / "boundary_search.json").read_text())
    # the coarse grid: 2 baseline cells x 2 seeds, 2 cells at x = 6 x 1 seed
    assert history["x"] == "pretrain_epochs" and history["rounds"][0]["queued"] == 6
    assert len(history["rounds"][1]["fits"]) == 2  # one per weight decay
    ran = sum(r["queued"] for r in history["rounds"])
    _, parents, children = mlflow_runs(tmp_path, "edge")
    assert len(parents) == 1 and len(children) == ran and all(r.info.status == "FINISHED" for r in children)
    export = minima("export", "edge", "--out", str(tmp_path / "export"), "--storage", str(tmp_path / "results"),
                    cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "export" / "trials.parquet")
    assert len(trials) == ran and trials["trial_id"].is_unique and trials["pretrain_epochs"].between(0, 6).all()
    import pyarrow.parquet as pq

    assert json.loads(pq.read_schema(tmp_path / "export" / "trials.parquet").metadata[b"minima.axis_scales"]) == {
        "pretrain_epochs": "linear"}
    report = minima("report", "edge", "--out", str(tmp_path / "report"), "--storage", str(tmp_path / "results"),
                    "--y", "weight_decay", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "boundary search over 0..6 (linear); ran: 0, " in (tmp_path / "report" / "report.html").read_text()


def test_sweep_over_lr_and_clip_norm_runs_exports_fits_and_reports(tmp_path):
    """lr is also a per-epoch curve column and clip_norm holds a null: both as axes, from --set values
    typed by their fields, through run, export, phase and report."""
    import pandas as pd

    sweep = tmp_path / "axes.yaml"
    sweep.write_text("name: axes\nbase: {width: 32, depth: 2, epochs: 3, flatness_samples: 0}\n"
                     "axes: {pretrain_epochs: [0, 2]}\nseeds: 2\nresources: {cpu: 1, gpu: 0}\n")
    run = minima("run", str(sweep), "--set", "axes.lr=[0.05, 0.1]", "--set", "axes.clip_norm=[none, 1.0]",
                 "--set", "base.augmentation=none", *places(tmp_path), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sweep axes: 16 trials: 16 ok" in run.stdout

    export = minima("export", "axes", "--out", str(tmp_path / "export"), "--storage", str(tmp_path / "results"),
                    cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "export" / "trials.parquet")
    curves = pd.read_parquet(tmp_path / "export" / "curves.parquet")
    assert len(trials) == 16 and set(trials["status"]) == {"ok"} and set(trials["augmentation"]) == {"none"}
    assert sorted(trials["lr"].unique()) == [0.05, 0.1] and trials["clip_norm"].isna().sum() == 8
    assert set(trials["clip_norm"].dropna()) == {1.0}
    assert len(curves) == int((trials["pretrain_epochs"] + trials["train_epochs"]).sum()) and curves["lr"].notna().all()

    trials_path = str(tmp_path / "export" / "trials.parquet")
    for args, header in ((["--y", "clip_norm", "--by", "lr"], "critical pretrain_epochs per clip_norm"),
                         (["--x", "lr", "--y", "clip_norm"], "critical lr per clip_norm")):
        out_dir = tmp_path / f"phase-{args[1]}"
        phase = minima("phase", trials_path, *args, "--out", str(out_dir), "--no-mlflow", cwd=tmp_path)
        assert phase.returncode == 0, phase.stderr[-3000:]
        lines = phase.stdout.splitlines()
        assert lines[0].startswith(header) and sum(line.startswith("  clip_norm=") for line in lines) in (2, 4)
        saved = json.loads((out_dir / "phase.json").read_text())
        assert saved["n_trials"] == 16 and {b["y"] for b in saved["boundary"]} == {None, 1.0}
        assert all((out_dir / name).stat().st_size > 0 for name in ("phase.png", "curves.png", "measures.png"))
    refused = minima("phase", trials_path, "--x", "clip_norm", "--y", "lr", "--out", str(tmp_path / "p"), cwd=tmp_path)
    assert refused.returncode == 2 and "--x clip_norm: the fit needs two values other than none" in refused.stderr
    assert "Traceback" not in refused.stderr

    report = minima("report", "axes", "--out", str(tmp_path / "report"), "--storage", str(tmp_path / "results"),
                    cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert report.stdout.startswith("critical pretrain_epochs per lr")  # y: the first other axis, by: the rest
    assert sum(line.startswith("  lr=") and "clip_norm=" in line for line in report.stdout.splitlines()) == 4
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<h1>Sweep <code>axes</code></h1>" in page and "16 trials (16 ok)" in page
    # phase diagram, dose-response, measures, learning curves (and the shift figures when a boundary is found)
    assert page.count("data:image/png;base64,") >= 4 and 'alt="dose_response"' in page
    assert "<h2>What moves the boundary</h2>" in page
    assert ("No effects: " in page) == (not json.loads((tmp_path / "report" / "phase.json").read_text())["effects"])
    client, parents, _ = mlflow_runs(tmp_path, "axes")
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "phase")}
    assert {"phase/phase.json", "phase/curves.png", "phase/phase.png"} <= artifacts
