"""Where a boundary search runs its next trials: one fit of the boundary model over every slice,
and the cells it proposes, without Ray.

A grid spends most of its trials deep inside a phase. A boundary search runs a coarse grid of
the x axis (every slice, i.e. every combination of the other axes, with every seed, plus the
`pretrain_epochs = 0` baselines the phase labels need). After that, each round fits the boundary
model (`sweeps.fit.boundary_model`, the one `minima phase` fits) to every finished trial at once, so
that what one slice's trials say about a shared effect narrows every slice, and proposes the
untried cells (slice, x) where the model is least sure which side of P(bad) = 0.5 they lie on:
the posterior probability q that the slice's crossing is below x, scored min(q, 1 - q)
(the straddle of a level set). A round proposes as many cells as fill the trial slots (every
seed of a cell runs), spread over the slices, at most `per_round` per slice. The search
ends when every slice's interval is narrower than `ci_width`, when no untried cell is in doubt
(x is refined to every integer of an integer axis, else REFINE times finer than the coarse grid;
the cells themselves are `sweeps.design.boundary_grid`'s), or at the trial budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..design.boundary_grid import candidate_values, cell_id, slices, with_baselines
from ..fit.boundary_model import BoundaryModel, ModelUnfit, fit_model
from ..fit.phase_fit import BASELINE_AXIS, AxisScale, fmt, label_phases
from ..design.spec import SweepSpec

RESULT_FIELDS = ("status", "reached_global_min", "test_acc")
IN_DOUBT = 0.05  # a cell is worth running while the model gives each side at least this chance
DRAWS = 2000  # posterior draws that score the candidates


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


def fit_joint(spec: SweepSpec, rows: list[dict[str, Any]], seed: int = 0) -> tuple[BoundaryModel | None, str | None]:
    """The boundary model over every finished trial of the search, or None and why not."""
    labelled = label_phases(frame(spec, rows), spec.search.delta)
    labelled = labelled[_not_added_baseline(labelled, spec, {})]
    axes = [a for a in spec.axes if a != spec.search.x]
    try:
        return fit_model(labelled, spec.search.x, axes, fit_scale(spec), seed), None
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


def propose(spec: SweepSpec, model: BoundaryModel, fits: list[SliceFit], known: set[str], cells: int,
            rng: np.random.Generator) -> list[dict[str, Any]]:
    """Up to `cells` untried cells where the model is least sure of the side of P(bad) = 0.5,
    round-robin over the open slices (most doubtful first), at most `per_round` per slice. Each
    slice's k-th pick aims at a different quantile of its crossing (median, then the quartiles, ...)."""
    x = spec.search.x
    values = candidate_values(spec)
    e = model.to_e(np.asarray(values, dtype=float))
    pick = rng.choice(len(model.thresholds), size=min(DRAWS, len(model.thresholds)), replace=False)
    ranked = []
    for f in fits:
        if f.settled is not None:
            continue
        thresholds = model.threshold_draws(f.slice)[pick]
        q = (thresholds[:, None] < e[None, :]).mean(axis=0)  # P(the crossing is below x)
        doubt = np.minimum(q, 1 - q)
        untried = np.array([cell_id({**f.slice, x: v}) not in known for v in values])
        doubt = np.where(untried, doubt, 0.0)
        if doubt.max() >= IN_DOUBT:
            ranked.append((float(doubt.max()), f, thresholds, doubt))
        else:
            f.settled = f"no untried {x} in doubt (each side at least {1 - IN_DOUBT:g} sure)"
    ranked.sort(key=lambda r: -r[0])
    goals = [0.5, 0.25, 0.75, 0.125, 0.875, 0.375, 0.625]
    out: list[dict[str, Any]] = []
    for k in range(min(spec.search.per_round, len(goals))):
        for _, f, thresholds, doubt in ranked:
            if len(out) >= cells:
                return out
            target = np.quantile(thresholds, goals[k])
            open_ = np.flatnonzero(doubt >= IN_DOUBT)
            taken = {fmt(c[x]) for c in out if all(fmt(c[a]) == fmt(v) for a, v in f.slice.items())}
            open_ = [i for i in open_ if fmt(values[i]) not in taken]
            if not open_:
                continue
            best = min(open_, key=lambda i: (abs(e[i] - target), i))
            out.append({**f.slice, x: values[best]})
            f.proposed.append(values[best])
    return out


