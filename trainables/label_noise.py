"""The pretraining set: the paper's adversarial initialisation trains on it first.

Random labels are one assignment to the label tensor (as in airbench's warm-up); the
replicated set stacks k copies of the inputs, each with its own labels and zeroed values.
"""

from __future__ import annotations

import torch


def make_pretrain_set(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    label_noise: float,
    copies: int,
    zero_out: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels for pretraining: `copies` x len(x) rows.

    In each copy exactly round(label_noise * n) labels are replaced by labels drawn uniformly
    from all classes (so about 1/num_classes of them land on the true class, as in Zhang et al.),
    and each input value is zeroed with probability `zero_out`.
    """
    n = len(y)
    n_noisy = round(label_noise * n)
    xs, ys = [], []
    for _ in range(copies):
        labels = y.clone()
        rows = torch.randperm(n, generator=gen, device=y.device)[:n_noisy]
        labels[rows] = torch.randint(0, num_classes, (n_noisy,), generator=gen, device=y.device)
        inputs = x
        if zero_out > 0:
            keep = torch.rand(x.shape, generator=gen, device=x.device) >= zero_out
            inputs = x * keep
        xs.append(inputs)
        ys.append(labels)
    if copies == 1:
        return xs[0], ys[0]
    return torch.cat(xs), torch.cat(ys)
