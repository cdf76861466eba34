"""Each pack member's summed loss, rounded exactly as its own `cross_entropy` call rounds it.

A pack computes every member's per-sample losses in one call (reduction "none"); the member's
standalone run reduces its batch with ATen's CPU `nll_loss`, which sums in a cascade: runs of
16 samples are summed in order, the run sums again in runs of 16, and so on, with sample 0 kept
apart and the levels added last. Repeating that order over all members at once (NumPy's
`add.accumulate` sums in order, in float32) costs a few small ops per batch instead of three
calls per member, and gives the same float32 bits (tested). CUDA reduces differently, so packs
on a GPU keep the per-member calls.
"""

from __future__ import annotations

import numpy as np
import torch

RUN = 16  # 2**level_power, which ATen fixes at 4 for batches under 2**40 samples
LEVELS = 8  # ATen's cascade_sum_num_levels: the top level holds sample 0


def cascade_sums(losses: torch.Tensor) -> torch.Tensor:
    """Row sums of `losses` (K, N) on CPU, each as `nll_loss(..., reduction="sum")` forms it."""
    count, n = losses.shape
    if n >= RUN ** (LEVELS - 1):
        raise ValueError(f"batches of {n} samples exceed the cascade this reproduces")
    values = losses.detach().numpy()
    total = np.zeros(count, dtype=values.dtype)
    seq = values[:, 1:]
    while seq.shape[1] > 0:  # one level: its runs of 16 in order; an unfinished run stays here
        length = seq.shape[1]
        full = length - length % RUN
        if full < length:
            total += np.add.accumulate(seq[:, full:], axis=1)[:, -1]
        seq = np.add.accumulate(seq[:, :full].reshape(count, -1, RUN), axis=2)[:, :, -1]
    return torch.from_numpy(total + values[:, 0])


def member_loss_sums(sample_losses: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                     reduction: str) -> torch.Tensor:
    """Each member's batch loss (K,), rounded as its standalone `cross_entropy` call rounds it:
    from the per-sample losses (K, B) on CPU, by a call per member on a GPU."""
    if sample_losses.device.type == "cpu":
        sums = cascade_sums(sample_losses)
        return sums / sample_losses.shape[1] if reduction == "mean" else sums
    return torch.stack([torch.nn.functional.cross_entropy(logits[k], targets[k], reduction=reduction)
                        for k in range(len(logits))])
