"""Augmentation of whole batches with index arithmetic: no per-sample Python, no PIL.

Every random draw comes from the trial's own generator, so a resumed trial replays them. The
draws (`draw`) are apart from the arithmetic (`apply`), so a pack draws each member's numbers
from its own generator and then augments all its members' batches in one pass, with exactly
the values each member gets alone.
"""

from __future__ import annotations

import torch

SHIFT_1D = 2  # circular shift of 1-D signals by up to +-2 samples
CROP_PAD = 4  # images: pad 4 then crop back (the CIFAR standard)
CUTOUT_FRACTION = 0.25  # cutout square side as a fraction of the image side (8 px on 32x32)
Draws = dict[str, torch.Tensor]


def augment(x: torch.Tensor, kind: str, noise_std: float, gen: torch.Generator) -> torch.Tensor:
    """Return an augmented copy of the batch `x`; `kind` is the config's `augmentation`."""
    return apply(x, kind, draw(x, kind, noise_std, gen))


def draw(x: torch.Tensor, kind: str, noise_std: float, gen: torch.Generator) -> Draws:
    """Every random number augmenting the batch `x` takes, drawn in a fixed order."""
    n, device = x.shape[0], x.device
    out: Draws = {}
    if kind == "shift":
        out["shift"] = _randint(2 * SHIFT_1D + 1, n, gen, device) - SHIFT_1D
    elif kind in ("flip_crop", "flip_crop_cutout"):
        out["flip"] = _randint(2, n, gen, device).bool()
        out["dy"] = _randint(2 * CROP_PAD + 1, n, gen, device)
        out["dx"] = _randint(2 * CROP_PAD + 1, n, gen, device)
        if kind == "flip_crop_cutout":
            out["cy"] = _randint(x.shape[-2], n, gen, device)
            out["cx"] = _randint(x.shape[-1], n, gen, device)
    if noise_std > 0:
        out["noise"] = noise_std * torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype)
    return out


def drawn_serially(kind: str, noise_std: float, device: torch.device) -> bool:
    """Whether `draw` for N rows gives exactly the draws for its consecutive parts in turn, so a
    pack may draw a whole epoch's at once: a single integer draw per row (or none) on a CPU
    generator, which fills a tensor in order. Not Gaussian noise (CPU fills it 16 at a time),
    not image kinds (several draws per batch, interleaved), not CUDA (its offsets are rounded)."""
    return device.type == "cpu" and kind in ("none", "shift") and noise_std == 0


def apply(x: torch.Tensor, kind: str, draws: Draws) -> torch.Tensor:
    """The batch augmented with `draws` (from `draw`; rows of several batches may be joined)."""
    if kind == "shift":
        x = roll_rows(x, draws["shift"])
    elif kind in ("flip_crop", "flip_crop_cutout"):
        x = _crop(_flip(x, draws["flip"]), CROP_PAD, draws["dy"], draws["dx"])
        if kind == "flip_crop_cutout":
            x = _cutout(x, cutout_size(x), draws["cy"], draws["cx"])
    if "noise" in draws:
        x = x + draws["noise"]
    return x


def cutout_size(x: torch.Tensor) -> int:
    return max(1, round(CUTOUT_FRACTION * x.shape[-1]))


def _randint(high: int, n: int, gen: torch.Generator, device) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=gen, device=device)


def random_shift_1d(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Circularly shift each signal (N, C, L) by its own offset in [-max_shift, max_shift]."""
    return roll_rows(x, _randint(2 * max_shift + 1, x.shape[0], gen, x.device) - max_shift)


def roll_rows(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Each row of `x` with its signals rolled right by its `shift`."""
    return gather_shifted(x, torch.arange(len(x), device=x.device), shift)


def gather_shifted(x: torch.Tensor, rows: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`x[rows]` with each row's signals rolled right by its `shift`, in one copy: every signal
    is a contiguous window of itself written twice, copied whole (faster than gathering
    element by element; a pack gathers and shifts a whole epoch's batches this way)."""
    length = x.shape[-1]
    if len(rows) == 0 or x.numel() == 0:
        return x.new_empty((len(rows), *x.shape[1:]))
    signals = x[0].numel() // length
    doubled = torch.cat([x, x], -1).reshape(-1)
    first = (rows * signals)[:, None] + torch.arange(signals, device=x.device)  # each row's signals
    start = first * (2 * length) + ((-shift) % length)[:, None]  # window [start, start + length)
    return doubled.unfold(0, length, 1).index_select(0, start.reshape(-1)).view(len(rows), *x.shape[1:])


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image (N, C, H, W) left-right with probability 1/2."""
    return _flip(x, _randint(2, x.shape[0], gen, x.device).bool())


def _flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` and crop each image back to its size at its own random offset."""
    dy = _randint(2 * pad + 1, x.shape[0], gen, x.device)
    return _crop(x, pad, dy, _randint(2 * pad + 1, x.shape[0], gen, x.device))


def _crop(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    return out.gather(3, cols)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one size x size square per image, centred anywhere (it may hang off the edge)."""
    n, _, h, w = x.shape
    cy = _randint(h, n, gen, x.device)
    return _cutout(x, size, cy, _randint(w, n, gen, x.device))


def _cutout(x: torch.Tensor, size: int, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    _, _, h, w = x.shape
    y0, x0 = cy[:, None, None] - size // 2, cx[:, None, None] - size // 2
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    return x * (~inside)[:, None].to(x.dtype)
