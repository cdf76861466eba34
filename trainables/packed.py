"""Pack trials of one architecture into one process: `run_pack(configs)`.

Members share model, width, depth, dataset, batch size, device and threads, and differ in
anything else: seed, pretraining, lr, schedule, weight decay, momentum, clip threshold,
augmentation and its draws, stopping point. Each member keeps its own random streams, so its
batches and augmentations are those it draws alone; only the floating-point order of the
batched kernels differs, so a member's metrics equal its standalone run to float tolerance.
A member that fits, hits its epoch cap or diverges leaves the pack; the rest go on.

Pretraining is not packed: a member starts from its shared snapshot, or pretrains alone
first (`run_trial(..., pretrain_only=True)`), so the clean phase is all that is packed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from . import class_major, measures
from .augment import apply, draw, drawn_serially, gather_shifted
from .config import PACK_FIELDS, TrialConfig, can_pack_pretraining, make_config, pack_signature
from .data import TensorData, load_dataset
from .loss_sums import cascade_sums
from .stacked import StackedModel
from .models import MLP
from .seeding import generator
from .metrics import mu_due
from .trial import Stage, TrialResult, _summary, init_model, linear_mu, plan_stages, resolve_device, run_trial

PACK_FORMAT = 1
EPOCH_BATCHES_BYTES = 64 << 20  # see _whole_epoch: mnist1d's inputs for 32 members take 20 MB

OnMemberEpoch = Callable[[int, dict[str, Any]], None]
OnMemberDone = Callable[[int, TrialResult], None]
# after each pack epoch: (snapshot of the whole pack or None before the pack exists, whether
# a member finished); reports are made here, so a checkpoint covers every earlier report
OnPackEpoch = Callable[[Callable[[], dict[str, Any]] | None, bool], None]


@dataclass
class _Member:
    index: int
    cfg: TrialConfig
    stage: Stage | None = None  # the clean stage
    init_params: list[torch.Tensor] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    result: TrialResult | None = None  # set once it has finished


def run_pack(
    configs: list[TrialConfig | dict[str, Any]],
    *,
    resume: dict[str, Any] | None = None,
    pretrained: list[dict[str, Any] | None] | None = None,
    on_epoch: OnMemberEpoch | None = None,
    on_done: OnMemberDone | None = None,
    on_pack_epoch: OnPackEpoch | None = None,
) -> list[TrialResult]:
    """Train every member to its end; return their results in the order given.

    `resume` is a pack state from `snapshot()`; `pretrained[i]` a shared-pretraining resume
    state for member i (see `trainables.pretraining`). `on_epoch(i, record)` is called for
    each member's epoch once the whole pack finished it; `on_done(i, result)` when member i
    leaves the pack; then `on_pack_epoch(snapshot, any_finished)`, where `snapshot()` is the
    resumable state of the whole pack. A snapshot holds the summaries of members already done,
    which a resumed pack does not announce again: their reports came before the snapshot.
    """
    cfgs = [c if isinstance(c, TrialConfig) else make_config(c) for c in configs]
    signatures = {pack_signature(c) for c in cfgs}
    if len(signatures) != 1:
        raise ValueError(f"a pack needs one value of each of {', '.join(PACK_FIELDS)}; "
                         f"got {len(signatures)} different combinations")
    first = cfgs[0]
    if first.speed_options:
        raise ValueError(f"packed trials train in fp32, default layout, uncompiled; {first.speed_options} "
                         f"needs pack: 1")
    torch.set_num_threads(first.torch_threads)
    device = resolve_device(first.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    data = load_dataset(first.dataset, device)
    members = [_Member(i, c) for i, c in enumerate(cfgs)]
    if resume is not None and [m["config"] for m in resume["members"]] != [c.to_dict() for c in cfgs]:
        raise ValueError("pack checkpoint belongs to different member configs; delete it or fix the sweep")

    started = time.perf_counter()
    models, buffers_momentum, epoch = _start_members(members, data, device, resume, pretrained, on_epoch,
                                                     on_pack_epoch)
    restored = {i for i, state in enumerate(resume["members"]) if state["summary"] is not None} if resume else set()
    for m in members:  # members that ended before the pack formed (pretraining diverged)
        if m.result is not None and m.index not in restored and on_done is not None:
            on_done(m.index, m.result)
    if on_pack_epoch is not None:
        on_pack_epoch(None, False)
    active = [m for m in members if m.result is None]
    if not active:
        return [m.result for m in members]  # type: ignore[misc]

    net = StackedModel([models[m.index] for m in active])
    momentum_buf = [torch.stack([buffers_momentum[m.index][j] for m in active]) for j in range(len(net.params))]
    init = [torch.stack([m.init_params[j] for m in active]) for j in range(len(net.params))]

    while active:
        records, evals = _pack_epoch(net, momentum_buf, init, active, epoch, data, first.batch_size, device)
        finished: list[int] = []
        for k, (m, record) in enumerate(zip(active, records)):
            stop = m.stage.stop_at_train_acc
            over = record["diverged"] or (stop is not None and record["train_acc"] >= stop) or epoch + 1 == m.stage.epochs
            if over:
                finished.append(k)
            if not record["diverged"] and (over or mu_due(epoch, m.stage.epochs)):
                record["mu_linear"] = linear_mu(evals["test_predictions"][k], data, m.cfg.dataset)
        energies = _local_energies(net, active, finished, data, device)
        for k in finished:
            m = active[k]
            model = init_model(m.cfg, data, device)
            model.load_state_dict(net.member_state(k))
            m.result = TrialResult(_summary(m.cfg, model, data, device, m.history, m.history[-1]["diverged"],
                                            energies.get(k)), m.history)
            m.result.summary["wall_time_s"] = m.elapsed_s
        epoch += 1
        for m in active:
            if on_epoch is not None:
                on_epoch(m.index, m.history[-1])
        for k in finished:
            if on_done is not None:
                on_done(active[k].index, active[k].result)  # type: ignore[arg-type]
        keep = [k for k in range(len(active)) if k not in finished]
        active = [active[k] for k in keep]
        if finished and active:
            net.keep(keep)
            momentum_buf = [b[keep] for b in momentum_buf]
            init = [p[keep] for p in init]
        if on_pack_epoch is not None:
            on_pack_epoch(_snapshotter(members, active, net, momentum_buf, epoch, started), bool(finished))
    return [m.result for m in members]  # type: ignore[misc]


OnPretrainEpoch = Callable[[int, dict[str, Any], Callable[[], dict[str, Any]]], None]


def run_pretraining_pack(configs: list[TrialConfig | dict[str, Any]], on_epoch: OnPretrainEpoch) -> list[list[dict]]:
    """Pretrain the members together, each to its `pretrain_epochs`; return their histories.

    How shared pretraining packs: members share the architecture (PACK_FIELDS) and pretrain on
    the train set's inputs (one copy, nothing zeroed), each with its own random labels, order,
    lr and momentum. `on_epoch(i, record, snapshot)` follows each epoch of member i, where
    `snapshot()` is `{"model", "history", "elapsed_s"}`; a member that diverges stops. Records
    and weights equal `run_trial(cfg, pretrain_only=True)` bit for bit (MLPs, tested).
    """
    cfgs = [c if isinstance(c, TrialConfig) else make_config(c) for c in configs]
    if len({pack_signature(c) for c in cfgs}) != 1 or cfgs[0].speed_options:
        raise ValueError("a pretraining pack needs one architecture, trained with the default speed options")
    if not all(can_pack_pretraining(c) and c.pretrain_epochs >= 1 for c in cfgs):
        raise ValueError("a pretraining pack needs pretrain_epochs > 0 on the train set's own inputs "
                         "(pretrain_copies 1, pretrain_zero_out 0)")
    first = cfgs[0]
    torch.set_num_threads(first.torch_threads)
    device = resolve_device(first.device)
    data = load_dataset(first.dataset, device)
    members = [_Member(i, c) for i, c in enumerate(cfgs)]
    models = []
    for m in members:
        model = init_model(m.cfg, data, device)
        m.init_params = [p.detach().clone() for p in model.parameters()]
        m.stage = plan_stages(m.cfg, data, device)[0]
        models.append(model)
    active = list(members)
    net = StackedModel(models)
    momentum_buf = [torch.zeros_like(p) for p in net.params]
    init = [torch.stack([m.init_params[j] for m in active]) for j in range(len(net.params))]
    labels = torch.stack([m.stage.y for m in active])
    epoch = 0
    while active:
        records, _ = _pack_epoch(net, momentum_buf, init, active, epoch, data, first.batch_size, device, labels)
        finished = [k for k, (m, r) in enumerate(zip(active, records)) if r["diverged"] or epoch + 1 == m.stage.epochs]
        for k, m in enumerate(active):
            on_epoch(m.index, m.history[-1], lambda k=k, m=m: {
                "model": net.member_state(k), "history": list(m.history), "elapsed_s": m.elapsed_s})
        epoch += 1
        if finished:
            keep = [k for k in range(len(active)) if k not in finished]
            active = [active[k] for k in keep]
            if active:
                net.keep(keep)
                momentum_buf = [b[keep] for b in momentum_buf]
                init = [p[keep] for p in init]
                labels = labels[keep]
    return [m.history for m in members]


def _pack_epoch(net: StackedModel, momentum_buf, init, active: list[_Member], epoch: int, data: TensorData,
                batch_size: int, device, labels: torch.Tensor | None = None) -> tuple[list[dict[str, Any]], dict]:
    """Train every active member one epoch, measure it, and append its record to its history;
    the members' stage (`labels`: each one's pretraining labels) names the record's stage."""
    t0 = time.perf_counter()
    stats = _train_epoch(net, momentum_buf, active, epoch, data, batch_size, labels)
    evals = _evaluate(net, data, labels)
    norms = _norms(net.params, init)
    paths = _path_norms(net, data, device, active)
    epoch_time = (time.perf_counter() - t0) / len(active)  # the pack's epoch, shared by its members
    records = []
    for k, m in enumerate(active):
        record = {
            "stage": m.stage.name, "epoch": epoch + 1, "lr": m.stage.lr_at(epoch),
            "train_loss": evals["train_loss"][k], "train_acc": evals["train_acc"][k],
            "test_loss": evals["test_loss"][k], "test_acc": evals["test_acc"][k],
            "pretrain_acc": evals["pretrain_acc"][k] if labels is not None else None,
            "step_loss": stats["step_loss"][k], "grad_norm": stats["grad_norm"][k],
            "clipped_frac": stats["clipped_frac"][k],
            "weight_norm": norms["weight_norm"][k], "dist_from_init": norms["dist_from_init"][k],
            **paths[k], "mu_linear": None,
            "diverged": not (math.isfinite(stats["step_loss"][k]) and math.isfinite(evals["train_loss"][k])),
            "epoch_time_s": epoch_time, "step": len(m.history) + 1,
        }
        m.history.append(record)
        m.elapsed_s += epoch_time
        records.append(record)
    return records, evals


