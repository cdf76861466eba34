"""One trial: optional label-noise pretraining, then clean training; `run_trial(config)`.

A trial is a pure function of its frozen config (and machine/thread count). Each epoch is
reported through `on_epoch` with a callable that snapshots the resumable state; a trial given
that state back finishes exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from . import measures
from .augment import augment
from .config import TrialConfig, make_config
from .data import TensorData, load_dataset
from .execution import TrainingForward, place_model
from .label_noise import make_pretrain_set
from .metrics import GLOBAL_MIN_TRAIN_ACC, mu_due
from .models import build_model
from .provenance import git_commit, package_version
from .seeding import generator, stream_seed

STEP_SCHEDULE = ((0.5, 0.1), (0.75, 0.01))  # lr_schedule=step: x0.1 at 50%, x0.01 at 75% of epochs

OnEpoch = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]


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


@dataclass
class TrialResult:
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was asked for but this machine has no CUDA GPU; use device=auto or cpu")
    return torch.device(name)


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
    steps = 0
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        xb, yb = stage.x[idx], stage.y[idx]
        if stage.augmentation != "none" or stage.aug_noise > 0:
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
        steps += 1
    return {
        "step_loss": loss_sum.item() / n,
        "grad_norm": norm_sum.item() / steps,
        "clipped_frac": clipped.item() / steps,
    }


def run_trial(
    config: TrialConfig | dict[str, Any],
    *,
    resume: dict[str, Any] | None = None,
    on_epoch: OnEpoch | None = None,
    pretrain_only: bool = False,
) -> TrialResult:
    """Run one trial to the end and return its summary and per-epoch history.

    `resume` is a state from a checkpoint (see `trainables.checkpoint`) or a shared pretraining
    snapshot (see `trainables.pretraining`); `on_epoch(record, snapshot)` is called after every
    epoch, and `snapshot()` returns the resumable state. `pretrain_only` stops after the
    pretraining stage, with an empty summary: how shared pretraining runs the same code.
    """
    cfg = config if isinstance(config, TrialConfig) else make_config(config)
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # autotuning picks kernels nondeterministically
        torch.backends.cudnn.deterministic = True
    data = load_dataset(cfg.dataset, device)
    model = init_model(cfg, data, device)
    params = [p for p in model.parameters()]
    init_params = [p.detach().clone() for p in params]
    stages = plan_stages(cfg, data, device)
    forward = TrainingForward(cfg, model, device)

    history: list[dict[str, Any]] = []
    position = (0, 0)  # (stage index, epochs done in it)
    elapsed_before = 0.0
    saved_stage = None
    if resume is not None:
        model.load_state_dict(resume["model"])
        history = list(resume["history"])
        position = tuple(resume["position"])
        elapsed_before = resume["elapsed_s"]
        saved_stage = resume["state_stage"]
    started = time.perf_counter()
    diverged = any(r["diverged"] for r in history)

    for s_index in range(position[0], len(stages)):
        stage = stages[s_index]
        opt = torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay, foreach=True)
        first_epoch = position[1] if s_index == position[0] else 0
        if resume is not None and saved_stage == s_index:
            opt.load_state_dict(resume["optimizer"])
            stage.gen.set_state(resume["generator"])
        for epoch in range(first_epoch, stage.epochs):
            for group in opt.param_groups:
                group["lr"] = stage.lr_at(epoch)
            t0 = time.perf_counter()
            step_stats = train_epoch(model, opt, stage, cfg.batch_size, forward)
            record = _epoch_record(model, params, init_params, data, stage, epoch, step_stats)
            record["epoch_time_s"] = time.perf_counter() - t0
            record["step"] = len(history) + 1  # epochs of both stages so far: the x axis of every curve
            history.append(record)
            diverged = record["diverged"]
            fitted = stage.stop_at_train_acc is not None and record["train_acc"] >= stage.stop_at_train_acc
            stage_over = diverged or fitted or epoch + 1 == stage.epochs
            if stage.name == "train" and not diverged and (stage_over or mu_due(epoch, stage.epochs)):
                record["mu_linear"] = linear_mu(measures.predictions(model, data.x_test), data, cfg.dataset)
            next_position = (len(stages) if diverged else s_index + 1, 0) if stage_over else (s_index, epoch + 1)
            if on_epoch is not None:  # on_epoch calls the snapshot before it returns, if at all
                on_epoch(record, lambda: {
                    "config": cfg.to_dict(),
                    "position": list(next_position),
                    "state_stage": s_index,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "generator": stage.gen.get_state(),
                    "history": history,
                    "elapsed_s": elapsed_before + time.perf_counter() - started,
                })
            if stage_over:
                break
        if diverged or (pretrain_only and stage.name == "pretrain"):
            break

    if pretrain_only:
        return TrialResult({}, history)
    summary = _summary(cfg, model, data, device, history, diverged)
    summary["wall_time_s"] = elapsed_before + time.perf_counter() - started
    return TrialResult(summary, history)


def linear_mu(predicted: torch.Tensor, data: TensorData, dataset: str) -> float:
    """mu_Y(F; L) of the net's test predictions against the dataset's linear classifier."""
    from .linear_probe import linear_test_predictions, mu_linear

    linear = linear_test_predictions(dataset, data)
    return mu_linear(predicted.cpu().numpy(), data.y_test.cpu().numpy(), linear.numpy())


def _epoch_record(model, params, init_params, data: TensorData, stage: Stage, epoch: int, step_stats) -> dict[str, Any]:
    pretrain_acc = None
    if stage.name == "pretrain" and stage.x is data.x_train:  # same inputs: one pass scores both label sets
        (train_loss, train_acc), (_, pretrain_acc) = measures.loss_and_accuracy(model, data.x_train, data.y_train, stage.y)
    else:
        ((train_loss, train_acc),) = measures.loss_and_accuracy(model, data.x_train, data.y_train)
        if stage.name == "pretrain":
            ((_, pretrain_acc),) = measures.loss_and_accuracy(model, stage.x, stage.y)
    ((test_loss, test_acc),) = measures.loss_and_accuracy(model, data.x_test, data.y_test)
    return {
        "stage": stage.name,
        "epoch": epoch + 1,
        "lr": stage.lr_at(epoch),
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "pretrain_acc": pretrain_acc,
        **step_stats,
        "weight_norm": measures.weight_norm(params),
        "dist_from_init": measures.distance(params, init_params),
        **measures.path_norms(model, data.input_shape),
        "mu_linear": None,
        "diverged": not (math.isfinite(step_stats["step_loss"]) and math.isfinite(train_loss)),
    }


def _summary(cfg: TrialConfig, model, data: TensorData, device, history, diverged: bool,
             local_energy: dict[str, float] | None = None) -> dict[str, Any]:
    """The trial's final metrics; `local_energy` when a pack measured it for its members at once."""
    train_records = [r for r in history if r["stage"] == "train"]
    pretrain_records = [r for r in history if r["stage"] == "pretrain"]
    last = history[-1] if history else {}
    fit_epochs = [r["epoch"] for r in train_records if r["train_acc"] >= GLOBAL_MIN_TRAIN_ACC]
    summary: dict[str, Any] = {
        "status": "diverged" if diverged else "ok",
        "train_acc": last.get("train_acc"),
        "test_acc": last.get("test_acc"),
        "train_loss": last.get("train_loss"),
        "test_loss": last.get("test_loss"),
        "reached_global_min": bool(train_records) and not diverged and train_records[-1]["train_acc"] >= GLOBAL_MIN_TRAIN_ACC,
        "epochs_to_fit": fit_epochs[0] if fit_epochs else None,
        "train_epochs": len(train_records),
        "pretrain_final_acc": pretrain_records[-1]["pretrain_acc"] if pretrain_records else None,
    }
    if local_energy is not None:
        summary.update(local_energy)
    elif cfg.flatness_samples > 0 and not diverged:
        summary.update(measures.local_energy(
            model, data.x_train, data.y_train, cfg.flatness_samples, generator(cfg.seed, "flatness", device)
        ))
    summary.update({
        "device": device.type,
        "git_commit": git_commit(),
        "package_version": package_version(),
        "torch_version": str(torch.__version__),  # a plain str: summaries go into weights_only checkpoints
        "config": cfg.to_dict(),
    })
    return summary
