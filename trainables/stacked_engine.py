"""The stacked engine: K members of one architecture trained as one `StackedModel`.

Every measure is taken as the plain engine takes it for one model, in the same reduction
order, so on CPU a member's records equal its standalone ones bit for bit (MLPs, tested).
Pretraining members train on their own labels, given by their stages.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import class_major, measures
from .config import TrialConfig
from .data import TensorData
from .loss_sums import member_loss_sums
from .stacked import StackedModel
from .stacked_step import train_epoch
from .seeding import generator
from .stages import Stage, init_model


class StackedEngine:
    """A loop engine of K members; `models[k]` holds member k's weights now, `init[k]` at its init."""

    def __init__(self, cfgs: list[TrialConfig], models: list[nn.Module], init: list[list[torch.Tensor]],
                 stages: list[Stage], momentum: list[list[torch.Tensor]] | None, data: TensorData,
                 device: torch.device):
        self.cfgs, self.stages, self.data, self.device = list(cfgs), list(stages), data, device
        self.batch_size = cfgs[0].batch_size
        self.net = StackedModel(models)
        count = len(self.net.params)
        self.init = [torch.stack([p[j] for p in init]) for j in range(count)]
        self.momentum = ([torch.stack([b[j] for b in momentum]) for j in range(count)] if momentum is not None
                         else [torch.zeros_like(p) for p in self.net.params])
        pretraining = stages[0].name == "pretrain"
        self.labels = torch.stack([s.y for s in stages]) if pretraining else None  # (K, N): each one's own
        self._evals: dict[str, Any] = {}

    def train_epoch(self, epoch: int) -> dict[str, list[float]]:
        return train_epoch(self.net, self.momentum, self.stages, epoch, self.data, self.batch_size, self.labels)

    def evaluate(self) -> dict[str, list]:
        self._evals = evaluate(self.net, self.data, self.labels)
        return self._evals

    def norms(self) -> list[dict[str, float]]:
        params = self.net.params
        paths = self._path_norms()
        return [{"weight_norm": measures.weight_norm([p[k] for p in params]),
                 "dist_from_init": measures.distance([p[k] for p in params], [q[k] for q in self.init]),
                 **paths[k]} for k in range(self.net.size)]

    def test_predictions(self, k: int) -> torch.Tensor:
        return self._evals["test_predictions"][k]

    def local_energy(self, ks: list[int]) -> dict[int, dict[str, float]]:
        if self.net.is_mlp:
            return local_energies(self.net, [self.cfgs[k] for k in ks], ks, self.data, self.device)
        return {k: measures.local_energy(self._member_model(k), self.data.x_train, self.data.y_train,
                                         self.cfgs[k].flatness_samples,
                                         generator(self.cfgs[k].seed, "flatness", self.device)) for k in ks}

    def member_state(self, k: int) -> dict[str, Any]:
        return {"model": self.net.member_state(k), "momentum": [b[k].clone() for b in self.momentum]}

    def member_weights(self, k: int) -> dict[str, torch.Tensor]:
        return self.net.member_state(k)

    def keep(self, ks: list[int]) -> None:
        self.net.keep(ks)
        self.momentum = [b[ks] for b in self.momentum]
        self.init = [p[ks] for p in self.init]
        if self.labels is not None:
            self.labels = self.labels[ks]
        self.cfgs = [self.cfgs[k] for k in ks]
        self.stages = [self.stages[k] for k in ks]

    @torch.no_grad()
    def _path_norms(self) -> list[dict[str, float]]:
        """Each member's path norms, computed as `measures.path_norms` computes them alone."""
        if self.net.is_mlp:
            weights = self.net.params[0::2]  # (weight, bias) per layer
            return [measures.mlp_path_norms([w[k] for w in weights]) for k in range(self.net.size)]
        return [measures.path_norms(self._member_model(k), self.data.input_shape) for k in range(self.net.size)]

    def _member_model(self, k: int) -> nn.Module:
        model = init_model(self.cfgs[k], self.data, self.device)
        model.load_state_dict(self.net.member_state(k))
        return model


