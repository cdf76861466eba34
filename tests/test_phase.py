"""Phase labelling and boundary fits on generated trials with a known boundary."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.export import CURVES_SCHEMA, TRIALS_SCHEMA
from analysis.phase import PhaseInputError, check_columns, sorted_values
from analysis.diagram import run_phase
from sweeps.fit.phase_fit import label_phases
from trainables.config import make_config

TRUE_CRITICAL = {0.0: 10.0, 1e-4: 25.0}  # weight decay -> critical pretraining epochs; 1e-3: never bad
X_VALUES = [0, 3, 6, 10, 16, 25, 40, 64, 100]
SEEDS = range(8)


def p_bad(x, critical):
    return 1 / (1 + np.exp(-3.0 * (np.log1p(x) - np.log1p(critical))))


def synthetic_trials(path, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    rows = []
    for wd in (0.0, 1e-4, 1e-3):
        for x in X_VALUES:
            for seed in SEEDS:
                config = make_config({"pretrain_epochs": x, "weight_decay": wd, "seed": seed}).to_dict()
                bad = wd in TRUE_CRITICAL and x > 0 and rng.random() < p_bad(x, TRUE_CRITICAL[wd])
                acc = 0.64 + rng.normal(0, 0.005) - (0.12 if bad else 0.0)
                rows.append({**config, "sweep": "synthetic", "trial_id": f"{wd}-{x}-{seed}", "trial_key": "k",
                             "status": "ok", "cell": "c", "test_acc": acc, "train_acc": 1.0,
                             "reached_global_min": True})
    rows.append({**rows[0], "trial_id": "div", "status": "diverged", "reached_global_min": False, "test_acc": 0.1})
    rows.append({**rows[1], "trial_id": "nofit", "reached_global_min": False, "train_acc": 0.9})
    pq.write_table(pa.Table.from_pylist(rows, schema=TRIALS_SCHEMA), path)
    return path


def test_boundary_is_recovered_within_its_interval(tmp_path):
    trials = synthetic_trials(tmp_path / "trials.parquet")
    result = run_phase(trials, "pretrain_epochs", "weight_decay", [], 0.05, tmp_path / "out", log_to_mlflow=False)
    by_wd = {b["y"]: b for b in result.phase["boundary"]}
    for wd, critical in TRUE_CRITICAL.items():
        b = by_wd[wd]
        assert b["ci_low"] <= critical <= b["ci_high"], b
        assert b["ci_low"] < b["x_critical"] < b["ci_high"] and b["n_seeds"] == 8
        assert abs(np.log(b["x_critical"] / critical)) < 0.5
    assert by_wd[1e-3]["x_critical"] is None and "all" in by_wd[1e-3]["reason"] and "good" in by_wd[1e-3]["reason"]
    assert by_wd[0.0]["x_critical"] < by_wd[1e-4]["x_critical"]  # weight decay moves the boundary out
    for name in ("phase.json", "phase.png", "phase.svg"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "out" / "phase.json").read_text())
    assert saved["x"] == "pretrain_epochs" and saved["delta"] == 0.05 and len(saved["boundary"]) == 3


def test_phases_are_labelled_against_the_baseline_of_their_slice(tmp_path):
    df = pd.read_parquet(synthetic_trials(tmp_path / "trials.parquet"))
    labelled = label_phases(df, 0.05)
    phase = dict(zip(labelled["trial_id"], labelled["phase"]))
    assert phase["div"] == "diverged" and phase["nofit"] == "not_fit"
    baseline = labelled[(labelled["pretrain_epochs"] == 0) & (labelled["weight_decay"] == 0.0)]
    assert set(baseline["phase"]) <= {"good", "diverged", "not_fit"}
    assert abs(baseline["baseline_acc"].iloc[0] - 0.64) < 0.01
    far = labelled[(labelled["pretrain_epochs"] == 100) & (labelled["weight_decay"] == 0.0)]
    assert (far["phase"] == "bad").mean() > 0.7
    assert (far["acc_drop"][far["phase"] == "bad"] > 0.1).all()


def test_each_cell_and_the_whole_diagram_say_what_their_trials_held(tmp_path):
    from analysis.phase import cell_table
    from analysis.report import cost_sentence

    labelled = label_phases(pd.read_parquet(synthetic_trials(tmp_path / "trials.parquet")), 0.05)
    assert cost_sentence(labelled).startswith("Its cost is not known")  # exported without resources: null costs
    labelled = labelled.assign(cpu_s=7200.0, gpu_s=1800.0, accelerator_type="H100")  # 2 CPU-h, 0.5 GPU-h a trial
    cells = cell_table(labelled, "pretrain_epochs", "weight_decay", [])
    assert (cells["cpu_hours"] == 2.0 * cells["n"]).all() and (cells["gpu_hours"] == 0.5 * cells["n"]).all()
    n = len(labelled)
    assert cost_sentence(labelled).startswith(f"This diagram cost {0.5 * n:.3g} GPU-hours ({2.0 * n:.3g} CPU-hours) "
                                              f"on H100:")


def minima(*args):
    return subprocess.run([sys.executable, "-m", "minima.cli", *args], capture_output=True, text=True, timeout=120)


def test_bad_inputs_name_the_column(tmp_path):
    trials = synthetic_trials(tmp_path / "trials.parquet")
    out = minima("phase", str(trials), "--y", "weight_dcay", "--out", str(tmp_path / "o"), "--no-mlflow")
    assert out.returncode == 2 and "column 'weight_dcay' is not in the trials file" in out.stderr
    assert "Traceback" not in out.stderr
    missing = pq.read_table(trials).drop(["reached_global_min"])
    pq.write_table(missing, tmp_path / "missing.parquet")
    out = minima("phase", str(tmp_path / "missing.parquet"), "--y", "weight_decay", "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "'reached_global_min'" in out.stderr
    pq.write_table(TRIALS_SCHEMA.empty_table(), tmp_path / "empty.parquet")
    out = minima("phase", str(tmp_path / "empty.parquet"), "--y", "weight_decay", "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "no rows" in out.stderr
    with pytest.raises(PhaseInputError, match="single value"):
        run_phase(trials, "pretrain_epochs", "lr", [], 0.05, tmp_path / "o", log_to_mlflow=False)


def test_perfect_separation_spreads_the_interval_over_the_grid_bracket():
    from sweeps.fit.boundary_model import fit_boundary
    from sweeps.fit.phase_fit import AxisScale

    rows = pd.DataFrame([{"pretrain_epochs": x, "seed": s, "phase": "bad" if x >= 30 else "good"}
                         for x in (0, 10, 30, 100) for s in range(3)])
    scale = AxisScale.of(rows["pretrain_epochs"])
    b = fit_boundary(rows, "pretrain_epochs", scale, 0.0, {})
    assert 10 < b.ci_low < b.x_critical < b.ci_high < 30, b
    bracket = scale.to_fit(30) - scale.to_fit(10)
    assert scale.to_fit(b.ci_high) - scale.to_fit(b.ci_low) > 0.6 * bracket  # not a point: the grid can't tell


LR_CRITICAL = {0.05: 25.0, 0.1: 10.0}  # lr -> critical pretraining epochs, whatever the clipping


def synthetic_axes(out, clip_norms=(None, 1.0), seeds=range(4), critical=lambda lr, clip: LR_CRITICAL[lr]):
    """trials.parquet and curves.parquet of a sweep over pretrain_epochs x lr x clip_norm (null = no
    clipping); the curves carry each epoch's `lr`, as real ones do."""
    rng = np.random.default_rng(0)
    trials, curves = [], []
    for lr, clip, x, seed in itertools.product(LR_CRITICAL, clip_norms, X_VALUES, seeds):
        config = make_config({"pretrain_epochs": x, "lr": lr, "clip_norm": clip, "seed": seed}).to_dict()
        bad = x > 0 and rng.random() < p_bad(x, critical(lr, clip))
        trial_id = f"{lr}-{clip}-{x}-{seed}"
        trials.append({**config, "sweep": "axes", "trial_id": trial_id, "trial_key": trial_id, "status": "ok",
                       "cell": "c", "test_acc": 0.64 + rng.normal(0, 0.005) - (0.12 if bad else 0.0),
                       "train_acc": 1.0, "reached_global_min": True, "local_energy_5pct": 0.1})
        curves += [{"sweep": "axes", "trial_id": trial_id, "stage": "train", "epoch": e, "step": e, "lr": lr * 0.9 ** e,
                    "test_acc": 0.2 * e, "mu_linear": 0.1 * e} for e in (1, 2, 3)]
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(trials, schema=TRIALS_SCHEMA), out / "trials.parquet")
    pq.write_table(pa.Table.from_pylist(curves, schema=CURVES_SCHEMA), out / "curves.parquet")
    return out / "trials.parquet"


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("x, y, by", [("pretrain_epochs", "clip_norm", ["lr"]), ("pretrain_epochs", "lr", ["clip_norm"]),
                                      ("pretrain_epochs", "lr", []), ("lr", "clip_norm", ["pretrain_epochs"])])
