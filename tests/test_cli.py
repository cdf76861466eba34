import json
import subprocess
import sys


def minima(*args):
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True, timeout=300)


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