def _start_members(members, data: TensorData, device, resume, pretrained, on_epoch, on_pack_epoch):
    """Each member's model at the start of its clean phase (pretrained, resumed or fresh)."""
    models: dict[int, nn.Module] = {}
    momentum: dict[int, list[torch.Tensor]] = {}
    epoch = 0
    saved = {i: s for i, s in enumerate(resume["members"])} if resume is not None else {}
    if resume is not None:
        epoch = resume["epoch"]
    for m in members:
        model = init_model(m.cfg, data, device)
        m.init_params = [p.detach().clone() for p in model.parameters()]
        stages = plan_stages(m.cfg, data, device)
        m.stage = stages[-1]
        state = saved.get(m.index)
        if state is not None:
            m.history = list(state["history"])
            m.elapsed_s = state["elapsed_s"]
            if state["summary"] is not None:
                m.result = TrialResult(dict(state["summary"]), m.history)
                continue
            model.load_state_dict(state["model"])
            m.stage.gen.set_state(state["generator"])
            momentum[m.index] = [b.to(device) for b in state["momentum"]]
            models[m.index] = model
            continue
        start = (pretrained or [None] * len(members))[m.index]
        if m.cfg.pretrain_epochs > 0 and start is None:
            start = _pretrain_alone(m, on_epoch, on_pack_epoch)
        if start is not None:
            model.load_state_dict(start["model"])
            m.history = list(start["history"])
            m.elapsed_s = start["elapsed_s"]
            if start["position"][0] >= len(stages):  # diverged while pretraining: no clean phase
                m.result = run_trial(m.cfg, resume=start)
                continue
        momentum[m.index] = [torch.zeros_like(p) for p in model.parameters()]
        models[m.index] = model
    return models, momentum, epoch


