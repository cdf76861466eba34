"""One training epoch of K stacked members, each with the steps it takes alone.

Each member keeps its own random stream, so its batch order and augmentation draws are those
it makes alone; its clip, weight decay, momentum and lr are applied with its own coefficient,
in the kernels and rounding `torch.optim.SGD` uses for one model.
"""

from __future__ import annotations

import math

import torch

from .augment import apply, draw, drawn_serially, gather_shifted
from .data import TensorData
from .loss_sums import member_loss_sums
from .stacked import StackedModel
from .stages import Stage

EPOCH_BATCHES_BYTES = 64 << 20  # see whole_epoch: mnist1d's inputs for 32 members take 20 MB


def train_epoch(net: StackedModel, momentum_buf: list[torch.Tensor], stages: list[Stage], epoch: int,
                data: TensorData, batch_size: int, labels: torch.Tensor | None = None) -> dict[str, list[float]]:
    """One epoch for every member: its own order, augmentation draws, lr, decay, momentum, clip;
    on the train set's labels, or on each member's own `labels` (K, N) when pretraining."""
    device = data.x_train.device
    n, k_count = len(data.x_train), len(stages)
    net.train()
    perms = torch.stack([torch.randperm(n, generator=s.gen, device=device) for s in stages])
    column = lambda values: torch.tensor(values, device=device, dtype=net.params[0].dtype)  # noqa: E731
    shapes = [(k_count,) + (1,) * (p.dim() - 1) for p in net.params]  # a member's scalar against its tensor
    per_tensor = lambda values: [column(values).view(shape) for shape in shapes]  # noqa: E731
    neg_lr = per_tensor([-s.lr_at(epoch) for s in stages])
    decay = per_tensor([s.weight_decay for s in stages])
    mom = per_tensor([s.momentum for s in stages])
    clip = column([s.clip_norm if s.clip_norm is not None else math.inf for s in stages])
    clips = any(s.clip_norm is not None for s in stages)
    decays, momenta = any(s.weight_decay for s in stages), any(s.momentum for s in stages)
    augmented = [k for k, s in enumerate(stages) if s.augmented]
    epoch_x, epoch_y = whole_epoch(data, perms, stages, augmented, labels)  # None: batch by batch
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
                xb = augment_members(xb, [stages[k] for k in augmented], augmented)
        b = xb.shape[1]
        sample_losses, logits, grads = net.losses_and_grads(xb, yb)
        with torch.no_grad():
            norms = member_norms(grads, k_count)
            # torch's clip_grads_with_norm_ and SGD(foreach) step, with a per-member coefficient
            # in place of each scalar; addcmul rounds as add(alpha=...) does. In place, in the
            # gradients' own memory: a fresh (K, ...) tensor per op and step costs packs of wide
            # MLPs more than their products (page faults on every new large buffer). Clipping,
            # decay or momentum that no member uses is skipped, as SGD skips it for a member
            # alone (its x1, +0 and 0*buffer would not change a bit)
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
            loss_sum += member_loss_sums(sample_losses, logits, yb, "mean") * b
            norm_sum += norms
            if clips:
                clipped += norms > clip
        steps += 1
    return {"step_loss": [v / n for v in loss_sum.tolist()], "grad_norm": [v / steps for v in norm_sum.tolist()],
            "clipped_frac": [v / steps for v in clipped.tolist()]}


def whole_epoch(data: TensorData, perms: torch.Tensor, stages: list[Stage], augmented: list[int],
                labels: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Every member's batches of the epoch at once, inputs (K, N, ...) augmented and targets
    (K, N), in each member's order: one gather and shift per epoch, not per step (per step
    they weigh on a pack of narrow MLPs). Only where every augmented member shifts 1-D signals,
    drawn serially (`augment.drawn_serially`: its draws for the epoch are its per-batch draws
    in turn), and the inputs fit in EPOCH_BATCHES_BYTES; else (None, None)."""
    x = data.x_train
    if len(stages) * x.numel() * x.element_size() > EPOCH_BATCHES_BYTES:
        return None, None
    shifted = {k: stages[k] for k in augmented}
    if not all(s.augmentation == "shift" and drawn_serially(s.augmentation, s.aug_noise, x.device)
               for s in shifted.values()):
        return None, None
    epoch_y = data.y_train[perms] if labels is None else labels.gather(1, perms)
    if not augmented:
        return x[perms], epoch_y
    shift = torch.zeros_like(perms)
    for k, stage in shifted.items():
        shift[k] = draw(perms[k], stage.augmentation, stage.aug_noise, stage.gen)["shift"]  # N draws, as N rows'
    return gather_shifted(x, perms.reshape(-1), shift.reshape(-1)).view(*perms.shape, *x.shape[1:]), epoch_y


def augment_members(xb: torch.Tensor, stages: list[Stage], members: list[int]) -> torch.Tensor:
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


def member_norms(tensors, k_count: int) -> torch.Tensor:
    """Each member's global L2 norm, reduced in the order `get_total_norm` uses (bit-equal).

    A row-wise norm of each stacked tensor rounds as `_foreach_norm` of each member's slice
    (checked on random draws of MLP and conv shapes, and by the packing tests), at a fraction
    of the cost of one call per member.
    """
    per_tensor = torch.stack([torch.linalg.vector_norm(t.reshape(k_count, -1), dim=1) for t in tensors])
    return torch.linalg.vector_norm(per_tensor.t().contiguous(), dim=1)
