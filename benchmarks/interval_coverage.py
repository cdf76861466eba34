"""Claim: every 90% interval the tool reports covers the true boundary between 85% and 97% of the
time, on the designs it produces.

Evidence: synthetic sweeps whose boundaries are known. Each repetition draws a truth: the critical
pretraining duration at every axis's reference level (log-uniform in 8..40 epochs), a factor per
level of each other axis by which it moves that duration (the third axis of the four-axis designs
moves nothing), a transition steepness and a seed effect. A trial is bad when
`g * (log1p(x) - log1p(x_critical(levels))) + a_seed + e > 0`, e ~ N(0, 1), a_seed ~ N(0, tau)
shared by every trial of that seed (its network and data order), so P(bad) = 0.5 exactly at
x_critical. Factors are log-uniform in 1/2.5..2.5 (weight decay 1e-3 moved the demo's boundary
by about 2.3). Then the designs are run through the fits `minima phase` uses:
- per-slice `boundary` intervals (each slice fixes every axis);
- the joint model's `ci` (each level, the others at reference) and `shift_ci` (against the
  reference level, whose true ratio is the level's factor);
- the boundary search's final per-slice intervals (the Tune searcher driven with synthetic trials).
Designs: a demo-like coarse grid (0/10/30/100 epochs) and a dense one (every 2 epochs up to 64),
with two axes (pretraining x weight decay) and four (x augmentation x clipping), 3 seeds a cell.
A truth whose crossing falls outside the swept range is redrawn: coverage is of crossings inside.
An interval's open side (null bound) covers everything on that side; an x_critical of null where
the truth lies inside the range counts as a miss. Widths are medians over closed intervals, in epochs.

    python benchmarks/interval_coverage.py [--reps 200] [--workers 2] [--designs ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import time
import zlib
from typing import Any

import numpy as np
import pandas as pd

X = "pretrain_epochs"
COARSE = [0, 10, 30, 100]
DENSE = list(range(0, 65, 2))
SEEDS = 3
AXES2 = {"weight_decay": [0.0, 3e-4, 1e-3]}
AXES4 = {"weight_decay": [0.0, 3e-4, 1e-3], "augmentation": ["none", "shift"], "clip_norm": [None, 1.0, 5.0]}
DESIGNS = {"coarse-2": (COARSE, AXES2), "dense-2": (DENSE, AXES2), "coarse-4": (COARSE, AXES4),
           "dense-4": (DENSE, AXES4), "search-2": (None, AXES2)}
FACTOR = 2.5  # a level moves the crossing by a factor log-uniform in 1/2.5..2.5 (clip_norm: 1)
SLICES_PER_REP = 3  # per-slice fits checked per repetition (a four-axis design has 18 slices)
SEARCH = {"low": 0, "high": 64, "count": 3, "max_trials": 150, "ci_width": 4}


def draw_truth(rng: np.random.Generator, axes: dict[str, list], x_max: float) -> dict[str, Any]:
    """The reference crossing, a factor per level (1 at the reference; clip_norm: 1 throughout),
    steepness g (per unit of log1p(epochs)) and the seed effect's sd; every crossing inside the range."""
    while True:
        x0 = float(np.exp(rng.uniform(np.log(8), np.log(40))))
        factors = {a: [1.0] + [1.0 if a == "clip_norm" else float(np.exp(rng.uniform(-1, 1) * np.log(FACTOR)))
                               for _ in levels[1:]] for a, levels in axes.items()}
        top = x0 * np.prod([max(f) for f in factors.values()])
        bottom = x0 * np.prod([min(f) for f in factors.values()])
        if top < 0.85 * x_max and bottom > 3:
            return {"x0": x0, "factors": factors, "g": float(np.exp(rng.uniform(np.log(4), np.log(40)))),
                    "tau": float(rng.uniform(0, 1.5))}


def critical(truth: dict, axes: dict[str, list], combo: dict[str, Any]) -> float:
    x = truth["x0"]
    for a, levels in axes.items():
        if a in combo:
            x *= truth["factors"][a][_index(levels, combo[a])]
    return x