def _pretrain_alone(m: _Member, on_epoch, on_pack_epoch) -> dict[str, Any]:
    """A member without a shared snapshot pretrains by itself, reporting as it goes."""
    captured: dict[str, Any] = {}

    def keep_last(record, snapshot):
        if on_epoch is not None:
            on_epoch(m.index, record)
        if on_pack_epoch is not None:
            on_pack_epoch(None, False)  # no pack to checkpoint yet
        if record["diverged"] or record["epoch"] == m.cfg.pretrain_epochs:
            state = snapshot()
            captured.update({**state, "model": {k: v.clone() for k, v in state["model"].items()},
                             "history": list(state["history"])})

    run_trial(m.cfg, on_epoch=keep_last, pretrain_only=True)
    return captured


def _train_epoch(net: StackedModel, momentum_buf, active: list[_Member], epoch: int, data: TensorData,
                 batch_size: int, labels: torch.Tensor | None = None) -> dict[str, list[float]]:
    """One epoch for every member: its own order, augmentation draws, lr, decay, momentum, clip;
    on the train set's labels, or on each member's own `labels` (K, N) when pretraining."""
    device = data.x_train.device
    n, k_count = len(data.x_train), len(active)
    net.train()
    perms = torch.stack([torch.randperm(n, generator=m.stage.gen, device=device) for m in active])
    column = lambda values: torch.tensor(values, device=device, dtype=net.params[0].dtype)  # noqa: E731
    shapes = [(k_count,) + (1,) * (p.dim() - 1) for p in net.params]  # a member's scalar against its tensor
    per_tensor = lambda values: [column(values).view(shape) for shape in shapes]  # noqa: E731
    neg_lr = per_tensor([-m.stage.lr_at(epoch) for m in active])
    decay = per_tensor([m.stage.weight_decay for m in active])
    mom = per_tensor([m.stage.momentum for m in active])
    clip = column([m.stage.clip_norm if m.stage.clip_norm is not None else math.inf for m in active])
    clips = any(m.stage.clip_norm is not None for m in active)
    decays, momenta = any(m.stage.weight_decay for m in active), any(m.stage.momentum for m in active)
    augmented = [k for k, m in enumerate(active) if m.stage.augmentation != "none" or m.stage.aug_noise > 0]
    epoch_x, epoch_y = _whole_epoch(data, perms, active, augmented, labels)  # None: batch by batch
    loss_sum = torch.zeros(k_count, device=device)
    norm_sum = torch.zeros(k_count, device=device)
    clipped = torch.zeros(k_count, device=device)
    steps = 0
    for start in range(0, n, batch_size):
        if epoch_x is not None:
            xb, yb = epoch_x[:, start : start + batch_size].contiguous(), epoch_y[:, start : start + batch_size]
        else:
            idx = perms[:, start : start + batch_size]
            xb = data.x_train[idx]  # (K, B, ...)
            yb = data.y_train[idx] if labels is None else labels.gather(1, idx)
            if augmented:
                xb = _augment_members(xb, [active[k].stage for k in augmented], augmented)
        b = xb.shape[1]
        sample_losses, logits, grads = net.losses_and_grads(xb, yb)
        with torch.no_grad():
            norms = _member_norms(grads, k_count)
            # torch's clip_grads_with_norm_ and SGD(foreach) step, with a per-member coefficient
            # in place of each scalar; addcmul rounds as add(alpha=...) does. In place, in the
            # gradients' own memory: a fresh (K, ...) tensor per op and step cost packs of wide
            # MLPs more than their products (page faults on every new 32 MB+ buffer). Clipping,
            # decay or momentum that no member uses is skipped, as SGD skips it for a member alone
            # (3-4 fewer ops a step; its x1, +0 and 0*buffer would not change a bit)
            if clips:
                coef = ((norms + 1e-6).reciprocal() * clip).clamp(max=1.0)
                torch._foreach_mul_(grads, [coef.view(s) for s in shapes])
            if decays:
                torch._foreach_addcmul_(grads, net.params, decay)  # d_p
            if momenta:
                torch._foreach_mul_(momentum_buf, mom)
                torch._foreach_add_(momentum_buf, grads)
            torch._foreach_addcmul_(net.params, momentum_buf if momenta else grads, neg_lr)
            # the reported loss as nn.functional.cross_entropy's own mean rounds it (the
            # gradient above is already bit-equal; only this printed value would differ)
            loss_sum += _member_loss_sums(sample_losses, logits, yb, "mean") * b
            norm_sum += norms
            if clips:
                clipped += norms > clip
        steps += 1
    return {"step_loss": [v / n for v in loss_sum.tolist()], "grad_norm": [v / steps for v in norm_sum.tolist()],
            "clipped_frac": [v / steps for v in clipped.tolist()]}


