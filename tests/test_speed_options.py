"""The speed options (precision, channels_last, compile): what they change and what they must not."""

from __future__ import annotations

import pytest
import torch

from sweeps.design.keys import trial_key
from sweeps.design.plan import sweep_plan
from sweeps.design.spec import SweepError, parse_sweep
from trainables import data as data_module
from trainables.config import ConfigError, make_config
from trainables.data import TensorData
from trainables.packed import run_pack
from trainables.pretraining import pretrain_key
from trainables.stages import resolve_device
from trainables.trial import run_trial

IMAGES = dict(dataset="cifar10", model="cnn", width=8, depth=2, epochs=3, flatness_samples=0, stop_at_train_acc=None,
              batch_size=32)


@pytest.fixture
def tiny_cifar(monkeypatch):
    """A 16x16 stand-in for CIFAR-10 (it cannot be downloaded here), loaded as the real one is."""
    g = torch.Generator().manual_seed(0)
    y_train, y_test = torch.randint(0, 10, (256,), generator=g), torch.randint(0, 10, (128,), generator=g)
    x_train = torch.randn(256, 3, 16, 16, generator=g) + y_train[:, None, None, None] / 5  # learnable
    x_test = torch.randn(128, 3, 16, 16, generator=g) + y_test[:, None, None, None] / 5
    device = resolve_device("auto")  # where the trials will look for it
    monkeypatch.setitem(data_module._LOADED, ("cifar10", str(device)),
                        TensorData(*(t.to(device) for t in (x_train, y_train, x_test, y_test)), num_classes=10))


def test_configs_and_keys_made_before_the_options_existed_are_unchanged():
    # pinned keys: a config at the speed options' defaults keeps its key, so stored sweeps keep their runs,
    # checkpoints and snapshots
    assert trial_key({}) == "36515e8e2e9d"
    assert trial_key({"model": "cnn", "dataset": "cifar10", "seed": 3}) == "4a95a55930f6"
    # a snapshot key leaves the device out (pretraining.FORMAT 2: the snapshot records it)
    assert pretrain_key(make_config({"pretrain_epochs": 5})) == "53e5964c30946d38"
    bf16 = make_config({"precision": "bf16", "pretrain_epochs": 5})
    assert trial_key({"precision": "bf16"}) != trial_key({}) and pretrain_key(bf16) != "53e5964c30946d38"


def test_channels_last_is_for_conv_nets_on_images():
    with pytest.raises(ConfigError, match="channels_last: applies to conv nets .* not mlp on mnist1d"):
        make_config({"channels_last": True})
    with pytest.raises(ConfigError, match="not cnn on mnist1d"):
        make_config({"channels_last": True, "model": "cnn"})


def test_channels_last_trains_the_same_network(tiny_cifar):
    plain, nhwc = run_trial(IMAGES), run_trial(dict(IMAGES, channels_last=True))
    for a, b in zip(plain.history, nhwc.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)  # NHWC kernels sum in another order
        assert b["test_acc"] == pytest.approx(a["test_acc"], abs=1 / 128)


def test_bf16_trains_under_autocast_and_measures_in_fp32(tiny_cifar):
    fp32, bf16 = run_trial(IMAGES), run_trial(dict(IMAGES, precision="bf16"))
    assert bf16.history[0]["step_loss"] != fp32.history[0]["step_loss"]  # the step really ran in bf16
    assert bf16.history[0]["step_loss"] == pytest.approx(fp32.history[0]["step_loss"], rel=0.05)
    assert bf16.history[-1]["train_acc"] == pytest.approx(fp32.history[-1]["train_acc"], abs=0.05)
    assert bf16.history[-1]["train_acc"] > 0.15 and bf16.summary["status"] == "ok"  # chance is 0.1


@pytest.mark.slow
def test_compiled_forward_trains_the_same_network_and_compiles_once_per_process():
    from torch._dynamo.utils import counters

    small = dict(width=32, epochs=2, flatness_samples=0, stop_at_train_acc=None)
    eager, compiled = run_trial(small), run_trial(dict(small, compile=True))
    for a, b in zip(eager.history, compiled.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)  # NHWC kernels sum in another order
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    run_trial(dict(small, compile=True, seed=1, weight_decay=1e-3))  # the next trial of a reused Ray actor
    assert counters["stats"]["unique_graphs"] == graphs  # it reused the compiled graphs


def test_packs_refuse_the_options_and_auto_does_not_pack_them():
    with pytest.raises(ValueError, match="packed trials train in fp32"):
        run_pack([dict(precision="bf16"), dict(precision="bf16", seed=1)])
    with pytest.raises(SweepError, match="base.precision: packed trials"):
        parse_sweep({"name": "s", "base": {"precision": "bf16"}, "pack": 4, "axes": {"weight_decay": [0.0, 1e-3]}})
    with pytest.raises(SweepError, match="axes.compile: packed trials"):
        parse_sweep({"name": "s", "pack": 4, "axes": {"compile": [False, True]}})
    spec = parse_sweep({"name": "s", "base": {"precision": "bf16"}, "axes": {"weight_decay": [0.0, 1e-3]}, "seeds": 8})
    assert sweep_plan(spec, slots=2).largest_pack == 1
