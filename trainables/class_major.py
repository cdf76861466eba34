"""A pack's log-softmax, run across rows of a (classes, rows) copy where that rounds the same.

ATen's CPU log-softmax over the last dimension works row by row, which for 10 classes is a
large share of a packed MLP's step and evaluation. Over dimension 0 of a transposed copy it
runs the same steps for many rows at once in vector lanes (timings: docs/performance.md).
While the classes fit in one vector (10 under AVX-512's 16 floats), the
row-by-row kernel computes each row in one partial vector with those same steps, so the two
agree bit for bit, forward and backward. Rows in the copy's last partial vector would take
scalar code, so the copy is padded to a multiple of 64 rows. Whether the kernels agree is
checked once per class count and dtype in each process; where they do not (more classes than
lanes, other CPUs) and on GPUs, the pack keeps ATen's kernel, so a member's results stay its
standalone run's, which uses ATen's kernel throughout.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

ROW_MULTIPLE = 64  # a multiple of any CPU's vector of floats, so no row sits in a scalar tail
_CHECK_SCALES = (1e-3, 1.0, 30.0, 1e3)  # logits from untrained to memorizing networks
_CHECK_ROWS = 4096 + 37  # padding exercised too

aten = torch.ops.aten


def _padded_transpose(rows_by_class: torch.Tensor) -> torch.Tensor:
    """(N, C) -> a contiguous (C, N rounded up to ROW_MULTIPLE), zeros in the padding."""
    n, classes = rows_by_class.shape
    padded = -(-n // ROW_MULTIPLE) * ROW_MULTIPLE
    if padded == n:
        return rows_by_class.t().contiguous()
    out = rows_by_class.new_zeros((classes, padded))
    out[:, :n] = rows_by_class.t()
    return out


def _by_class(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    by_class = torch.log_softmax(_padded_transpose(logits), 0)
    return by_class[:, : logits.shape[0]].t().contiguous(), by_class


def _backward_by_class(grad: torch.Tensor, by_class: torch.Tensor) -> torch.Tensor:
    out = aten._log_softmax_backward_data(_padded_transpose(grad), by_class, 0, by_class.dtype)
    return out[:, : grad.shape[0]].t().contiguous()


@functools.cache
def agrees(classes: int, dtype: torch.dtype) -> bool:
    """Whether the class-major kernels give ATen's row-by-row bits here, forward and backward."""
    gen = torch.Generator().manual_seed(0)
    for scale in _CHECK_SCALES:
        logits = torch.randn(_CHECK_ROWS, classes, generator=gen, dtype=dtype) * scale
        grad = torch.randn(_CHECK_ROWS, classes, generator=gen, dtype=dtype)
        rows = torch.log_softmax(logits, 1)
        out, by_class = _by_class(logits)
        if not (torch.equal(rows, out) and torch.equal(aten._log_softmax_backward_data(grad, rows, 1, dtype),
                                                       _backward_by_class(grad, by_class))):
            return False
    return True


def applies(logits: torch.Tensor) -> bool:
    return (logits.device.type == "cpu" and logits.dim() == 2 and logits.dtype in (torch.float32, torch.float64)
            and agrees(logits.shape[1], logits.dtype))


@torch.no_grad()
def log_softmax_forward(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`torch.log_softmax(logits, 1)` of (N, C) logits, contiguous, and its class-major copy
    (None where ATen's kernel ran): with it, what `log_softmax_backward` needs."""
    if not applies(logits):
        return torch.log_softmax(logits, 1), None
    return _by_class(logits)


@torch.no_grad()
def log_softmax_backward(grad: torch.Tensor, out: torch.Tensor, by_class: torch.Tensor | None) -> torch.Tensor:
    """The gradient with respect to the logits (N, C), given that of the log-probabilities."""
    if by_class is None:
        return aten._log_softmax_backward_data(grad, out, 1, out.dtype)
    return _backward_by_class(grad, by_class)


@torch.no_grad()
def cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    """`nn.functional.cross_entropy` of (N, C) logits and class targets, without gradients."""
    if not applies(logits):
        return nn.functional.cross_entropy(logits, target, reduction=reduction)
    return nn.functional.nll_loss(_by_class(logits)[0], target, reduction=reduction)
