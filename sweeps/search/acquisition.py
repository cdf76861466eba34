"""Which trials a boundary search runs next, given one fit of the boundary model: two rules.

- `informative_trials` (the default): single trials (slice, x, seed), each the one expected to
  narrow its slice's crossing most: the largest expected cut in the posterior variance of the
  crossing (in x units) that its outcome brings, computed by reweighting the posterior draws with
  the trial's P(bad) under each draw (its seed's own offset included). A round's picks are made
  one at a time, each averaged over every outcome the round's earlier picks in that slice may
  have, so a round does not spend two trials on what one would show. Slices compete for picks by
  that cut, so the widest slices get the most.
- `straddle_cells`: whole cells (slice, x), every seed, where the model is least sure which side of
  P(bad) = 0.5 the cell lies on: min(q, 1 - q), q the posterior chance that the crossing is below x
  (the straddle of a level set); the k-th pick in a slice aims at the k-th of a set of quantiles
  of its crossing.

`benchmarks/search_efficiency.py` measures both against a dense grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..design.boundary_grid import candidate_values, cell_id, trial_id
from ..fit.boundary_model import BoundaryModel
from ..fit.phase_fit import fmt

IN_DOUBT = 0.05  # straddle: a cell is worth running while the model gives each side at least this chance
MIN_GAIN = 0.01  # information: a trial is worth running while it is expected to cut its slice's variance by this fraction
DRAWS = 2000  # posterior draws that score the candidates
MAX_BRANCHES = 32  # outcome combinations of a slice's earlier picks in a round that are kept (most likely first)
GOALS = [0.5, 0.25, 0.75, 0.125, 0.875, 0.375, 0.625]  # straddle: the quantile the k-th pick in a slice aims at


def _draws(model: BoundaryModel, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(len(model.thresholds), size=min(DRAWS, len(model.thresholds)), replace=False)


def _open(model: BoundaryModel, fits: list, pick: np.ndarray):
    """The slices not yet settled, each with its crossing's posterior draws at `pick`."""
    for f in fits:
        if f.settled is None:
            yield f, model.threshold_draws(f.slice)[pick]


def _in(cell: dict[str, Any], s: dict[str, Any]) -> bool:
    return all(fmt(cell[a]) == fmt(v) for a, v in s.items())


def straddle_cells(spec, model: BoundaryModel, fits: list, known: set[str], cells: int,
                   rng: np.random.Generator) -> list[dict[str, Any]]:
    """Up to `cells` untried cells (`known`: cell ids) where the model is least sure of the side of
    P(bad) = 0.5, round-robin over the open slices (most doubtful first), at most `per_round` per
    slice. A slice with no untried x in doubt is settled."""
    x = spec.search.x
    values = candidate_values(spec)
    e = model.to_e(np.asarray(values, dtype=float))
    pick = _draws(model, rng)
    ranked = []
    for f, thresholds in _open(model, fits, pick):
        q = (thresholds[:, None] < e[None, :]).mean(axis=0)  # P(the crossing is below x)
        untried = np.array([cell_id({**f.slice, x: v}) not in known for v in values])
        doubt = np.where(untried, np.minimum(q, 1 - q), 0.0)
        if doubt.max() >= IN_DOUBT:
            ranked.append((float(doubt.max()), f, thresholds, doubt))
        else:
            f.settled = f"no untried {x} in doubt (each side at least {1 - IN_DOUBT:g} sure)"
    ranked.sort(key=lambda r: -r[0])
    out: list[dict[str, Any]] = []
    for goal in GOALS[: spec.search.per_round]:
        for _, f, thresholds, doubt in ranked:
            if len(out) >= cells:
                return out
            taken = {fmt(c[x]) for c in out if _in(c, f.slice)}
            open_ = [i for i in np.flatnonzero(doubt >= IN_DOUBT) if fmt(values[i]) not in taken]
            if not open_:
                continue
            target = np.quantile(thresholds, goal)
            best = min(open_, key=lambda i: (abs(e[i] - target), i))
            out.append({**f.slice, x: values[best]})
            f.proposed.append(values[best])
    return out


