import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.design.assignments import parse_assignments
from sweeps.design.spec import load_sweep, sweep_value_type, trial_value_type
from trainables.config import ConfigError


def minima(*args):
    return subprocess.run([sys.executable, "-m", "minima.cli", *args], capture_output=True, text=True, timeout=300)


def test_trial_prints_final_metrics_as_json():
    out = minima("trial", "--set", "width=32", "--set", "epochs=2", "--set", "pretrain_epochs=1", "--json", "--history")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "ok" and result["config"]["width"] == 32
    assert [r["stage"] for r in result["history"]] == ["pretrain", "train", "train"]
    assert 0.0 <= result["test_acc"] <= 1.0 and "local_energy_10pct" in result


def test_bad_config_exits_2_with_a_message_and_no_traceback():
    out = minima("trial", "--set", "weight_decay=-1", "--set", "widht=3")
    assert out.returncode == 2
    assert "weight_decay:" in out.stderr and "did you mean 'width'" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_diverged_trial_prints_valid_json():
    out = minima("trial", "--set", "width=32", "--set", "lr=1e6", "--set", "epochs=5", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "diverged" and result["train_loss"] is None


SMOKE = str(Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml")


def test_set_reads_each_value_as_its_field_declares_it():
    values = parse_assignments(["augmentation=none", "clip_norm=none", "stop_at_train_acc=null", "width=none",
                                "lr=1e-3", "momentum=0", "compile=true", "widht=none"], trial_value_type)
    assert values == {"augmentation": "none", "clip_norm": None, "stop_at_train_acc": None, "width": None,
                      "lr": 0.001, "momentum": 0, "compile": True, "widht": None}  # an unknown key: as YAML reads it
    sweep = parse_assignments(["base.augmentation=none", "base.clip_norm=none", "axes.clip_norm=[none, 1.0]",
                               "axes.augmentation=[none, shift]", "axes.lr={low: 1e-3, high: 1, scale: log}",
                               "storage=none", "name=123", "max_concurrent=none", "pack=auto", "pack=2",
                               "seeds=[0, 1]", "search=random", "resources.gpu=0.25"], sweep_value_type)
    assert sweep == {"base.augmentation": "none", "base.clip_norm": None, "axes.clip_norm": [None, 1.0],
                     "axes.augmentation": ["none", "shift"], "axes.lr": {"low": 0.001, "high": 1, "scale": "log"},
                     "storage": "none", "name": "123", "max_concurrent": None, "pack": 2, "seeds": [0, 1],
                     "search": "random", "resources.gpu": 0.25}


def test_set_axes_by_field_type_reaches_the_sweep():
    overrides = parse_assignments(["axes.augmentation=[none, shift]", "axes.clip_norm=[none, 1.0]",
                                   "base.stop_at_train_acc=none"], sweep_value_type)
    spec = load_sweep(SMOKE, overrides)
    assert spec.axis_values("augmentation") == ["none", "shift"] and spec.axis_values("clip_norm") == [None, 1.0]
    assert {(v["augmentation"], v["clip_norm"], v["stop_at_train_acc"]) for v in spec.trial_values()} == {
        ("none", None, None), ("none", 1.0, None), ("shift", None, None), ("shift", 1.0, None)}


@pytest.mark.parametrize("pair, message", [
    ("lr=abc", "--set lr=abc: lr takes a number (got 'abc')"),
    ("augmentation=null", "augmentation takes one of none, shift, flip_crop, flip_crop_cutout (got 'null')"),
    ("clip_norm=big", "clip_norm takes a number or none (got 'big')"),
    ("epochs=1.5", "epochs takes a whole number (got '1.5')"),
    ("compile=1", "compile takes true or false (got '1')"),
])
def test_a_trial_value_that_does_not_fit_names_the_field(pair, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_assignments([pair], trial_value_type)


@pytest.mark.parametrize("pair, message", [
    ("axes.augmentation=[none, nonsense]", "augmentation takes one of none, shift, flip_crop, flip_crop_cutout "
                                           "(got 'nonsense')"),
    ("axes.clip_norm=[none, big]", "--set axes.clip_norm=[none, big]: clip_norm takes a number or none (got 'big')"),
    ("axes.lr={low: a, high: 1}", "low takes a number (got 'a')"),
    ("axes.lr=[0.1, 0.2", "--set axes.lr=[0.1, 0.2: not a YAML list or mapping"),
    ("base.lr=x", "--set base.lr=x: lr takes a number (got 'x')"),
    ("resources.gpu=lots", "gpu takes a number (got 'lots')"),
])
def test_a_sweep_value_that_does_not_fit_names_the_field(pair, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_assignments([pair], sweep_value_type)


def test_trial_accepts_augmentation_none_and_clip_norm_none():
    out = minima("trial", "--set", "augmentation=none", "--set", "clip_norm=none", "--set", "width=16",
                 "--set", "epochs=1", "--set", "flatness_samples=0", "--json")
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)["config"]
    assert config["augmentation"] == "none" and config["clip_norm"] is None


def test_set_values_that_do_not_fit_exit_2_without_a_traceback(tmp_path):
    out = minima("trial", "--set", "augmentation=null")
    assert out.returncode == 2 and out.stdout == ""
    assert "minima trial: --set augmentation=null: augmentation takes one of none, shift" in out.stderr
    for pair, message in (("axes.clip_norm=[none, big]", "clip_norm takes a number or none (got 'big')"),
                          ("axes.lr=[0.1", "not a YAML list or mapping")):
        out = minima("validate", SMOKE, "--set", pair, "--set", f"storage={tmp_path / 'results'}")
        assert out.returncode == 2 and f"minima validate: --set {pair}: {message}" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    out = minima("validate", SMOKE, "--set", "axes.augmentation=[none, shift]", "--set", "axes.clip_norm=[none, 1.0]",
                 "--set", f"storage={tmp_path / 'results'}")
    assert out.returncode == 0, out.stderr
    assert "axis      augmentation: ['none', 'shift']" in out.stdout and "axis      clip_norm: [None, 1.0]" in out.stdout


def test_python_dash_m_minima_exits_with_the_commands_status(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minima", "validate", str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no such sweep file" in out.stderr
