"""The epoch loop: K members (K = 1 for a lone trial) trained through one stage by an engine.

The loop owns what every trial does the same way, whoever computes it: the epoch record, when
a member stops (it fits, hits its epoch cap or diverges), when mu_linear is measured, the
member's time, its resumable state and its summary. An engine owns the arithmetic: the plain
`nn.Module` one (`plain_engine`) or K stacked copies (`stacked_engine`), which give each
member the numbers it gets alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from .config import TrialConfig
from .data import TensorData
from .metrics import GLOBAL_MIN_TRAIN_ACC, mu_due
from .provenance import git_commit, package_version
from .stages import Stage


@dataclass
class TrialResult:
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Member:
    """One trial in the loop: its config, the stage it trains in, and what it has done."""

    index: int
    cfg: TrialConfig
    stage: Stage | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    result: TrialResult | None = None  # set once it has finished

    @property
    def diverged(self) -> bool:
        return any(r["diverged"] for r in self.history)


class Engine(Protocol):
    """K members' arithmetic; every list and position `k` is by the members' order in the loop."""

    device: torch.device

    def train_epoch(self, epoch: int) -> dict[str, list[float]]:
        """One epoch of every member: "step_loss", "grad_norm", "clipped_frac"."""

    def evaluate(self) -> dict[str, list]:
        """"train_loss", "train_acc", "test_loss", "test_acc", "pretrain_acc" (None off pretraining)."""

    def norms(self) -> list[dict[str, float]]:
        """Per member: "weight_norm", "dist_from_init", "l1_path_norm", "l2_path_norm"."""

    def test_predictions(self, k: int) -> torch.Tensor: ...

    def local_energy(self, ks: list[int]) -> dict[int, dict[str, float]]: ...

    def member_state(self, k: int) -> dict[str, Any]:
        """Member k's weights ("model") and optimiser state, as a checkpoint holds them."""

    def keep(self, ks: list[int]) -> None:
        """Drop every member not listed."""


# after each epoch: (the epoch's index, the members that trained it, the positions among them
# of those that left the stage, member k's resumable state)
OnEpochEnd = Callable[[int, list[Member], list[int], Callable[[int], dict[str, Any]]], None]


def run_stage(engine: Engine, members: list[Member], data: TensorData, first_epoch: int, *, last_stage: bool,
              on_epoch_end: OnEpochEnd | None = None) -> None:
    """Train the members through their stage from `first_epoch`; a member that leaves it in its
    last stage gets its result. Every member's time is its share of the loop's wall time."""
    active = list(members)
    epoch = first_epoch
    tick = time.perf_counter()
    while active:
        t0 = time.perf_counter()
        stats = engine.train_epoch(epoch)
        evals = engine.evaluate()
        norms = engine.norms()
        epoch_time = (time.perf_counter() - t0) / len(active)  # the epoch, shared by its members
        finished = []
        for k, m in enumerate(active):
            record = epoch_record(m.stage, epoch, {name: v[k] for name, v in evals.items()},
                                  {name: v[k] for name, v in stats.items()}, norms[k], epoch_time,
                                  len(m.history) + 1)
            m.history.append(record)
            over = stage_over(m.stage, epoch, record)
            if over:
                finished.append(k)
            if m.stage.name == "train" and not record["diverged"] and (over or mu_due(epoch, m.stage.epochs)):
                record["mu_linear"] = linear_mu(engine.test_predictions(k), data, m.cfg.dataset)
        energies = measure_local_energy(engine, active, finished) if last_stage else {}
        now = time.perf_counter()
        for m in active:
            m.elapsed_s += (now - tick) / len(active)
        tick = now
        if last_stage:
            for k in finished:
                active[k].result = finish(active[k], engine.device, energies.get(k))
        if on_epoch_end is not None:
            on_epoch_end(epoch, active, finished, lambda k, active=active: member_state(engine, active, k))
        if finished:
            keep = [k for k in range(len(active)) if k not in finished]
            active = [active[k] for k in keep]
            if active:
                engine.keep(keep)
        epoch += 1


def epoch_record(stage: Stage, epoch: int, evals: dict[str, Any], stats: dict[str, float], norms: dict[str, float],
                 epoch_time: float, step: int) -> dict[str, Any]:
    """One member's record of epoch index `epoch`; `step` counts the epochs of both stages so far
    (the x axis of every curve); mu_linear is filled in where it is measured."""
    return {
        "stage": stage.name,
        "epoch": epoch + 1,
        "lr": stage.lr_at(epoch),
        "train_loss": evals["train_loss"],
        "train_acc": evals["train_acc"],
        "test_loss": evals["test_loss"],
        "test_acc": evals["test_acc"],
        "pretrain_acc": evals["pretrain_acc"],
        "step_loss": stats["step_loss"],
        "grad_norm": stats["grad_norm"],
        "clipped_frac": stats["clipped_frac"],
        "weight_norm": norms["weight_norm"],
        "dist_from_init": norms["dist_from_init"],
        "l1_path_norm": norms["l1_path_norm"],
        "l2_path_norm": norms["l2_path_norm"],
        "mu_linear": None,
        "diverged": not (math.isfinite(stats["step_loss"]) and math.isfinite(evals["train_loss"])),
        "epoch_time_s": epoch_time,
        "step": step,
    }


def stage_over(stage: Stage, epoch: int, record: dict[str, Any]) -> bool:
    """Whether the member leaves its stage after epoch index `epoch`: diverged, fitted or at its cap."""
    fitted = stage.stop_at_train_acc is not None and record["train_acc"] >= stage.stop_at_train_acc
    return record["diverged"] or fitted or epoch + 1 == stage.epochs


def linear_mu(predicted: torch.Tensor, data: TensorData, dataset: str) -> float:
    """mu_Y(F; L) of the net's test predictions against the dataset's linear classifier."""
    from .linear_probe import linear_test_predictions, mu_linear

    linear = linear_test_predictions(dataset, data)
    return mu_linear(predicted.cpu().numpy(), data.y_test.cpu().numpy(), linear.numpy())


def measure_local_energy(engine: Engine, members: list[Member], ks: list[int]) -> dict[int, dict[str, float]]:
    """Local energy of the members at positions `ks` that ask for it and did not diverge."""
    measured = [k for k in ks if members[k].cfg.flatness_samples > 0 and not members[k].diverged]
    return engine.local_energy(measured) if measured else {}


def member_state(engine: Engine, members: list[Member], k: int) -> dict[str, Any]:
    """Member k's resumable state in its stage: weights, optimiser, random stream, history, time."""
    m = members[k]
    return {**engine.member_state(k), "generator": m.stage.gen.get_state(), "history": list(m.history),
            "elapsed_s": m.elapsed_s}


def finish(member: Member, device: torch.device, local_energy: dict[str, float] | None) -> TrialResult:
    result = TrialResult(summarize(member.cfg, member.history, device, local_energy), member.history)
    result.summary["wall_time_s"] = member.elapsed_s
    return result


def summarize(cfg: TrialConfig, history: list[dict[str, Any]], device: torch.device,
              local_energy: dict[str, float] | None) -> dict[str, Any]:
    """The trial's final metrics from its history (and its local energy, where measured)."""
    diverged = any(r["diverged"] for r in history)
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
        **(local_energy or {}),
        "device": device.type,
        "git_commit": git_commit(),
        "package_version": package_version(),
        "torch_version": str(torch.__version__),  # a plain str: summaries go into weights_only checkpoints
        "config": cfg.to_dict(),
    }
    return summary
