import pytest
import torch

from trainables.models import build_model


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18", "vgg11", "vgg16"])
@pytest.mark.parametrize("shape", [(1, 40), (3, 32, 32), (1, 28, 28)])
def test_every_model_takes_1d_and_image_inputs(name, shape):
    model = build_model(name, shape, 10, width=8, depth=2)
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 10)


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_width_scales_every_conv_layer():
    small = build_model("resnet18", (3, 32, 32), 10, width=16, depth=18)
    standard = build_model("resnet18", (3, 32, 32), 10, width=64, depth=18)
    assert 11_000_000 < count(standard) < 11_300_000  # the CIFAR ResNet-18's 11.2M parameters
    assert count(standard) / count(small) > 14  # conv weights scale with width squared


def test_mlp_depth_and_width():
    model = build_model("mlp", (1, 40), 10, width=256, depth=2)
    assert count(model) == 40 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