def _index(levels: list, value) -> int:
    from sweeps.fit.phase_fit import fmt

    return [fmt(v) for v in levels].index(fmt(value))


def is_bad(truth: dict, axes: dict, combo: dict, x: float, seed_effect: float, rng: np.random.Generator) -> bool:
    t_c = np.log1p(critical(truth, axes, combo))
    return bool(truth["g"] * (np.log1p(x) - t_c) + seed_effect + rng.standard_normal() > 0)


def grid_table(truth: dict, xs: list, axes: dict, rng: np.random.Generator) -> pd.DataFrame:
    import itertools

    seed_effects = rng.normal(0, truth["tau"], SEEDS)
    rows = []
    for combo in itertools.product(*axes.values()):
        levels = dict(zip(axes, combo))
        for x in xs:
            for s in range(SEEDS):
                bad = is_bad(truth, axes, levels, x, seed_effects[s], rng)
                rows.append({**levels, X: x, "seed": s, "phase": "bad" if bad else "good"})
    return pd.DataFrame(rows)


def covers(low, high, truth: float) -> bool:
    return (low is None or low <= truth) and (high is None or truth <= high)


def record(hit: bool, low, high, found: bool) -> dict:
    return {"hit": hit, "width": None if (low is None or high is None or not found) else high - low,
            "open": found and (low is None or high is None), "none": not found}


def per_slice(truth, table, axes, scale, rng) -> list[dict]:
    from sweeps.fit.boundary_model import fit_boundary

    combos = table[list(axes)].drop_duplicates().to_dict("records")
    out = []
    for i in rng.choice(len(combos), size=min(SLICES_PER_REP, len(combos)), replace=False):
        combo = combos[i]
        mask = np.logical_and.reduce([table[a].map(str) == str(v) for a, v in combo.items()])
        b = fit_boundary(table[mask], X, scale, None, {}, seed=int(rng.integers(2**31)))
        found = b.x_critical is not None
        out.append(record(found and covers(b.ci_low, b.ci_high, critical(truth, axes, combo)), b.ci_low, b.ci_high,
                          found))
    return out


def joint(truth, table, axes, scale, rng) -> tuple[list[dict], list[dict]]:
    from sweeps.fit.boundary_model import effects, fit_model

    model = fit_model(table, X, list(axes), scale, seed=int(rng.integers(2**31)))
    cis, shifts = [], []
    for e in effects(model)["effects"]:
        x_true = critical(truth, axes, {e["axis"]: e["value"]})
        found = e["x_critical"] is not None
        low, high = e["ci"] if found else (None, None)
        cis.append(record(found and covers(low, high, x_true), low, high, found))
        if not e.get("reference"):
            f_true = truth["factors"][e["axis"]][_index(axes[e["axis"]], e["value"])]
            s_low, s_high = e["shift_ci"]
            shifts.append({"hit": covers(s_low, s_high, f_true),
                           "width": None if None in (s_low, s_high) else s_high - s_low,
                           "open": None in (s_low, s_high), "none": False, "null_axis": e["axis"] == "clip_norm"})
    return cis, shifts


