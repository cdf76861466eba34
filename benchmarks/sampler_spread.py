"""Claim: with the boundary model's chain length (400 steps of burn-in, 400 kept), emcee's default
stretch move reports an x_critical interval whose width depends on the sampler's seed, and on a
table a boundary search produces it reports it wider than the converged posterior's; the
differential-evolution moves (DEMove 0.8, DESnookerMove 0.2) at the same length do not.

Evidence: one synthetic truth of `search_efficiency.py` (repetition 0, two axes), two tables:
its dense grid (every 2 epochs 0..64, 3 seeds, 297 trials) and a search-like subset (0/32/64
and 10 durations around the crossings, 117 trials). Each is fitted with the joint model by
SEEDS sampler seeds per setting: stretch 400+400 (what `minima phase` runs), DE 400+400 (what
the boundary search runs), stretch 2000+2000 (a longer chain, near convergence). Reported: the
90% interval width of the reference slice's crossing per seed, its median and its spread.

    python benchmarks/sampler_spread.py [--seeds 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from interval_coverage import emit
from search_efficiency import X, Truth

SUBSET = [0, 32, 64, 24, 26, 28, 30, 34, 36, 40, 42, 44, 46]  # what a search's trials look like
SETTINGS = {"stretch_400": ("stretch", 400, 400), "de_400": ("de", 400, 400), "stretch_2000": ("stretch", 2000, 2000)}


def widths(table, axes: list[str], sampler: str, burn: int, keep: int, seeds: int) -> list[float]:
    import sweeps.fit.boundary_model as bm
    from sweeps.fit.phase_fit import AxisScale

    saved = bm.BURN, bm.KEEP
    bm.BURN, bm.KEEP = burn, keep
    try:
        out = []
        for seed in range(seeds):
            c = bm.fit_model(table, X, axes, AxisScale(False), seed, sampler).crossing({})
            out.append(round(c.ci_high - c.ci_low, 3))
        return out
    finally:
        bm.BURN, bm.KEEP = saved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    truth = Truth("2", 0)
    grid = truth.grid()
    tables = {"dense_grid": grid, "search_like": grid[grid[X].isin(SUBSET)]}
    results = {}
    for name, table in tables.items():
        for label, (sampler, burn, keep) in SETTINGS.items():
            started = time.perf_counter()
            w = widths(table, list(truth.axes), sampler, burn, keep, args.seeds)
            results[f"{name}/{label}"] = {"trials": len(table), "widths": w, "median": round(float(np.median(w)), 3),
                                          "min": min(w), "max": max(w),
                                          "cv": round(float(np.std(w) / np.mean(w)), 3),
                                          "s_per_fit": round((time.perf_counter() - started) / args.seeds, 2)}
    import emcee

    from trainables.provenance import git_commit

    report = {"benchmark": "sampler_spread", "commit": git_commit(), "truth_x_critical": truth.x_critical({}),
              "seeds": args.seeds, "results": results, "emcee": emcee.__version__, "python": platform.python_version()}
    emit(report, args.out)


if __name__ == "__main__":
    main()
