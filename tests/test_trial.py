import math

import pytest
import torch

from trainables.config import make_config
from trainables.checkpoint import CheckpointError, load_state, save_state
from trainables.data import DatasetUnavailable, load_dataset
from trainables.trial import run_trial


def without_timing(history):
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in history]


def test_same_config_gives_the_same_metrics(tiny):
    a, b = run_trial(tiny), run_trial(tiny)
    assert without_timing(a.history) == without_timing(b.history)
    assert a.summary["test_acc"] == b.summary["test_acc"]
    other_seed = run_trial({**tiny, "seed": 1})
    assert other_seed.history[-1]["train_loss"] != a.history[-1]["train_loss"]


def test_history_covers_both_stages_with_all_measures(tiny):
    result = run_trial({**tiny, "clip_norm": 1e-3})
    stages = [(r["stage"], r["epoch"]) for r in result.history]
    assert stages == [("pretrain", 1), ("pretrain", 2), ("train", 1), ("train", 2), ("train", 3)]
    pre, train = result.history[0], result.history[-1]
    assert pre["pretrain_acc"] is not None and train["pretrain_acc"] is None
    assert train["clipped_frac"] == 1.0 and pre["clipped_frac"] == 0.0  # clipping is a clean-phase setting
    assert train["dist_from_init"] > 0 and train["weight_norm"] > 0 and train["grad_norm"] > 0
    assert result.summary["status"] == "ok" and result.summary["train_epochs"] == 3


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_after", [1, 2, 4])  # mid-pretrain, at the stage boundary, mid-train
def test_resume_from_checkpoint_equals_uninterrupted_run(tiny, tmp_path, kill_after):
    config = {**tiny, "augmentation": "shift", "aug_noise": 0.05, "momentum": 0.9, "flatness_samples": 2}
    full = run_trial(config)
    seen = []

    def die(record, state):
        seen.append(record)
        save_state(state(), tmp_path)
        if len(seen) == kill_after:
            raise Killed

    with pytest.raises(Killed):
        run_trial(config, on_epoch=die)
    state = load_state(tmp_path, make_config(config).to_dict())
    resumed = run_trial(config, resume=state)
    assert without_timing(resumed.history) == without_timing(full.history)
    for key in ("test_acc", "train_loss", "local_energy_5pct", "epochs_to_fit"):
        assert resumed.summary[key] == full.summary[key]


def test_stop_at_train_accuracy_ends_clean_training():
    result = run_trial({"width": 64, "epochs": 200, "lr": 0.2, "stop_at_train_acc": 0.6, "flatness_samples": 0})
    assert result.history[-1]["train_acc"] >= 0.6
    assert all(r["train_acc"] < 0.6 for r in result.history[:-1])
    assert result.summary["reached_global_min"] is False and result.summary["epochs_to_fit"] is None


def test_diverging_run_is_recorded_not_raised(tiny):
    result = run_trial({**tiny, "pretrain_epochs": 0, "lr": 1e6, "epochs": 20})
    assert result.summary["status"] == "diverged"
    assert result.summary["train_epochs"] < 20
    assert result.history[-1]["diverged"] and not math.isfinite(result.history[-1]["train_loss"])
    assert result.summary["reached_global_min"] is False


def test_tampered_checkpoint_is_refused(tiny, tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"format": 1, "config": {}, "payload": Payload()}, tmp_path / "trial_state.pt")
    with pytest.raises(CheckpointError, match="refusing checkpoint"):
        load_state(tmp_path, {})


def test_checkpoint_of_another_config_is_refused(tiny, tmp_path):
    save_state({"config": {"seed": 1}}, tmp_path)
    with pytest.raises(CheckpointError, match="different trial config"):
        load_state(tmp_path, {"seed": 2})


def test_missing_dataset_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MINIMA_NO_DOWNLOAD", "1")
    with pytest.raises(DatasetUnavailable, match=r"'cifar10' is not in .*MINIMA_DATA_DIR"):
        load_dataset("cifar10")


def test_mnist1d_is_generated_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMA_DATA_DIR", str(tmp_path))
    data = load_dataset("mnist1d", "cpu:0")  # a device key of its own, so nothing is reused
    assert (tmp_path / "mnist1d" / "mnist1d_default.npz").exists()
    assert data.x_train.shape == (4000, 1, 40) and data.x_test.shape == (1000, 1, 40)
    assert data.y_train.dtype == torch.int64 and set(data.y_train.tolist()) == set(range(10))