def search(truth, axes, rng) -> tuple[list[dict], int]:
    """The boundary search driven with synthetic trials; its last round's per-slice intervals."""
    from sweeps.search.boundary_searcher import BoundarySearcher, run_without_ray
    from sweeps.design.spec import parse_sweep

    spec = parse_sweep({
        "name": "coverage", "base": {"dataset": "mnist1d", "model": "mlp", "width": 16, "depth": 1, "epochs": 3},
        "axes": {X: {"low": SEARCH["low"], "high": SEARCH["high"], "count": SEARCH["count"]}, **axes},
        "seeds": SEEDS, "search": {"kind": "boundary", "max_trials": SEARCH["max_trials"],
                                   "ci_width": SEARCH["ci_width"], "seed": int(rng.integers(2**20))}})
    searcher = BoundarySearcher(spec, on_notice=lambda m: None)
    seed_effects = rng.normal(0, truth["tau"], SEEDS)

    def result_of(values: dict) -> dict:
        bad = is_bad(truth, axes, {a: values[a] for a in axes}, values[X], seed_effects[values["seed"]], rng)
        return {"status": "ok", "reached_global_min": True, "test_acc": 0.9 - (0.1 if bad else 0.0)}

    issued = run_without_ray(searcher, result_of)
    out = []
    for fit in searcher.rounds[-1]["fits"]:
        found = fit["x_critical"] is not None
        out.append(record(found and covers(fit["ci_low"], fit["ci_high"], critical(truth, axes, fit["slice"])),
                          fit["ci_low"], fit["ci_high"], found))
    return out, issued


def one_rep(job: tuple[str, int]) -> dict:
    from sweeps.fit.phase_fit import AxisScale

    design, rep = job
    xs, axes = DESIGNS[design]
    rng = np.random.default_rng([zlib.crc32(design.encode()), rep])
    truth = draw_truth(rng, axes, SEARCH["high"] if xs is None else max(xs))
    if xs is None:
        intervals, trials = search(truth, axes, rng)
        return {"design": design, "search": intervals, "trials": trials}
    table = grid_table(truth, xs, axes, rng)
    scale = AxisScale.of(np.asarray(xs, dtype=float))  # as `minima phase` picks it from the values
    cis, shifts = joint(truth, table, axes, scale, rng)
    return {"design": design, "slice": per_slice(truth, table, axes, scale, rng), "joint_ci": cis,
            "joint_shift_ci": shifts, "trials": len(table)}


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% interval of a coverage estimated from k hits in n."""
    if n == 0:
        return [math.nan, math.nan]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 3), round(centre + half, 3)]


def summarize(records: list[dict]) -> dict:
    hits = sum(r["hit"] for r in records)
    widths = [r["width"] for r in records if r["width"] is not None]
    return {"n": len(records), "coverage": round(hits / len(records), 3) if records else None,
            "coverage_95ci": wilson(hits, len(records)),
            "median_width": round(float(np.median(widths)), 3) if widths else None,
            "open": round(float(np.mean([r["open"] for r in records])), 3) if records else None,
            "none_though_inside": round(float(np.mean([r["none"] for r in records])), 3) if records else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    started = time.perf_counter()
    jobs = [(d, r) for d in args.designs for r in range(args.reps)]
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(one_rep, jobs, chunksize=4)
    table = {}
    for design in args.designs:
        reps = [r for r in results if r["design"] == design]
        methods = {m: [x for r in reps for x in r.get(m, [])] for m in ("slice", "joint_ci", "joint_shift_ci", "search")}
        entry = {m: summarize(v) for m, v in methods.items() if v}
        null_shifts = [x for x in methods["joint_shift_ci"] if x.get("null_axis")]
        if null_shifts:
            entry["joint_shift_ci_null_axis"] = summarize(null_shifts)
        entry["trials_per_rep"] = round(float(np.mean([r["trials"] for r in reps])), 1)
        table[design] = entry
    import emcee

    from trainables.provenance import git_commit

    report = {"benchmark": "interval_coverage", "commit": git_commit(), "goal": "coverage of each 90% interval in [0.85, 0.97]",
              "reps": args.reps, "seeds_per_cell": SEEDS, "designs": table,
              "design_axes": {d: {"x": xs if xs is not None else SEARCH, "axes": {a: [str(v) for v in lv] for a, lv in ax.items()}}
                              for d, (xs, ax) in DESIGNS.items() if d in args.designs},
              "wall_s": round(time.perf_counter() - started, 1), "workers": args.workers,
              "emcee": emcee.__version__, "python": platform.python_version()}
    emit(report, args.out)


def emit(report: dict, out: str | None) -> None:
    """Print the report as JSON; with `out`, write it there too."""
    text = json.dumps(report, indent=1)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
