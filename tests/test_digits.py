"""dataset: digits, scikit-learn's 8x8 handwritten digits on a fixed split; trials of the MLP
and the small CNN on it, end to end, and the augmentations it refuses."""

import hashlib

import numpy as np
import pytest
import torch

from trainables.config import ConfigError, make_config
from trainables.data import digits_split, load_dataset
from trainables.packed import run_pack
from trainables.trial import run_trial

# sha1 of the 360 test row indices as little-endian int64: the split must never change
TEST_ROWS_SHA1 = "ce5d2a24e70272927e91a8b3ebdc1a38be7d2ea8"
SHORT = {"dataset": "digits", "epochs": 3, "pretrain_epochs": 2, "flatness_samples": 1, "device": "cpu",
         "torch_threads": 1}


def test_shapes_types_and_labels():
    data = load_dataset("digits")
    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == data.y_test.dtype == torch.int64
    for y in (data.y_train, data.y_test):
        assert sorted(y.unique().tolist()) == list(range(10))
    assert torch.bincount(data.y_test).tolist() == [36] * 10  # stratified: 36 test images per class
    # normalised with the train set's statistics
    assert abs(data.x_train.mean().item()) < 1e-5 and abs(data.x_train.std().item() - 1) < 1e-3


def test_the_split_is_fixed():
    train, test = digits_split()
    assert (len(train), len(test)) == (1437, 360)
    assert not set(train) & set(test) and sorted([*train, *test]) == list(range(1797))
    assert hashlib.sha1(test.astype("<i8").tobytes()).hexdigest() == TEST_ROWS_SHA1
    again_train, again_test = digits_split()
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)


@pytest.mark.parametrize("model, width", [("mlp", 64), ("cnn", 8)])
def test_a_trial_runs_end_to_end(model, width):
    summary = run_trial({**SHORT, "model": model, "width": width}).summary
    assert summary["status"] == "ok" and summary["train_epochs"] == 3
    assert summary["test_acc"] > 0.5  # 3 epochs learn most of it
    assert 0 < summary["pretrain_final_acc"] < 1 and summary["local_energy_5pct"] is not None


def test_a_pack_of_digits_mlps_equals_its_members_alone():
    configs = [{**SHORT, "model": "mlp", "width": 32, "seed": seed, "weight_decay": wd}
               for seed, wd in [(0, 0.0), (1, 1e-3)]]
    for config, packed in zip(configs, run_pack(configs)):
        alone = run_trial(config).summary
        assert packed.summary["test_acc"] == alone["test_acc"]
        assert packed.summary["train_loss"] == alone["train_loss"]


@pytest.mark.parametrize("augmentation", ["flip_crop", "flip_crop_cutout", "shift"])
def test_augmentations_that_do_not_fit_digits_are_refused(augmentation):
    with pytest.raises(ConfigError) as err:
        make_config({"dataset": "digits", "augmentation": augmentation})
    message = str(err.value)
    assert f"augmentation: {augmentation!r} does not apply to digits" in message
    assert message.endswith("allowed for it: none")
    if augmentation.startswith("flip"):
        assert "a mirrored digit is another symbol" in message


def test_digits_takes_input_noise_and_no_augmentation():
    assert make_config({"dataset": "digits", "augmentation": "none", "aug_noise": 0.1}).aug_noise == 0.1