def test_any_config_field_works_as_x_y_or_by_beside_per_epoch_lr(tmp_path, x, y, by):
    trials = synthetic_axes(tmp_path / "export")
    result = run_phase(trials, x, y, by, 0.05, tmp_path / "out", log_to_mlflow=False)
    names = {p.name for p in result.files}
    assert {"phase.json", "phase.png", "phase.svg", "curves.png", "measures.png", "dose_response.png",
            "dose_response.svg", "boundary_shift.png", "boundary_pairs.png"} <= names, names
    saved = strict_json(tmp_path / "out" / "phase.json")  # a null axis value is null, not NaN
    slices = {(b["y"], *b["by"].values()) for b in saved["boundary"]}
    assert slices == set(itertools.product(*(sorted_values(result.labelled[c]) for c in (y, *by))))


def test_boundaries_per_lr_and_clip_norm_are_recovered(tmp_path):
    trials = synthetic_axes(tmp_path / "export", seeds=range(8))
    result = run_phase(trials, "pretrain_epochs", "clip_norm", ["lr"], 0.05, tmp_path / "out", log_to_mlflow=False)
    assert len(result.phase["boundary"]) == 4
    for b in result.phase["boundary"]:
        critical = LR_CRITICAL[b["by"]["lr"]]
        assert b["y"] in (None, 1.0) and b["ci_low"] - 1e-9 <= critical <= b["ci_high"] + 1e-9, b