def cells_per_round(slots: int, seeds: int) -> int:
    """Cells (each run with every seed) that fill `slots`: whole waves where that takes few cells
    (2 slots, 3 seeds: 2 cells, 3 full waves), else one wave's worth rounded up."""
    if slots < seeds:
        return math.lcm(slots, seeds) // seeds
    return math.ceil(slots / seeds)


def next_cells(spec: SweepSpec, model: BoundaryModel | None, fits: list[SliceFit], known: set[str], slots: int,
               rng: np.random.Generator) -> list[dict[str, Any]]:
    """The next round's cells, with the baselines they need: as many as fill the trial slots."""
    if model is None:
        return []
    cells = cells_per_round(slots, len(spec.seeds))
    return with_baselines(spec, propose(spec, model, fits, known, cells, rng), known)


# --- trial points: (cell, seed) ------------------------------------------------------------
def point_id(values: dict[str, Any]) -> str:
    """A trial's identity in the search: its cell and its seed."""
    return cell_id(values)


def _slice_counts(rows_or_points: list[dict[str, Any]], spec: SweepSpec, s: dict[str, Any]) -> dict[Any, int]:
    counts = {seed: 0 for seed in spec.seeds}
    for p in rows_or_points:
        if all(fmt(p.get(a)) == fmt(v) for a, v in s.items()) and p["seed"] in counts:
            counts[p["seed"]] += 1
    return counts


def propose_trials(spec: SweepSpec, model: BoundaryModel, fits: list[SliceFit], tried: set[str], n: int,
                   rows: list[dict[str, Any]], rng: np.random.Generator, in_doubt: float = IN_DOUBT
                   ) -> list[dict[str, Any]]:
    """Up to `n` untried trials (cell and seed) where the model is least sure of the side of
    P(bad) = 0.5, round-robin over the open slices, at most `per_round` cells' worth per slice.
    The k-th pick in a slice aims at the k-th goal quantile of its crossing; its seed is the one
    the slice has run least (of those not yet run at that x)."""
    x = spec.search.x
    values = candidate_values(spec)
    e = model.to_e(np.asarray(values, dtype=float))
    pick = rng.choice(len(model.thresholds), size=min(DRAWS, len(model.thresholds)), replace=False)
    ranked = []
    for f in fits:
        if f.settled is not None:
            continue
        thresholds = model.threshold_draws(f.slice)[pick]
        q = (thresholds[:, None] < e[None, :]).mean(axis=0)
        doubt = np.minimum(q, 1 - q)
        free = [[sd for sd in spec.seeds if point_id({**f.slice, x: v, "seed": sd}) not in tried] for v in values]
        doubt = np.where([bool(fr) for fr in free], doubt, 0.0)
        if doubt.max() >= in_doubt:
            ranked.append((float(doubt.max()), f, thresholds, doubt, free, _slice_counts(rows, spec, f.slice)))
        else:
            f.settled = f"no untried {x} in doubt (each side at least {1 - in_doubt:g} sure)"
    ranked.sort(key=lambda r: -r[0])
    goals = [0.5, 0.25, 0.75, 0.125, 0.875, 0.375, 0.625, 0.0625, 0.9375]
    out: list[dict[str, Any]] = []
    per_slice = spec.search.per_round * len(spec.seeds)
    for k in range(min(per_slice, len(goals))):
        for _, f, thresholds, doubt, free, counts in ranked:
            if len(out) >= n:
                return out
            target = np.quantile(thresholds, goals[k])
            taken = {fmt(c[x]) for c in out if all(fmt(c[a]) == fmt(v) for a, v in f.slice.items())}
            open_ = [i for i in np.flatnonzero(doubt >= in_doubt) if fmt(values[i]) not in taken]
            if not open_:
                continue
            best = min(open_, key=lambda i: (abs(e[i] - target), i))
            seed = min(free[best], key=lambda sd: (counts[sd], spec.seeds.index(sd)))
            counts[seed] += 1
            out.append({**f.slice, x: values[best], "seed": seed})
            f.proposed.append(values[best])
    return out


