import pytest
from pydantic import ValidationError

from trainables.config import ConfigError, TrialConfig, make_config


def test_defaults_resolve_per_model():
    assert (make_config().width, make_config().depth) == (256, 2)
    resnet = make_config({"model": "resnet18", "dataset": "cifar10"})
    assert (resnet.width, resnet.depth) == (64, 18)
    assert make_config({"model": "vgg16", "dataset": "cifar10", "width": 16}).width == 16


def test_config_is_frozen_and_primitive():
    cfg = make_config({"weight_decay": 5e-4})
    with pytest.raises(ValidationError, match="frozen"):
        cfg.weight_decay = 0.1  # type: ignore[misc]
    assert all(isinstance(v, (int, float, str, bool, type(None))) for v in cfg.to_dict().values())


@pytest.mark.parametrize(
    "values, field, hint",
    [
        ({"widht": 3}, "widht", "did you mean 'width'"),
        ({"width": "wide"}, "width", "valid integer"),
        ({"width": 2.5}, "width", "valid integer"),
        ({"label_noise": 1.5}, "label_noise", "less than or equal to 1"),
        ({"weight_decay": -1e-4}, "weight_decay", "greater than or equal to 0"),
        ({"clip_norm": 0}, "clip_norm", "greater than 0"),
        ({"model": "transformer"}, "model", "'mlp'"),
        ({"augmentation": "flip_crop"}, "augmentation", "allowed for it: none, shift"),
        ({"dataset": "cifar10", "augmentation": "shift"}, "augmentation", "flip_crop"),
        ({"model": "resnet18", "dataset": "cifar10", "depth": 3}, "depth", "fixed depth of 18"),
        ({"lr": "0.1"}, "lr", "valid number"),
    ],
)
def test_bad_values_name_the_field(values, field, hint):
    with pytest.raises(ConfigError) as err:
        make_config(values)
    message = str(err.value)
    assert f"{field}:" in message and hint in message, message


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        make_config({"width": "x", "lr": -1, "foo": 1})
    assert all(f"{k}:" in str(err.value) for k in ("width", "lr", "foo"))


def test_clip_norm_null_means_no_clipping():
    assert make_config({"clip_norm": None}).clip_norm is None
    assert TrialConfig.model_fields["clip_norm"].default is None