def _whole_epoch(data: TensorData, perms: torch.Tensor, active: list[_Member], augmented: list[int],
                 labels: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Every member's batches of the epoch at once, inputs (K, N, ...) augmented and targets
    (K, N), in each member's order: one gather and shift per epoch, not per step (per step
    they were a fifth of the step of a pack of narrow MLPs, half of them shifted). Only where
    every augmented member shifts 1-D signals, drawn serially (`augment.drawn_serially`: its
    draws for the epoch are its per-batch draws in turn), and the inputs fit in
    EPOCH_BATCHES_BYTES; else (None, None)."""
    x = data.x_train
    if len(active) * x.numel() * x.element_size() > EPOCH_BATCHES_BYTES:
        return None, None
    stages = {k: active[k].stage for k in augmented}
    if not all(s.augmentation == "shift" and drawn_serially(s.augmentation, s.aug_noise, x.device)
               for s in stages.values()):
        return None, None
    epoch_y = data.y_train[perms] if labels is None else labels.gather(1, perms)
    if not augmented:
        return x[perms], epoch_y
    shift = torch.zeros_like(perms)
    for k, stage in stages.items():
        shift[k] = draw(perms[k], stage.augmentation, stage.aug_noise, stage.gen)["shift"]  # N draws, as N rows'
    return gather_shifted(x, perms.reshape(-1), shift.reshape(-1)).view(*perms.shape, *x.shape[1:]), epoch_y


def _augment_members(xb: torch.Tensor, stages: list[Stage], members: list[int]) -> torch.Tensor:
    """Augment the members' batches (K, B, ...) in place (its callers pass fresh gathers): each
    member draws from its own generator, in its standalone order; members of one kind are then
    augmented as one joined batch."""
    draws = [draw(xb[k], s.augmentation, s.aug_noise, s.gen) for k, s in zip(members, stages)]
    groups: dict[tuple, list[int]] = {}
    for i, (s, d) in enumerate(zip(stages, draws)):
        groups.setdefault((s.augmentation, tuple(d)), []).append(i)
    for (kind, names), rows in groups.items():
        ks = [members[i] for i in rows]
        joined = {name: torch.cat([draws[i][name] for i in rows]) for name in names}
        xb[ks] = apply(xb[ks].flatten(0, 1), kind, joined).view(len(ks), *xb.shape[1:])
    return xb


def _member_loss_sums(sample_losses: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                      reduction: str) -> torch.Tensor:
    """Each member's batch loss (K,), rounded as its standalone `cross_entropy` call rounds it:
    from the per-sample losses (K, B) on CPU, by a call per member on a GPU."""
    if sample_losses.device.type == "cpu":
        sums = cascade_sums(sample_losses)
        return sums / sample_losses.shape[1] if reduction == "mean" else sums
    return torch.stack([nn.functional.cross_entropy(logits[k], targets[k], reduction=reduction)
                        for k in range(len(logits))])


def _member_norms(tensors, k_count: int) -> torch.Tensor:
    """Each member's global L2 norm, reduced in the order `get_total_norm` uses (bit-equal).

    A row-wise norm of each stacked tensor rounds as `_foreach_norm` of each member's slice
    (checked on 300 random draws of MLP and conv shapes, and by the packing tests) at a
    seventh of the cost for 16 members.
    """
    per_tensor = torch.stack([torch.linalg.vector_norm(t.reshape(k_count, -1), dim=1) for t in tensors])
    return torch.linalg.vector_norm(per_tensor.t().contiguous(), dim=1)


@torch.no_grad()
def _local_energies(net: StackedModel, active: list[_Member], finished: list[int], data: TensorData,
                    device) -> dict[int, dict[str, float]]:
    """`measures.local_energy` of the finishing MLP members (by pack position), all at once.

    Each member draws its weight noise from its own flatness generator in its standalone order,
    and its losses are summed as `measures.loss_and_accuracy` sums them, so the values are its
    standalone ones, bit for bit (tested); members of other models are measured alone.
    """
    if not net.is_mlp:
        return {}
    groups: dict[int, list[int]] = {}  # by draws per scale
    for k in finished:
        if active[k].cfg.flatness_samples > 0 and not active[k].history[-1]["diverged"]:
            groups.setdefault(active[k].cfg.flatness_samples, []).append(k)
    x, y = data.x_train[: measures.FLATNESS_MAX_ROWS], data.y_train[: measures.FLATNESS_MAX_ROWS]
    out: dict[int, dict[str, float]] = {}
    for samples, ks in groups.items():
        sub = net.subset(ks)
        saved = sub.params  # copies: the noisy weights below replace them in `sub` only
        gens = [generator(active[k].cfg.seed, "flatness", device) for k in ks]
        base = _mean_losses(sub, x, y)
        energies = [{} for _ in ks]
        for scale in measures.FLATNESS_SCALES:
            rises: list[list[float]] = [[] for _ in ks]
            for _ in range(samples):
                noise = [[torch.randn(w.shape[1:], generator=g, device=w.device, dtype=w.dtype) for w in saved]
                         for g in gens]  # each member's draws in its own order: tensor by tensor
                sub.params = [w * (1 + scale * torch.stack([n[j] for n in noise])) for j, w in enumerate(saved)]
                for i, loss in enumerate(_mean_losses(sub, x, y)):
                    rises[i].append(loss - base[i])
            for i, r in enumerate(rises):
                energies[i][f"local_energy_{round(scale * 100)}pct"] = sum(r) / len(r)
        out.update(zip(ks, energies))
    return out


@torch.no_grad()
def _mean_losses(net: StackedModel, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Each member's mean loss over (x, y), summed batch by batch as `measures.loss_and_accuracy` does."""
    loss = torch.zeros(net.size, device=x.device)
    for _, _, batch_losses in _eval_batches(net, x, y):
        loss += batch_losses
    return [v / len(x) for v in loss.tolist()]