def with_baseline_trials(spec: SweepSpec, trials: list[dict[str, Any]], tried: set[str]) -> list[dict[str, Any]]:
    """`trials` plus every seed of each baseline cell they need that is not yet tried, baselines first."""
    out, seen = [], set(tried)
    for t in trials:
        cell = {k: v for k, v in t.items() if k != "seed"}
        base = [{**c, "seed": sd} for c in with_baselines(spec, [cell], set())[:-1] for sd in spec.seeds]
        for p in base + [t]:
            if point_id(p) not in seen:
                seen.add(point_id(p))
                out.append(p)
    return out


MIN_GAIN = 0.01  # a trial is worth running while it is expected to cut its slice's crossing variance by this fraction


def _gain(branches, p: np.ndarray, xc: np.ndarray) -> np.ndarray:
    """Expected cut in the variance of the crossing (x units) from one more trial at each (seed,
    x), averaged over the outcomes of the trials already picked this round (`branches`: their
    probabilities and the draws' weights given each combination of outcomes)."""
    total = np.zeros(p.shape[1:])
    for prob, w in branches:
        mean = w @ xc
        var = w @ xc ** 2 - mean ** 2
        after = np.zeros(p.shape[1:])
        for q in (p, 1.0 - p):
            mass = np.tensordot(w, q, axes=(0, 0))  # P(this outcome)
            with np.errstate(divide="ignore", invalid="ignore"):
                m1 = np.tensordot(w * xc, q, axes=(0, 0)) / mass
                m2 = np.tensordot(w * xc ** 2, q, axes=(0, 0)) / mass
            after += np.where(mass > 1e-12, mass * (m2 - m1 ** 2), 0.0)
        total += prob * (var - after)
    return total


def propose_informative(spec: SweepSpec, model: BoundaryModel, fits: list[SliceFit], tried: set[str], n: int,
                        rng: np.random.Generator, min_gain: float = MIN_GAIN) -> list[dict[str, Any]]:
    """Up to `n` untried trials (cell and seed), picked one at a time: each the one expected to
    narrow its slice's crossing most (the largest expected cut in its posterior variance, given
    every outcome the round's earlier picks may have), at most `per_round` cells' worth per slice.
    A slice none of whose untried trials would cut its variance by `min_gain` is settled."""
    x = spec.search.x
    axis = spec.axes[x]
    values = candidate_values(spec)
    pick = rng.choice(len(model.thresholds), size=min(DRAWS, len(model.thresholds)), replace=False)
    open_ = []
    for f in fits:
        if f.settled is not None:
            continue
        thresholds = model.threshold_draws(f.slice)[pick]
        xc = np.clip(model.to_x(thresholds), axis.low, axis.high)
        p = np.stack([model.p_bad(thresholds, values, s, pick) for s in spec.seeds], axis=1)  # (draws, seeds, x)
        free = np.array([[point_id({**f.slice, x: v, "seed": s}) not in tried for v in values] for s in spec.seeds])
        branches = [(1.0, np.full(len(pick), 1.0 / len(pick)))]
        gain = np.where(free, _gain(branches, p, xc), -np.inf)
        if not free.any() or gain.max() < min_gain * max(float(np.var(xc)), 1e-12):
            f.settled = f"no untried trial would narrow it (each cuts its variance by under {min_gain:g})"
            continue
        open_.append({"f": f, "p": p, "xc": xc, "free": free, "branches": branches, "gain": gain, "picked": 0})
    out: list[dict[str, Any]] = []
    per_slice = spec.search.per_round * len(spec.seeds)
    while len(out) < n:
        live = [o for o in open_ if o["picked"] < per_slice and np.isfinite(o["gain"]).any()]
        if not live:
            break
        best = max(live, key=lambda o: float(o["gain"].max()))
        i_seed, i_x = np.unravel_index(int(np.argmax(best["gain"])), best["gain"].shape)
        f, seed, value = best["f"], spec.seeds[i_seed], values[i_x]
        out.append({**f.slice, x: value, "seed": seed})
        f.proposed.append(value)
        best["picked"] += 1
        best["free"][i_seed, i_x] = False
        q = best["p"][:, i_seed, i_x]
        split = []
        for prob, w in best["branches"]:
            for outcome in (q, 1.0 - q):
                mass = float(w @ outcome)
                if mass > 1e-9:
                    split.append((prob * mass, w * outcome / mass))
        best["branches"] = sorted(split, key=lambda b: -b[0])[:32]
        best["gain"] = np.where(best["free"], _gain(best["branches"], best["p"], best["xc"]), -np.inf)
    return out