def test_a_null_x_is_shown_but_left_out_of_the_fit(tmp_path):
    clips = (None, 0.5, 1.0, 2.0, 4.0)  # bad only where clipping is loose: a boundary between 1 and 2
    trials = synthetic_axes(tmp_path / "export", clip_norms=clips,
                            critical=lambda lr, clip: 1.0 if clip is None or clip >= 2 else 1e6)
    result = run_phase(trials, "clip_norm", "pretrain_epochs", ["lr"], 0.05, tmp_path / "out", log_to_mlflow=False)
    far = [b for b in result.phase["boundary"] if b["y"] == 100]
    assert len(far) == 2
    for b in far:
        assert 1.0 <= b["ci_low"] <= b["x_critical"] <= b["ci_high"] <= 2.0, b
        assert b["n_trials"] == 4 * 4  # four clip_norm values (not none) x four seeds
    assert (tmp_path / "out" / "phase.png").stat().st_size > 0


def test_phase_by_lr_on_the_command_line(tmp_path):
    trials = synthetic_axes(tmp_path / "export")
    out = minima("phase", str(trials), "--y", "clip_norm", "--by", "lr", "--out", str(tmp_path / "o"), "--no-mlflow")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("critical pretrain_epochs per clip_norm (P(bad) = 0.5, 90% posterior interval")
    assert sum(line.startswith("  clip_norm=") and ", lr=" in line for line in lines) == 4
    assert f"wrote {tmp_path / 'o' / 'curves.png'}" in lines


@pytest.mark.parametrize("args, message", [
    (["--x", "lr", "--y", "lr"], "lr: each axis takes one role of --x, --y and --by"),
    (["--y", "clip_norm", "--by", "clip_norm"], "clip_norm: each axis takes one role"),
    (["--x", "clip_norm", "--y", "lr"], "--x clip_norm: the fit needs two values other than none, and the sweep has "
                                        "none, 1; use it as --y or --by"),
    (["--y", "lr", "--by", "learning_rate"], "column 'learning_rate' is not in the trials file"),
])
def test_axes_that_cannot_take_a_role_exit_2(tmp_path, args, message):
    trials = synthetic_axes(tmp_path / "export", seeds=range(1))
    out = minima("phase", str(trials), *args, "--out", str(tmp_path / "o"), "--no-mlflow")
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_a_text_x_is_refused_with_the_fix(tmp_path):
    df = pd.read_parquet(synthetic_axes(tmp_path / "export", seeds=range(1)))
    df["augmentation"] = ["none", "shift"] * (len(df) // 2)
    with pytest.raises(PhaseInputError, match="--x augmentation: the boundary is fitted along a numeric axis, and "
                                              "augmentation takes none, shift; use it as --y or --by"):
        check_columns(df, "augmentation", "lr", [])