def variance_cut(branches: list[tuple[float, np.ndarray]], p: np.ndarray, xc: np.ndarray) -> np.ndarray:
    """The expected cut in the variance of the crossing `xc` (draws,) from one more trial at each
    (seed, x), whose P(bad) per draw is `p` (draws, seeds, x); averaged over `branches`, the
    outcomes of the trials already picked: (probability, the draws' weights given them)."""
    total = np.zeros(p.shape[1:])
    for prob, w in branches:
        var = w @ xc ** 2 - (w @ xc) ** 2
        after = np.zeros(p.shape[1:])
        for outcome in (p, 1.0 - p):
            mass = np.tensordot(w, outcome, axes=(0, 0))  # P(this outcome)
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = np.tensordot(w * xc, outcome, axes=(0, 0)) / mass
                square = np.tensordot(w * xc ** 2, outcome, axes=(0, 0)) / mass
            after += np.where(mass > 1e-12, mass * (square - mean ** 2), 0.0)
        total += prob * (var - after)
    return total


class _SliceChoice:
    """One open slice's candidates in a round: their P(bad) per draw and what each would cut."""

    def __init__(self, f, p: np.ndarray, xc: np.ndarray, free: np.ndarray):
        self.f, self.p, self.xc, self.free = f, p, xc, free
        self.branches = [(1.0, np.full(len(xc), 1.0 / len(xc)))]
        self.picked = 0
        self.cut = np.where(free, variance_cut(self.branches, p, xc), -np.inf)

    def take(self, i_seed: int, i_x: int) -> None:
        """Pick a candidate: split every branch on its two outcomes, and score the rest again."""
        self.picked += 1
        self.free[i_seed, i_x] = False
        q = self.p[:, i_seed, i_x]
        split = [(prob * mass, w * outcome / mass) for prob, w in self.branches for outcome in (q, 1.0 - q)
                 if (mass := float(w @ outcome)) > 1e-9]
        self.branches = sorted(split, key=lambda b: -b[0])[:MAX_BRANCHES]
        self.cut = np.where(self.free, variance_cut(self.branches, self.p, self.xc), -np.inf)


def informative_trials(spec, model: BoundaryModel, fits: list, tried: set[str], n: int,
                       rng: np.random.Generator) -> list[dict[str, Any]]:
    """Up to `n` untried trials (`tried`: trial ids, cell and seed), each the one expected to cut
    its slice's crossing variance most, at most `per_round` cells' worth (x seeds) per slice. A
    slice none of whose untried trials would cut its variance by MIN_GAIN is settled."""
    x, seeds = spec.search.x, spec.seeds
    axis = spec.axes[x]
    values = candidate_values(spec)
    pick = _draws(model, rng)
    choices = []
    for f, thresholds in _open(model, fits, pick):
        xc = np.clip(model.to_x(thresholds), axis.low, axis.high)  # past the range: at its edge
        p = np.stack([model.p_bad(thresholds, values, s, pick) for s in seeds], axis=1)  # (draws, seeds, x)
        free = np.array([[trial_id({**f.slice, x: v}, s) not in tried for v in values] for s in seeds])
        choice = _SliceChoice(f, p, xc, free)
        if not free.any() or choice.cut.max() < MIN_GAIN * max(float(np.var(xc)), 1e-12):
            f.settled = f"no untried trial would narrow it (none cuts its variance by {MIN_GAIN:g})"
            continue
        choices.append(choice)
    out: list[dict[str, Any]] = []
    per_slice = spec.search.per_round * len(seeds)
    while len(out) < n:
        live = [c for c in choices if c.picked < per_slice and c.free.any()]
        if not live:
            break
        best = max(live, key=lambda c: float(c.cut.max()))
        i_seed, i_x = np.unravel_index(int(np.argmax(best.cut)), best.cut.shape)
        out.append({**best.f.slice, x: values[i_x], "seed": seeds[i_seed]})
        best.f.proposed.append(values[i_x])
        best.take(i_seed, i_x)
    return out
