"""The cells a boundary search can run, from its sweep alone (no fit, no Ray): the coarse grid of
the x axis in every slice with the baselines it needs, and the finer x values the search may
refine to.

It reads a validated sweep spec's attributes and imports no sweep module back: `sweeps.design.spec`
checks with it that a boundary search's budget covers its coarse grid.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from trainables.config import INT_FIELDS

from ..fit.phase_fit import BASELINE_AXIS, fmt
from .keys import keys_of

REFINE = 16  # candidate x values of a float axis: the coarse grid, 16 times finer
COARSE_SEEDS = 1  # seeds a coarse-grid cell runs, unless it is a baseline (every seed: its mean is the labels' reference)
MAX_INT_CANDIDATES = 4096  # an integer axis offers every integer up to this span


def candidate_values(spec) -> list[Any]:
    """Every x the search may propose: every integer of an integer axis (epochs: a grid cannot
    be finer), else the coarse grid refined REFINE times."""
    x = spec.search.x
    axis = spec.axes[x]
    if x in INT_FIELDS and axis.high - axis.low <= MAX_INT_CANDIDATES:
        return list(range(int(round(axis.low)), int(round(axis.high)) + 1))
    points = (np.geomspace if axis.scale == "log" else np.linspace)(axis.low, axis.high, (axis.count - 1) * REFINE + 1)
    if x in INT_FIELDS:
        return sorted({int(round(p)) for p in points})
    return [float(f"{p:.6g}") for p in points]


def slices(spec) -> list[dict[str, Any]]:
    """Every combination of the axes other than x: one boundary each."""
    others = [n for n in spec.axes if n != spec.search.x]
    return [dict(zip(others, combo)) for combo in itertools.product(*(spec.axis_values(n) for n in others))]


def baseline_of(spec, cell: dict[str, Any]) -> dict[str, Any]:
    """The cell whose trials give `cell`'s baseline accuracy: the same config, not pretrained."""
    return {**cell, BASELINE_AXIS: 0}


def _pretrain_epochs(spec, cell: dict[str, Any]) -> int:
    return cell.get(BASELINE_AXIS, spec.base.get(BASELINE_AXIS, 0))


def with_baselines(spec, cells: list[dict[str, Any]], known: set[str]) -> list[dict[str, Any]]:
    """`cells` plus the baseline cells they need that are neither known nor already in the list."""
    out, seen = [], set(known)
    for cell in cells:
        for c in ([baseline_of(spec, cell)] if _pretrain_epochs(spec, cell) != 0 else []) + [cell]:
            if cell_id(c) not in seen:
                seen.add(cell_id(c))
                out.append(c)
    return out


def cell_id(cell: dict[str, Any]) -> str:
    """A cell's identity whatever its key order and null values (clip_norm: null)."""
    return "|".join(f"{k}={fmt(v)}" for k, v in sorted(cell.items()))


def trial_id(cell: dict[str, Any], seed) -> str:
    """One trial of a cell: `<cell id>#<seed>`."""
    return f"{cell_id(cell)}#{fmt(seed)}"


def is_baseline(spec, cell: dict[str, Any]) -> bool:
    return _pretrain_epochs(spec, cell) == 0


def coarse_cells(spec) -> list[dict[str, Any]]:
    x = spec.search.x
    cells = [{**s, x: v} for s in slices(spec) for v in spec.axis_values(x)]
    return with_baselines(spec, cells, set())


def coarse_grid(spec, seeds_per_cell: int | None = COARSE_SEEDS) -> list[dict[str, Any]]:
    """The coarse grid's trials (cell and seed): every seed of a baseline cell, `seeds_per_cell` of
    every other (None: every seed), taken in turn so that every seed runs."""
    seeds = spec.seeds
    m = len(seeds) if seeds_per_cell is None else min(seeds_per_cell, len(seeds))
    out, turn = [], 0
    for cell in coarse_cells(spec):
        if is_baseline(spec, cell) or m == len(seeds):
            out += [{**cell, "seed": s} for s in seeds]
        else:
            out += [{**cell, "seed": seeds[(turn + j) % len(seeds)]} for j in range(m)]
            turn += m
    return out


def coarse_trials(spec) -> int:
    return len(coarse_grid(spec))


def search_cell(spec, values: dict[str, Any]) -> dict[str, Any] | None:
    """The cell of the search that a stored trial with config `values` is (the search would run
    exactly that config there), or None: a grid's trials that a refining search takes as its own."""
    x = spec.search.x
    cell = {name: values.get(name) for name in spec.axes}
    if values.get("seed") not in spec.seeds or cell[x] not in candidate_values(spec):
        return None
    if {n: v for n, v in cell.items() if n != x} not in slices(spec):
        return None
    own = {**spec.base, **cell, "seed": values["seed"]}
    return cell if keys_of(own).trial == keys_of(values).trial else None