@torch.no_grad()
def local_energies(net: StackedModel, cfgs: list[TrialConfig], ks: list[int], data: TensorData,
                   device) -> dict[int, dict[str, float]]:
    """`measures.local_energy` of the MLP members at positions `ks` (configs `cfgs`), all at once.

    Each member draws its weight noise from its own flatness generator in its standalone order,
    and its losses are summed as `measures.loss_and_accuracy` sums them, so the values are its
    standalone ones, bit for bit (tested).
    """
    groups: dict[int, list[int]] = {}  # by draws per scale
    for k, cfg in zip(ks, cfgs):
        groups.setdefault(cfg.flatness_samples, []).append(k)
    seeds = {k: cfg.seed for k, cfg in zip(ks, cfgs)}
    x, y = data.x_train[: measures.FLATNESS_MAX_ROWS], data.y_train[: measures.FLATNESS_MAX_ROWS]
    out: dict[int, dict[str, float]] = {}
    for samples, members in groups.items():
        sub = net.subset(members)
        saved = sub.params  # copies: the noisy weights below replace them in `sub` only
        gens = [generator(seeds[k], "flatness", device) for k in members]
        base = mean_losses(sub, x, y)
        energies: list[dict[str, float]] = [{} for _ in members]
        for scale in measures.FLATNESS_SCALES:
            rises: list[list[float]] = [[] for _ in members]
            for _ in range(samples):
                noise = [[torch.randn(w.shape[1:], generator=g, device=w.device, dtype=w.dtype) for w in saved]
                         for g in gens]  # each member's draws in its own order: tensor by tensor
                sub.params = [w * (1 + scale * torch.stack([n[j] for n in noise])) for j, w in enumerate(saved)]
                for i, loss in enumerate(mean_losses(sub, x, y)):
                    rises[i].append(loss - base[i])
            for i, r in enumerate(rises):
                energies[i][f"local_energy_{round(scale * 100)}pct"] = sum(r) / len(r)
        out.update(zip(members, energies))
    return out


@torch.no_grad()
def mean_losses(net: StackedModel, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Each member's mean loss over (x, y), summed batch by batch as `measures.loss_and_accuracy` does."""
    loss = torch.zeros(net.size, device=x.device)
    for _, _, batch_losses in eval_batches(net, x, y):
        loss += batch_losses
    return [v / len(x) for v in loss.tolist()]


def eval_batches(net: StackedModel, x: torch.Tensor, y: torch.Tensor):
    """(start, logits (K, B, C), each member's summed loss) for every batch that
    `measures.loss_and_accuracy` takes of (x, y), with its rounding."""
    batch = measures.EVAL_BATCH.get(x.device.type, 2048)
    for i in range(0, len(x), batch):
        logits = net.forward(x[i : i + batch], shared_input=True).float()
        targets = y[i : i + batch].expand(net.size, -1)
        sample_losses = class_major.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        yield i, logits, member_loss_sums(sample_losses.view(net.size, -1), logits, targets, "sum")


@torch.no_grad()
def evaluate(net: StackedModel, data: TensorData, labels: torch.Tensor | None = None) -> dict[str, list]:
    """Loss and accuracy per member, summed batch by batch as `measures.loss_and_accuracy` does;
    with each member's own train-set `labels` (K, N) also its accuracy on them (`pretrain_acc`),
    and the test predictions (K, N) (mu_linear's F)."""
    net.train(False)
    out: dict[str, Any] = {"pretrain_acc": [None] * net.size}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        loss = torch.zeros(net.size, device=x.device)
        correct = torch.zeros(net.size, device=x.device, dtype=torch.long)
        own = torch.zeros(net.size, device=x.device, dtype=torch.long)
        predicted = []
        for i, logits, batch_losses in eval_batches(net, x, y):
            end = i + logits.shape[1]
            loss += batch_losses
            predicted.append(logits.argmax(2))
            correct += (predicted[-1] == y[i:end]).sum(1)
            if split == "train" and labels is not None:
                own += (predicted[-1] == labels[:, i:end]).sum(1)
        if split == "train" and labels is not None:
            out["pretrain_acc"] = [v / len(x) for v in own.tolist()]
        out[f"{split}_loss"] = [v / len(x) for v in loss.tolist()]
        out[f"{split}_acc"] = [v / len(x) for v in correct.tolist()]
        if split == "test":  # the train predictions are not needed
            out["test_predictions"] = torch.cat(predicted, dim=1)
    net.train(True)
    return out