def _eval_batches(net: StackedModel, x: torch.Tensor, y: torch.Tensor):
    """(start, logits (K, B, C), each member's summed loss) for every batch that
    `measures.loss_and_accuracy` takes of (x, y), with its rounding."""
    batch = measures.EVAL_BATCH.get(x.device.type, 2048)
    for i in range(0, len(x), batch):
        logits = net.forward(x[i : i + batch], shared_input=True).float()
        targets = y[i : i + batch].expand(net.size, -1)
        sample_losses = class_major.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        yield i, logits, _member_loss_sums(sample_losses.view(net.size, -1), logits, targets, "sum")


@torch.no_grad()
def _evaluate(net: StackedModel, data: TensorData, labels: torch.Tensor | None = None) -> dict[str, list[float]]:
    """Loss and accuracy per member, summed batch by batch as `measures.loss_and_accuracy` does;
    with each member's own train-set `labels` (K, N) also its accuracy on them (`pretrain_acc`)."""
    net.train(False)
    out: dict[str, Any] = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        loss = torch.zeros(net.size, device=x.device)
        correct = torch.zeros(net.size, device=x.device, dtype=torch.long)
        own = torch.zeros(net.size, device=x.device, dtype=torch.long)
        predicted = []
        for i, logits, batch_losses in _eval_batches(net, x, y):
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
        if split == "test":  # mu_linear's F; the train predictions are not needed
            out["test_predictions"] = torch.cat(predicted, dim=1)  # (K, N)
    net.train(True)
    return out


