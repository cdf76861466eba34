"""Augmentation of whole batches with index arithmetic: no per-sample Python, no PIL.

Every random draw comes from the trial's own generator, so a resumed trial replays them.
"""

from __future__ import annotations

import torch

SHIFT_1D = 2  # circular shift of 1-D signals by up to +-2 samples
CROP_PAD = 4  # images: pad 4 then crop back (the CIFAR standard)
CUTOUT_FRACTION = 0.25  # cutout square side as a fraction of the image side (8 px on 32x32)


def augment(x: torch.Tensor, kind: str, noise_std: float, gen: torch.Generator) -> torch.Tensor:
    """Return an augmented copy of the batch `x`; `kind` is the config's `augmentation`."""
    if kind == "shift":
        x = random_shift_1d(x, SHIFT_1D, gen)
    elif kind in ("flip_crop", "flip_crop_cutout"):
        x = random_crop(random_flip(x, gen), CROP_PAD, gen)
        if kind == "flip_crop_cutout":
            x = cutout(x, max(1, round(CUTOUT_FRACTION * x.shape[-1])), gen)
    if noise_std > 0:
        x = x + noise_std * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return x


def _randint(high: int, n: int, gen: torch.Generator, device) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=gen, device=device)


def random_shift_1d(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Circularly shift each signal (N, C, L) by its own offset in [-max_shift, max_shift]."""
    n, _, length = x.shape
    shift = _randint(2 * max_shift + 1, n, gen, x.device) - max_shift
    idx = (torch.arange(length, device=x.device) - shift[:, None]) % length
    return x.gather(-1, idx[:, None, :].expand_as(x))


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image (N, C, H, W) left-right with probability 1/2."""
    flip = _randint(2, x.shape[0], gen, x.device).bool()
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` and crop each image back to its size at its own random offset."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = _randint(2 * pad + 1, n, gen, x.device)
    dx = _randint(2 * pad + 1, n, gen, x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    return out.gather(3, cols)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one size x size square per image, centred anywhere (it may hang off the edge)."""
    n, _, h, w = x.shape
    cy = _randint(h, n, gen, x.device)[:, None, None]
    cx = _randint(w, n, gen, x.device)[:, None, None]
    y0, x0 = cy - size // 2, cx - size // 2
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    return x * (~inside)[:, None].to(x.dtype)
