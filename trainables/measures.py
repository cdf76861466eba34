"""What a trial measures of a network: loss and accuracy, weight norms, flatness."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

EVAL_BATCH = {"cpu": 256, "cuda": 2048}  # big conv batches are slower on CPU
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


@torch.no_grad()
def mlp_path_norms(weights: list[torch.Tensor]) -> dict[str, float]:
    """l1 and l2 path norms of a ReLU MLP from its weight matrices (biases are not on paths).

    The l_p path norm is (sum over input-output paths of prod |w|^p)^(1/p): the network with
    every weight replaced by |w|^p, fed all ones, summed over its outputs (Neyshabur et al.
    2015). In float64, so deep or wide nets do not overflow.
    """
    out = {}
    for p in (1, 2):
        h = torch.ones(weights[0].shape[1], dtype=torch.float64, device=weights[0].device)
        for w in weights:
            h = w.double().abs().pow(p) @ h
        out[f"l{p}_path_norm"] = h.sum().item() ** (1 / p)
    return out


@torch.no_grad()
def path_norms(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """l1 and l2 path norms. Exact for MLPs; for conv nets the same forward pass of |w|^p on
    all ones with batch norm as its per-channel scale |gamma / sqrt(var + eps)|^p, which max
    pooling turns into a bound along the largest paths rather than the sum over all of them."""
    from .models import MLP

    if isinstance(model, MLP):
        return mlp_path_norms([m.weight for m in model.net if isinstance(m, nn.Linear)])
    out = {}
    device = next(model.parameters()).device
    for p in (1, 2):
        net = copy.deepcopy(model).double().eval()
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                scale = module.weight / torch.sqrt(module.running_var + module.eps)
                module.weight.copy_(scale.abs().pow(p))
                module.running_mean.zero_()
                module.running_var.fill_(1.0 - module.eps)
                module.bias.zero_()
            elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                module.weight.copy_(module.weight.abs().pow(p))
                if module.bias is not None:
                    module.bias.zero_()
        total = net(torch.ones((1, *input_shape), dtype=torch.float64, device=device)).sum().item()
        out[f"l{p}_path_norm"] = total ** (1 / p) if math.isfinite(total) else math.inf
    return out


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted classes, in eval mode and the eval batch size."""
    was_training = model.training
    model.eval()
    batch = EVAL_BATCH.get(x.device.type, 2048)
    out = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    model.train(was_training)
    return out
