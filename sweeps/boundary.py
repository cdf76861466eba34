"""Where a boundary search runs its next trials: each slice's fit and the x values it proposes, without Ray.

A grid spends most of its trials deep inside a phase. A boundary search runs a coarse grid of
the x axis (every slice, i.e. every combination of the other axes, with every seed, plus the
`pretrain_epochs = 0` baselines the phase labels need), then repeatedly fits P(bad global
minimum) along x in each slice, with the fit `minima phase` uses (`sweeps.phase_fit`), and
proposes the configs where that fit is least certain: the untried x values nearest the crossing
P = 0.5, inside its 90% interval. A slice is settled when its interval is narrower than
`ci_width`, when it has no crossing (one phase throughout the range), or when no untried x is
left inside its interval (x is refined to every integer of an integer axis, else REFINE times
finer than the coarse grid; the cells themselves are `sweeps.boundary_grid`'s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .boundary_grid import candidate_values, slices, with_baselines
from .boundary_model import fit_boundary
from .phase_fit import BASELINE_AXIS, AxisScale, fmt, label_phases
from .spec import SweepSpec

RESULT_FIELDS = ("status", "reached_global_min", "test_acc")


def fit_scale(spec: SweepSpec) -> AxisScale:
    """The x coordinate of the fit: the axis's own scale (log1p for a log duration axis, whose
    baseline sits at 0), not guessed from the unevenly spaced values the search picks."""
    x = spec.search.x
    log = spec.axes[x].scale == "log"
    return AxisScale(log, 1.0 if log and x == BASELINE_AXIS else 0.0)


@dataclass
class SliceFit:
    """One slice's boundary after a round, and what the search does next with it."""

    slice: dict[str, Any]
    boundary: dict[str, Any]
    settled: str | None  # why the slice needs no more trials; None while it is open
    proposed: list[Any] = field(default_factory=list)  # x values to run next (every seed)

    def as_dict(self) -> dict[str, Any]:
        return {"slice": self.slice, **self.boundary, "settled": self.settled, "proposed": self.proposed}


def frame(spec: SweepSpec, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Finished trials as the phase fit reads them: the axes, pretraining, seed and results."""
    df = pd.DataFrame(rows)
    if BASELINE_AXIS not in df.columns:
        df[BASELINE_AXIS] = spec.base.get(BASELINE_AXIS, 0)
    df[BASELINE_AXIS] = df[BASELINE_AXIS].fillna(spec.base.get(BASELINE_AXIS, 0))
    return df


def _in_slice(df: pd.DataFrame, spec: SweepSpec, s: dict[str, Any]) -> pd.Series:
    mask = pd.Series(True, index=df.index)
    for name, value in s.items():
        mask &= df[name].map(fmt) == fmt(value)
    if spec.search.x != BASELINE_AXIS and BASELINE_AXIS not in s:  # not the baselines added for it
        mask &= df[BASELINE_AXIS] == spec.base.get(BASELINE_AXIS, 0)
    return mask


def fit_slices(spec: SweepSpec, rows: list[dict[str, Any]], seed: int = 0) -> list[SliceFit]:
    """Fit every slice's boundary from the finished trials and propose its next x values."""
    x, scale = spec.search.x, fit_scale(spec)
    labelled = label_phases(frame(spec, rows), spec.search.delta)
    fits = []
    for s in slices(spec):
        trials = labelled[_in_slice(labelled, spec, s)]
        b = fit_boundary(trials, x, scale, None, s, seed).as_dict()
        b.pop("y"), b.pop("by")
        fits.append(_next_for_slice(spec, s, b, set(trials[x].map(fmt)), scale))
    return fits


def interval(spec: SweepSpec, b: dict[str, Any]) -> tuple[float, float]:
    """A crossing's interval, a side left open by the fit closed at the edge of x's range."""
    axis = spec.axes[spec.search.x]
    return (axis.low if b["ci_low"] is None else b["ci_low"]), (axis.high if b["ci_high"] is None else b["ci_high"])


def _next_for_slice(spec: SweepSpec, s: dict[str, Any], b: dict[str, Any], tried: set[str],
                    scale: AxisScale) -> SliceFit:
    if b["x_critical"] is None:
        return SliceFit(s, b, b.get("reason") or "no crossing")
    low, high = interval(spec, b)
    width = high - low
    if spec.search.ci_width is not None and width <= spec.search.ci_width:
        return SliceFit(s, b, f"interval {width:g} <= ci_width {spec.search.ci_width:g}")
    inside = [v for v in candidate_values(spec) if low < v < high and fmt(v) not in tried]
    if not inside:
        return SliceFit(s, b, f"no untried {spec.search.x} inside the interval")
    return SliceFit(s, b, None, _targets(spec, b, inside, scale))


def _targets(spec: SweepSpec, b: dict[str, Any], inside: list[Any], scale: AxisScale) -> list[Any]:
    """`per_round` untried values: the one nearest the crossing, then ones that split the interval."""
    t = scale.to_fit(np.asarray(inside, dtype=float))
    lo, hi = (scale.to_fit(v) for v in interval(spec, b))
    k = spec.search.per_round
    goals = [float(scale.to_fit(b["x_critical"]))] + list(np.linspace(lo, hi, k + 2)[1:-1])
    picked: list[Any] = []
    for goal in goals:
        order = np.argsort(np.abs(t - goal), kind="stable")
        choice = next((inside[i] for i in order if inside[i] not in picked), None)
        if choice is not None and len(picked) < k:
            picked.append(choice)
    return sorted(picked)


def next_cells(spec: SweepSpec, fits: list[SliceFit], known: set[str]) -> list[dict[str, Any]]:
    """The next round's cells: proposals of the widest intervals first (budget goes to them)."""
    scale = fit_scale(spec)

    def width(f: SliceFit) -> float:
        low, high = interval(spec, f.boundary)
        return float(scale.to_fit(high) - scale.to_fit(low))

    open_fits = sorted((f for f in fits if f.settled is None), key=width, reverse=True)
    cells = [{**f.slice, spec.search.x: v} for f in open_fits for v in f.proposed]
    return with_baselines(spec, cells, known)
