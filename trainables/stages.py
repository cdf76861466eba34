"""A trial's setup: its device, its model at init, and its optimisation stages.

Everything here is drawn from the trial's own random streams (`trainables.seeding`), so a
member of a pack gets the same init, data order and labels as the trial run alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import TrialConfig
from .data import TensorData, load_dataset
from .execution import place_model
from .label_noise import make_pretrain_set
from .models import build_model
from .seeding import generator, stream_seed

STEP_SCHEDULE = ((0.5, 0.1), (0.75, 0.01))  # lr_schedule=step: x0.1 at 50%, x0.01 at 75% of epochs


@dataclass
class Stage:
    """One optimisation stage: its data, optimiser settings and random stream."""

    name: str
    epochs: int
    x: torch.Tensor
    y: torch.Tensor
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    augmentation: str
    aug_noise: float
    clip_norm: float | None
    stop_at_train_acc: float | None
    gen: torch.Generator

    def lr_at(self, epoch: int) -> float:
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
        if self.schedule == "step":
            factor = 1.0
            for frac, f in STEP_SCHEDULE:
                if epoch >= frac * self.epochs:
                    factor = f
            return self.lr * factor
        return self.lr

    @property
    def augmented(self) -> bool:
        return self.augmentation != "none" or self.aug_noise > 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was asked for but this machine has no CUDA GPU; use device=auto or cpu")
    return torch.device(name)


def prepare(cfg: TrialConfig) -> tuple[torch.device, TensorData]:
    """The process set up for this config (threads, deterministic kernels), its device and data."""
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # autotuning picks kernels nondeterministically
        torch.backends.cudnn.deterministic = True
    return device, load_dataset(cfg.dataset, device)


def init_model(cfg: TrialConfig, data: TensorData, device: torch.device) -> nn.Module:
    """The model at its random init, drawn on the CPU from the `init` stream (device-independent)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(cfg.seed, "init"))
        model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.width, cfg.depth)
    return place_model(cfg, model.to(device))


def plan_stages(cfg: TrialConfig, data: TensorData, device: torch.device) -> list[Stage]:
    stages = []
    if cfg.pretrain_epochs > 0:
        x_pre, y_pre = make_pretrain_set(
            data.x_train, data.y_train, data.num_classes, cfg.label_noise,
            cfg.pretrain_copies, cfg.pretrain_zero_out, generator(cfg.seed, "labels", device),
        )
        stages.append(Stage(
            "pretrain", cfg.pretrain_epochs, x_pre, y_pre, cfg.pretrain_lr, cfg.pretrain_momentum, 0.0,
            "constant", "none", 0.0, None, None, generator(cfg.seed, "pretrain", device),
        ))
    stages.append(Stage(
        "train", cfg.epochs, data.x_train, data.y_train, cfg.lr, cfg.momentum, cfg.weight_decay,
        cfg.lr_schedule, cfg.augmentation, cfg.aug_noise, cfg.clip_norm, cfg.stop_at_train_acc,
        generator(cfg.seed, "train", device),
    ))
    return stages
