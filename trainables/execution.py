"""How a trial's training step runs: its precision, memory layout and compilation.

These are the config's speed options (`config.SPEED_DEFAULTS`), made for conv nets on a GPU:
bf16 autocast and NHWC (`channels_last`) let tensor cores run the convolutions, and
`torch.compile` fuses the small kernels. They change only the training forward pass and its
loss; evaluation runs the plain model in fp32, so every measure is taken the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TrialConfig


class TrainingForward:
    """`logits = forward(batch)` for the training step, in fp32 whatever the precision."""

    def __init__(self, cfg: TrialConfig, model: nn.Module, device: torch.device):
        self.device_type = device.type
        self.dtype = torch.bfloat16 if cfg.precision == "bf16" else None
        self.channels_last = cfg.channels_last
        # Dynamo treats an nn.Module's parameters as inputs, so the next trial of this process
        # with the same architecture reuses the compiled graph instead of compiling again.
        self.forward = torch.compile(model) if cfg.compile else model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self.forward(x)
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.forward(x).float()


def place_model(cfg: TrialConfig, model: nn.Module) -> nn.Module:
    """The model in the memory layout the config asks for."""
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model
