"""Where a boundary search runs its next trials: one fit of the boundary model over every slice,
and the trials it proposes, without Ray.

A grid spends most of its trials deep inside a phase. A boundary search runs a coarse grid of
the x axis first: in every slice (every combination of the other axes) each coarse x with one
seed, in turn, and the `pretrain_epochs = 0` baselines the phase labels need with every seed (the
label compares a trial with their mean). After that, each round fits the boundary model
(`sweeps.fit.boundary_model`, the one `minima phase` fits) to every finished trial at once, so that
what one slice's trials say about a shared effect (the steepness, the seeds' offsets, the levels'
shifts) narrows every slice, and proposes single trials (slice, x, seed): each the one expected
to narrow its slice's crossing most (`acquisition.informative_trials`). A round proposes as many
trials as fill the trial slots in whole waves of a cell's seeds (2 slots, 3 seeds: 6), spread
over the slices, at most `per_round` cells' worth per slice. A slice is settled when its interval
is narrower than `ci_width`, when it surely has no crossing, or when no untried trial would
narrow it; the search ends when every slice is settled or at the trial budget. x is refined to
every integer of an integer axis, else REFINE times finer than the coarse grid
(`sweeps.design.boundary_grid`).

`Strategy` names these choices; `Strategy.CELLS` is the other rule measured against it
(`benchmarks/search_efficiency.py`): whole cells, every seed, at the x most in doubt.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from .acquisition import IN_DOUBT, informative_trials, straddle_cells
from ..design.boundary_grid import COARSE_SEEDS, is_baseline, slices, trial_id, with_baselines
from ..fit.boundary_model import BoundaryModel, ModelUnfit, fit_model
from ..fit.phase_fit import BASELINE_AXIS, AxisScale, fmt, label_phases
from ..design.spec import SweepSpec

RESULT_FIELDS = ("status", "reached_global_min", "test_acc")


@dataclass(frozen=True)
class Strategy:
    """How a boundary search spends its trials (saved with its state, so a resume keeps it)."""

    unit: str = "trial"  # "trial": single (x, seed) trials, the most informative; "cell": every seed of the x most in doubt
    coarse_seeds: int | None = COARSE_SEEDS  # seeds per coarse cell other than a baseline; None: every seed
    sampler: str = "de"  # the posterior's moves (`fit_model`): "de" (differential evolution) or "stretch"
    CELLS: ClassVar["Strategy"]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Strategy.CELLS = Strategy("cell", None, "stretch")


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
    proposed: list[Any] = field(default_factory=list)  # x values to run next

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
    return mask & _not_added_baseline(df, spec, s)


def _not_added_baseline(df: pd.DataFrame, spec: SweepSpec, s: dict[str, Any]) -> pd.Series:
    """False for the baselines added for the labels when x is not the pretraining axis."""
    if spec.search.x != BASELINE_AXIS and BASELINE_AXIS not in s:
        return df[BASELINE_AXIS] == spec.base.get(BASELINE_AXIS, 0)
    return pd.Series(True, index=df.index)


def interval(spec: SweepSpec, b: dict[str, Any]) -> tuple[float, float]:
    """A crossing's interval, a side left open by the fit closed at the edge of x's range."""
    axis = spec.axes[spec.search.x]
    return (axis.low if b["ci_low"] is None else b["ci_low"]), (axis.high if b["ci_high"] is None else b["ci_high"])


def fit_joint(spec: SweepSpec, rows: list[dict[str, Any]], seed: int = 0,
              sampler: str = Strategy.sampler) -> tuple[BoundaryModel | None, str | None]:
    """The boundary model over every finished trial of the search, or None and why not."""
    labelled = label_phases(frame(spec, rows), spec.search.delta)
    labelled = labelled[_not_added_baseline(labelled, spec, {})]
    axes = [a for a in spec.axes if a != spec.search.x]
    try:
        return fit_model(labelled, spec.search.x, axes, fit_scale(spec), seed, sampler), None
    except ModelUnfit as why:
        return None, str(why)


def slice_fits(spec: SweepSpec, rows: list[dict[str, Any]], model: BoundaryModel | None,
               reason: str | None) -> list[SliceFit]:
    """Every slice's crossing from the joint model, and whether it is settled."""
    df = frame(spec, rows)
    fits = []
    for s in slices(spec):
        trials = df[_in_slice(df, spec, s)]
        counts = {"n_trials": int(len(trials)), "n_seeds": int(trials["seed"].nunique()) if len(trials) else 0}
        if model is None:
            fits.append(SliceFit(s, {"x_critical": None, "ci_low": None, "ci_high": None, "p_in_range": 0.0,
                                     **counts, "reason": reason}, reason))
            continue
        c = model.crossing(s)
        b = {"x_critical": c.x_critical, "ci_low": c.ci_low, "ci_high": c.ci_high, "p_in_range": round(c.p_in_range, 3),
             **counts, **({"reason": c.reason} if c.reason else {})}
        fits.append(SliceFit(s, b, _settled(spec, b)))
    return fits


def _settled(spec: SweepSpec, b: dict[str, Any]) -> str | None:
    if b["x_critical"] is None and b["p_in_range"] < IN_DOUBT:
        return b.get("reason") or "no crossing"
    if b["x_critical"] is None or spec.search.ci_width is None:
        return None
    low, high = interval(spec, b)
    return f"interval {high - low:g} <= ci_width {spec.search.ci_width:g}" if high - low <= spec.search.ci_width else None


def cells_per_round(slots: int, seeds: int) -> int:
    """Cells' worth of trials (a cell: every seed) that fill `slots`: whole waves where that takes
    few cells (2 slots, 3 seeds: 2 cells, 3 full waves), else one wave's worth rounded up."""
    if slots < seeds:
        return math.lcm(slots, seeds) // seeds
    return math.ceil(slots / seeds)


def next_trials(spec: SweepSpec, strategy: Strategy, model: BoundaryModel | None, fits: list[SliceFit],
                cells: set[str], tried: set[str], slots: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The next round's trials (cell and seed), with the baselines they need (every seed of a
    baseline cell not yet run): as many as fill the trial slots. `cells`: the cells with a trial
    run or queued; `tried`: those trials."""
    if model is None:
        return []
    n_cells = cells_per_round(slots, len(spec.seeds))
    if strategy.unit == "cell":
        chosen = straddle_cells(spec, model, fits, cells, n_cells, rng)
        return [{**c, "seed": s} for c in with_baselines(spec, chosen, cells) for s in spec.seeds]
    chosen = informative_trials(spec, model, fits, tried, n_cells * len(spec.seeds), rng)
    out, seen = [], set(tried)
    for t in chosen:
        cell = {k: v for k, v in t.items() if k != "seed"}
        base = [{**c, "seed": s} for c in with_baselines(spec, [cell], cells) if is_baseline(spec, c) and c != cell
                for s in spec.seeds]
        for trial in base + [t]:
            key = trial_id({k: v for k, v in trial.items() if k != "seed"}, trial["seed"])
            if key not in seen:
                seen.add(key)
                out.append(trial)
    return out
