"""What a trial measures of a network: loss and accuracy, weight norms, flatness."""

from __future__ import annotations

import torch
from torch import nn

EVAL_BATCH = {"cpu": 256, "cuda": 2048}  # measured: big conv batches are 2x slower on CPU
FLATNESS_SCALES = (0.01, 0.05, 0.1)  # relative std of multiplicative weight noise
FLATNESS_MAX_ROWS = 10_000  # local energy on at most this many training rows (fixed subset)


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, x: torch.Tensor, *labels: torch.Tensor) -> list[tuple[float, float]]:
    """Mean cross-entropy and accuracy of one forward pass over `x`, against each label set.

    Scoring several label sets on the same inputs (clean and random labels) costs one pass.
    Eval mode; one device sync at the end.
    """
    was_training = model.training
    model.eval()
    loss_sums = torch.zeros(len(labels), device=x.device)
    correct = torch.zeros(len(labels), device=x.device, dtype=torch.long)
    batch = EVAL_BATCH.get(x.device.type, 2048)
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch]).float()
        predicted = logits.argmax(1)
        for j, y in enumerate(labels):
            target = y[i : i + batch]
            loss_sums[j] += nn.functional.cross_entropy(logits, target, reduction="sum")
            correct[j] += (predicted == target).sum()
    model.train(was_training)
    n = len(x)
    return [(loss / n, hits / n) for loss, hits in zip(loss_sums.tolist(), correct.tolist())]


@torch.no_grad()
def weight_norm(params: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(params))).item()


@torch.no_grad()
def distance(params: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    return weight_norm(torch._foreach_sub(params, reference))


@torch.no_grad()
def local_energy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: int, gen: torch.Generator
) -> dict[str, float]:
    """Mean rise of train loss when every weight w becomes w * (1 + s * eps), eps ~ N(0, 1).

    Small values mean a flat minimum. Computed for each s in FLATNESS_SCALES, `samples` draws
    each, on a fixed subset of the training rows; the weights are restored afterwards.
    """
    x, y = x[:FLATNESS_MAX_ROWS], y[:FLATNESS_MAX_ROWS]
    params = [p for p in model.parameters()]
    saved = [p.detach().clone() for p in params]
    ((base, _),) = loss_and_accuracy(model, x, y)
    out: dict[str, float] = {}
    for scale in FLATNESS_SCALES:
        rises = []
        for _ in range(samples):
            for p, w in zip(params, saved):
                noise = torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype)
                p.copy_(w * (1 + scale * noise))
            rises.append(loss_and_accuracy(model, x, y)[0][0] - base)
        out[f"local_energy_{round(scale * 100)}pct"] = sum(rises) / len(rises)
    for p, w in zip(params, saved):
        p.copy_(w)
    return out
