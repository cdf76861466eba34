"""Phase labelling and boundary fits on generated trials with a known boundary."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.export import TRIALS_SCHEMA
from analysis.phase import PhaseInputError, label_phases
from analysis.diagram import run_phase
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


def minima(*args):
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True, timeout=120)


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


def test_perfect_separation_gives_the_grid_bracket_not_a_point():
    from analysis.phase import AxisScale, fit_boundary

    rows = pd.DataFrame([{"pretrain_epochs": x, "seed": s, "phase": "bad" if x >= 30 else "good"}
                         for x in (0, 10, 30, 100) for s in range(3)])
    b = fit_boundary(rows, "pretrain_epochs", AxisScale.of(rows["pretrain_epochs"]), 0.0, {}, np.random.default_rng(0))
    assert 10 < b.x_critical < 30 and (b.ci_low, b.ci_high) == pytest.approx((10, 30))
