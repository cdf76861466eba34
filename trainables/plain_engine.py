"""The reference engine: one `nn.Module` trained by autograd and `torch.optim.SGD`.

Every lone trial runs on it, speed options included (`execution.TrainingForward`); the stacked
engine is tested against it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from . import measures
from .augment import augment
from .config import TrialConfig
from .data import TensorData
from .execution import TrainingForward
from .seeding import generator
from .stages import Stage


class PlainEngine:
    """A loop engine of one member (position 0): the trial's model, from its init."""

    def __init__(self, cfg: TrialConfig, model: nn.Module, data: TensorData, device: torch.device):
        self.cfg, self.model, self.data, self.device = cfg, model, data, device
        self.params = [p for p in model.parameters()]
        self.init_params = [p.detach().clone() for p in self.params]
        self.forward = TrainingForward(cfg, model, device)
        self.stage: Stage | None = None
        self.opt: torch.optim.Optimizer | None = None

    def start_stage(self, stage: Stage, optimizer_state: dict[str, Any] | None = None) -> None:
        """A fresh SGD for the stage, or the one a checkpoint saved mid-stage."""
        self.stage = stage
        self.opt = torch.optim.SGD(self.params, lr=stage.lr, momentum=stage.momentum,
                                   weight_decay=stage.weight_decay, foreach=True)
        if optimizer_state is not None:
            self.opt.load_state_dict(optimizer_state)

    def train_epoch(self, epoch: int) -> dict[str, list[float]]:
        for group in self.opt.param_groups:
            group["lr"] = self.stage.lr_at(epoch)
        stats = train_epoch(self.model, self.opt, self.stage, self.cfg.batch_size, self.forward)
        return {name: [value] for name, value in stats.items()}

    def evaluate(self) -> dict[str, list]:
        model, data, stage = self.model, self.data, self.stage
        pretrain_acc = None
        if stage.name == "pretrain" and stage.x is data.x_train:  # same inputs: one pass scores both label sets
            (train_loss, train_acc), (_, pretrain_acc) = measures.loss_and_accuracy(model, data.x_train, data.y_train,
                                                                                    stage.y)
        else:
            ((train_loss, train_acc),) = measures.loss_and_accuracy(model, data.x_train, data.y_train)
            if stage.name == "pretrain":
                ((_, pretrain_acc),) = measures.loss_and_accuracy(model, stage.x, stage.y)
        ((test_loss, test_acc),) = measures.loss_and_accuracy(model, data.x_test, data.y_test)
        return {"train_loss": [train_loss], "train_acc": [train_acc], "test_loss": [test_loss],
                "test_acc": [test_acc], "pretrain_acc": [pretrain_acc]}

    def norms(self) -> list[dict[str, float]]:
        return [{"weight_norm": measures.weight_norm(self.params),
                 "dist_from_init": measures.distance(self.params, self.init_params),
                 **measures.path_norms(self.model, self.data.input_shape)}]

    def test_predictions(self, k: int) -> torch.Tensor:
        return measures.predictions(self.model, self.data.x_test)

    def local_energy(self, ks: list[int]) -> dict[int, dict[str, float]]:
        cfg = self.cfg
        return {k: measures.local_energy(self.model, self.data.x_train, self.data.y_train, cfg.flatness_samples,
                                         generator(cfg.seed, "flatness", self.device)) for k in ks}

    def member_state(self, k: int) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}

    def keep(self, ks: list[int]) -> None:
        pass  # one member: the loop ends when it leaves


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, stage: Stage, batch_size: int,
                forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """One pass over the stage's data in a fresh random order; one device sync at the end.
    `forward` is the training forward pass (`execution.TrainingForward`), else the model."""
    model.train()
    forward = forward or model
    params = [p for p in model.parameters()]
    device = stage.x.device
    n = len(stage.x)
    perm = torch.randperm(n, generator=stage.gen, device=device)
    loss_sum = torch.zeros((), device=device)
    norm_sum = torch.zeros((), device=device)
    clipped = torch.zeros((), device=device)
    batches = 0
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        xb, yb = stage.x[idx], stage.y[idx]
        if stage.augmented:
            xb = augment(xb, stage.augmentation, stage.aug_noise, stage.gen)
        loss = nn.functional.cross_entropy(forward(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if stage.clip_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, stage.clip_norm, grad_norm)
            clipped += grad_norm > stage.clip_norm
        opt.step()
        loss_sum += loss.detach() * len(idx)
        norm_sum += grad_norm
        batches += 1
    return {
        "step_loss": loss_sum.item() / n,
        "grad_norm": norm_sum.item() / batches,
        "clipped_frac": clipped.item() / batches,
    }