@torch.no_grad()
def _norms(params: list[torch.Tensor], init: list[torch.Tensor]) -> dict[str, list[float]]:
    """Weight norm and distance from init per member, as `measures.weight_norm` computes them."""
    members = range(params[0].shape[0])
    return {"weight_norm": [measures.weight_norm([p[k] for p in params]) for k in members],
            "dist_from_init": [measures.distance([p[k] for p in params], [q[k] for q in init]) for k in members]}


@torch.no_grad()
def _path_norms(net: StackedModel, data: TensorData, device, active: list[_Member]) -> list[dict[str, float]]:
    """Each member's path norms, computed as `measures.path_norms` computes them alone."""
    if isinstance(net.base, MLP):
        weights = net.params[0::2]  # (weight, bias) per layer
        return [measures.mlp_path_norms([w[k] for w in weights]) for k in range(net.size)]
    out = []
    for k, m in enumerate(active):
        model = init_model(m.cfg, data, device)
        model.load_state_dict(net.member_state(k))
        out.append(measures.path_norms(model, data.input_shape))
    return out


def _snapshotter(members: list[_Member], active: list[_Member], net: StackedModel, momentum_buf, epoch: int,
                 started: float):
    def snapshot() -> dict[str, Any]:
        slot = {m.index: k for k, m in enumerate(active)}
        states = []
        for m in members:
            k = slot.get(m.index)
            states.append({
                "config": m.cfg.to_dict(), "history": list(m.history), "elapsed_s": m.elapsed_s,
                "summary": m.result.summary if m.result is not None else None,
                "model": net.member_state(k) if k is not None else None,
                "momentum": [b[k].clone() for b in momentum_buf] if k is not None else None,
                "generator": m.stage.gen.get_state() if k is not None else None,
            })
        return {"format": PACK_FORMAT, "epoch": epoch, "members": states,
                "elapsed_s": time.perf_counter() - started}
    return snapshot
