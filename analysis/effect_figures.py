"""Figures of the joint boundary model: how far each level moves the boundary (one panel per
axis), and the boundary over every pair of axes (small multiples)."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sweeps.fit.boundary_model import BoundaryModel  # noqa: E402
from sweeps.fit.phase_fit import fmt  # noqa: E402


def _range(model: BoundaryModel) -> tuple[float, float]:
    return tuple(sorted(float(v) for v in model.to_x(np.array([0.0, 1.0]))))


def _draw(ax, positions, crossings, x_range, color="C0", label=None, offset=0.0):
    """Points with their 90% intervals; an open side is an arrow to the range's edge; a level with
    no crossing in the range is an open marker at the edge it lies beyond."""
    low_edge, high_edge = x_range
    for i, (pos, c) in enumerate(zip(positions, crossings)):
        p = pos + offset
        if c.x_critical is None:
            beyond = high_edge if "below 0.5" in (c.reason or "") else low_edge
            ax.plot([p], [beyond], marker="^" if beyond == high_edge else "v", mfc="white", mec=color, ms=7,
                    ls="none", label=label if i == 0 else None)
            continue
        lo = low_edge if c.ci_low is None else c.ci_low
        hi = high_edge if c.ci_high is None else c.ci_high
        ax.errorbar([p], [c.x_critical], yerr=[[c.x_critical - lo], [hi - c.x_critical]], fmt="o", color=color,
                    capsize=3, label=label if i == 0 else None)
        for open_side, edge, mark in ((c.ci_low is None, low_edge, "v"), (c.ci_high is None, high_edge, "^")):
            if open_side:
                ax.plot([p], [edge], marker=mark, color=color, ms=6)


def _y_scale(ax, model: BoundaryModel) -> None:
    low, high = _range(model)
    ax.set_ylim(low, high)
    effect = model.coords.effect  # the scale shifts are factors on
    if effect.log:
        ax.set_yscale("function", functions=(lambda v: np.log(np.maximum(v + effect.offset, 1e-12)),
                                             lambda t: np.exp(t) - effect.offset))
        nice = [v for v in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if low <= v <= high]
        ax.set_yticks(nice, [f"{v:g}" for v in nice])


def shift_figure(model: BoundaryModel):
    """Critical x per level of every axis (the others at reference), with its 90% interval."""
    axes_names = list(model.levels) or ["(no other axis)"]
    fig, panels = plt.subplots(1, len(axes_names), figsize=(1.2 + 2.4 * len(axes_names), 3.2), squeeze=False,
                               sharey=True)
    x_range = _range(model)
    for ax, name in zip(panels[0], axes_names):
        levels = model.levels.get(name, [None])
        crossings = [model.crossing({name: v} if name in model.levels else {}) for v in levels]
        _draw(ax, range(len(levels)), crossings, x_range)
        ax.set_xticks(range(len(levels)), [fmt(v) for v in levels], rotation=30, fontsize=8)
        ax.set_xlim(-0.6, len(levels) - 0.4)
        ax.set_title(name, fontsize=9)
        _y_scale(ax, model)
    panels[0][0].set_ylabel(f"critical {model.x} (90% interval)")
    fig.suptitle("Boundary shift per level, other axes at reference; triangles: open past the range", fontsize=9)
    fig.tight_layout()
    return fig


def pairs_figure(model: BoundaryModel, max_pairs: int = 6):
    """The boundary over each pair of axes: critical x against one axis's levels, a line per level
    of the other, every remaining axis at reference. None when fewer than two axes vary."""
    pairs = list(itertools.combinations(model.levels, 2))[:max_pairs]
    if not pairs:
        return None
    fig, panels = plt.subplots(1, len(pairs), figsize=(1.2 + 3.0 * len(pairs), 3.4), squeeze=False, sharey=True)
    x_range = _range(model)
    for ax, (a, b) in zip(panels[0], pairs):
        a_levels, b_levels = model.levels[a], model.levels[b]
        width = 0.5 / max(1, len(b_levels) - 1) if len(b_levels) > 1 else 0.0
        for k, bv in enumerate(b_levels):
            crossings = [model.crossing({a: av, b: bv}) for av in a_levels]
            offset = (k - (len(b_levels) - 1) / 2) * width / 2
            _draw(ax, range(len(a_levels)), crossings, x_range, color=f"C{k}", label=f"{b}={fmt(bv)}", offset=offset)
            known = [(i + offset, c.x_critical) for i, c in enumerate(crossings) if c.x_critical is not None]
            if len(known) > 1:
                ax.plot(*zip(*known), color=f"C{k}", lw=0.8, alpha=0.6)
        ax.set_xticks(range(len(a_levels)), [fmt(v) for v in a_levels], rotation=30, fontsize=8)
        ax.set_xlabel(a, fontsize=8)
        ax.set_title(f"{a} x {b}", fontsize=9)
        ax.legend(fontsize=6, loc="best")
        _y_scale(ax, model)
    panels[0][0].set_ylabel(f"critical {model.x} (P(bad) = 0.5)")
    fig.suptitle("The boundary over pairs of axes (joint model, other axes at reference; 90% intervals)", fontsize=9)
    fig.tight_layout()
    return fig
