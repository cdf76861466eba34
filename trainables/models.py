"""Width-scaled models for 1-D signals (N, C, L) and images (N, C, H, W).

`width` is the first layer's size: MLP hidden units, or the base channel count of a conv net,
where 64 gives the standard ResNet-18 / VGG and every later layer scales with it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_VGG_LAYOUT = {  # channels at width 64; "M" = 2x max-pool
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, width: int, depth: int) -> nn.Module:
    """The model named in the config, for inputs of `input_shape` (without the batch axis)."""
    if name == "mlp":
        return MLP(math.prod(input_shape), num_classes, width, depth)
    spatial_dims = len(input_shape) - 1
    channels = input_shape[0]
    if name == "cnn":
        return SmallCNN(spatial_dims, channels, num_classes, width, depth)
    if name == "resnet18":
        return ResNet18(spatial_dims, channels, num_classes, width)
    if name in _VGG_LAYOUT:
        return VGG(_VGG_LAYOUT[name], spatial_dims, channels, num_classes, width)
    raise ValueError(f"model: unknown model {name!r}")


def _conv(dims: int):
    return nn.Conv1d if dims == 1 else nn.Conv2d


def _norm(dims: int):
    return nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d


def _pool(dims: int):
    # ceil_mode lets 28x28 (MNIST) and length-40 signals survive five halvings
    return (nn.MaxPool1d if dims == 1 else nn.MaxPool2d)(2, ceil_mode=True)


def _global_pool(dims: int):
    return nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)


def _scaled(channels: int, width: int) -> int:
    return max(1, round(channels * width / 64))


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, width: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth):
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.ReLU()]
        layers.append(nn.Linear(width if depth else in_features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """`depth` conv-BN-ReLU-pool blocks doubling the channels from `width`, then a linear head."""

    def __init__(self, dims: int, in_channels: int, num_classes: int, width: int, depth: int):
        super().__init__()
        conv, norm = _conv(dims), _norm(dims)
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(depth):
            c_out = width * 2**i
            layers += [conv(c_in, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU(), _pool(dims)]
            c_in = c_out
        layers += [_global_pool(dims), nn.Flatten(), nn.Linear(c_in, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VGG(nn.Module):
    def __init__(self, layout: list, dims: int, in_channels: int, num_classes: int, width: int):
        super().__init__()
        conv, norm = _conv(dims), _norm(dims)
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in layout:
            if item == "M":
                layers.append(_pool(dims))
            else:
                c_out = _scaled(item, width)
                layers += [conv(c_in, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU()]
                c_in = c_out
        layers += [_global_pool(dims), nn.Flatten(), nn.Linear(c_in, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    def __init__(self, dims: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        conv, norm = _conv(dims), _norm(dims)
        self.body = nn.Sequential(
            conv(c_in, c_out, 3, stride=stride, padding=1, bias=False), norm(c_out), nn.ReLU(),
            conv(c_out, c_out, 3, padding=1, bias=False), norm(c_out),
        )
        self.skip = (
            nn.Identity() if stride == 1 and c_in == c_out
            else nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False), norm(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem, no max-pool, stages of width w, 2w, 4w, 8w."""

    def __init__(self, dims: int, in_channels: int, num_classes: int, width: int):
        super().__init__()
        conv, norm = _conv(dims), _norm(dims)
        self.stem = nn.Sequential(conv(in_channels, width, 3, padding=1, bias=False), norm(width), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = width
        for stage in range(4):
            c_out = width * 2**stage
            for b in range(2):
                blocks.append(_BasicBlock(dims, c_in, c_out, stride=2 if stage > 0 and b == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(_global_pool(dims), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
