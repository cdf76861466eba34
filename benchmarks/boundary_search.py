"""Claim: the boundary search locates every slice's x_critical as precisely as a grid every 2 epochs,
with at most 0.15 of that grid's trials, for pretraining x weight decay and for pretraining x
weight decay x augmentation (additive input noise).

Evidence, in one run on local Ray (real trials, no MLflow): the mnist1d phase sweep of the demo
(MLP 256x2, random-label pretraining, plain SGD to 100% train accuracy), every pretraining
duration 0..64 in steps of 2 x weight decay x input-noise augmentation (`aug_noise` 0 and 0.2:
`augmentation: shift` keeps the net from fitting within the 200-epoch cap), 3 seeds, run as a grid with
shared pretraining (the grid at its cheapest). From it:
1. each grid's per-slice boundary, as `minima phase` fits it (the two-axis case is the grid's
   half without noise);
2. the boundary search over the same range (coarse grid 0/32/64, then rounds of the joint model),
   replayed on the grid's results: each trial the search asks for is looked up in the grid (a
   trial's result does not depend on what else runs: packed and shared trials equal their lone
   runs bit for bit, tested). The search's candidates are the grid's durations (even epochs),
   not every integer, so that each has a result; 2 trial slots, as on this machine. Two
   strategies side by side: the search's own (`default`: single trials, the most informative)
   and `cells` (every seed of the duration most in doubt, the coarse grid with every seed).
For each case and strategy: the first round at which every slice's 90% interval is at most as
wide as the grid's, the trials it took, the ratio to the grid's count, and the same against the
grid fitted with the joint model; also with 10% slack on each width (a slice whose interval is
set by seed noise cannot narrow without more seeds). A grid's width is the median over
GRID_FITS fits with different sampler seeds (one fit's interval varies with the seed). Then the
round from which every slice's estimate stays inside the grid's 90% interval, and per round the
widest slice's interval as a multiple of the grid's.

    python benchmarks/boundary_search.py [--high 64] [--step 2] [--seeds 3] [--grid-trials FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.export import export_sweep
from analysis.phase import fit_boundaries, fit_effects
from sweeps.search import acquisition
from sweeps.search.boundary import Strategy
from sweeps.search.boundary_searcher import BoundarySearcher, run_without_ray
from sweeps.fit.phase_fit import AxisScale, fmt, label_phases
from sweeps.design.spec import parse_sweep
from sweeps.storage.sweep_files import experiment_path

BASE = {"dataset": "mnist1d", "model": "mlp", "width": 256, "depth": 2, "label_noise": 1.0, "pretrain_lr": 0.05,
        "pretrain_momentum": 0.9, "lr": 0.1, "momentum": 0.0, "batch_size": 64, "epochs": 200,
        "stop_at_train_acc": 1.0, "flatness_samples": 0}
DELTA = 0.05
WEIGHT_DECAYS = [0.0, 3e-4, 1e-3]
AUG_NOISES = [0.0, 0.2]
SLOTS = 2
X = "pretrain_epochs"
GRID_FITS = 3  # a grid's reference width: the median over this many sampler seeds
STRATEGIES = {"default": Strategy(), "cells": Strategy.CELLS}


def run_grid(args, root: Path) -> pd.DataFrame:
    from sweeps.cluster.ray_cluster import init_ray
    from sweeps.run.runner import run_sweep

    init_ray()
    spec = parse_sweep({
        "name": "dense", "base": BASE,
        "axes": {X: list(range(0, args.high + 1, args.step)), "weight_decay": WEIGHT_DECAYS,
                 "aug_noise": AUG_NOISES},
        "seeds": args.seeds, "search": "grid", "resources": {"cpu": 1}, "checkpoint_every": 50,
        "storage": str(root / "results"), "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
    }, "benchmark")
    started = time.perf_counter()
    run_sweep(spec, log_to_mlflow=False, on_notice=lambda m: None)
    args.grid_wall_s = round(time.perf_counter() - started, 1)
    export_sweep(experiment_path(spec), root / "export", spec.name)
    return pd.read_parquet(root / "export" / "trials.parquet")


def width(b: dict) -> float | None:
    """An interval's width (a grid's: the median over its fits), infinite when open."""
    if b["x_critical"] is None:
        return None
    if "width" in b:
        return b["width"]
    return (b["ci_high"] if b["ci_high"] is not None else np.inf) - (b["ci_low"] if b["ci_low"] is not None else -np.inf)


def key(values: dict, axes: list[str]) -> str:
    return "|".join(fmt(values[a]) for a in axes)


def grid_fits(trials: pd.DataFrame, axes: list[str]) -> tuple[dict, dict]:
    """Per slice: the per-slice boundary, and the joint model's crossing for that slice; the
    estimate and interval of the first sampler seed, the width the median over GRID_FITS seeds."""
    labelled = label_phases(trials, DELTA)
    scale = AxisScale(False)  # the search's declared scale for 0..64
    y, by = axes[0], axes[1:]
    runs = [{key({y: b.y, **b.by}, axes): b.as_dict() for b in fit_boundaries(labelled, X, y, by, seed, scale=scale)}
            for seed in range(GRID_FITS)]
    models = [fit_effects(labelled, X, scale, seed)[1] for seed in range(GRID_FITS)]
    per_slice, joint = runs[0], {}
    for k, b in per_slice.items():
        combo = dict(zip(axes, [b["y"], *b["by"].values()]))
        crossings = [{"x_critical": c.x_critical, "ci_low": c.ci_low, "ci_high": c.ci_high}
                     for c in (m.crossing(combo) for m in models)]
        joint[k] = {**crossings[0], "widths": [width(c) for c in crossings]}
        b["widths"] = [width(run[k]) for run in runs]
    for b in [*per_slice.values(), *joint.values()]:
        if b["x_critical"] is not None and None not in b["widths"]:
            b["width"] = float(np.median(b["widths"]))
    return per_slice, joint


def located(fits: list[dict], grid: dict, axes: list[str], slack: float = 1.0) -> bool:
    """Every slice's interval at most `slack` times as wide as the grid's, or both without a crossing."""
    for fit in fits:
        g = grid[key(fit["slice"], axes)]
        if (g["x_critical"] is None) != (fit["x_critical"] is None):
            return False
        if g["x_critical"] is not None and width(fit) > slack * width(g) + 1e-9:
            return False
    return True


def inside(fits: list[dict], grid: dict, axes: list[str]) -> bool:
    """Every slice's estimate inside the grid's 90% interval (both without a crossing counts)."""
    for fit in fits:
        g = grid[key(fit["slice"], axes)]
        if (g["x_critical"] is None) != (fit["x_critical"] is None):
            return False
        if g["x_critical"] is not None and not ((g["ci_low"] is None or g["ci_low"] <= fit["x_critical"]) and
                                                (g["ci_high"] is None or fit["x_critical"] <= g["ci_high"])):
            return False
    return True


def widest_ratio(fits: list[dict], grid: dict, axes: list[str]) -> float | None:
    """The largest ratio of a slice's interval width to the grid's (None while one lacks a crossing)."""
    ratios = []
    for fit in fits:
        g = grid[key(fit["slice"], axes)]
        if fit["x_critical"] is None or g["x_critical"] is None:
            return None
        ratios.append(width(fit) / width(g))
    return round(float(max(ratios)), 3) if ratios else None


def replay_search(trials: pd.DataFrame, axes: dict[str, list], args, ci_width: float, budget: int,
                  strategy: Strategy) -> dict:
    """The boundary search driven with the grid's own results."""
    results = {(int(r[X]), *(fmt(r[a]) for a in axes), int(r["seed"])): r for r in trials.to_dict("records")}
    spec = parse_sweep({"name": "replay", "base": BASE, "axes": {X: {"low": 0, "high": args.high, "count": 3}, **axes},
                        "seeds": args.seeds,
                        "search": {"kind": "boundary", "max_trials": budget, "ci_width": ci_width, "delta": DELTA}})
    grid_values = list(range(0, args.high + 1, args.step))
    original = acquisition.candidate_values
    acquisition.candidate_values = lambda s: grid_values  # only durations the grid ran have results
    try:
        searcher = BoundarySearcher(spec, on_notice=lambda m: None, slots=SLOTS, strategy=strategy)

        def result_of(values: dict) -> dict:
            r = results[(int(values[X]), *(fmt(values[a]) for a in axes), int(values["seed"]))]
            return {k: r[k] for k in ("status", "reached_global_min", "test_acc")}

        issued = run_without_ray(searcher, result_of)
    finally:
        acquisition.candidate_values = original
    return {"rounds": searcher.rounds, "issued": issued}


def compare(name: str, trials: pd.DataFrame, axes: dict[str, list], args) -> dict:
    names = list(axes)
    grid, joint = grid_fits(trials, names)
    widths = [width(b) for b in grid.values() if width(b) is not None]
    out = {"case": name, "grid_trials": int(len(trials)), "search": {}}
    for label, reference in (("grid_per_slice", grid), ("grid_joint", joint)):
        out[label] = {"median_width": float(np.median([w for w in (width(b) for b in reference.values()) if w is not None
                                                       and np.isfinite(w)] or [np.nan]))}
    for strategy_name, strategy in STRATEGIES.items():
        started = time.perf_counter()
        search = replay_search(trials, axes, args, min(widths) if widths else 1.0, len(trials), strategy)
        out["search"][strategy_name] = replay_summary(search, grid, joint, names, len(trials),
                                                      round(time.perf_counter() - started, 1))
    out["grid_per_slice_boundaries"] = {k: {"x_critical": b["x_critical"], "ci": [b["ci_low"], b["ci_high"]],
                                            "widths": b["widths"]} for k, b in grid.items()}
    return out


def replay_summary(search: dict, grid: dict, joint: dict, names: list[str], grid_trials: int, fit_s: float) -> dict:
    final = search["rounds"][-1]["fits"]
    out = {"search_trials_run": search["issued"], "search_rounds": len(search["rounds"]), "search_fit_s": fit_s}
    for label, reference in (("grid_per_slice", grid), ("grid_joint", joint)):
        out[label] = {}
        for slack in (1.0, 1.1):
            needed = next((r["trials_done"] for r in search["rounds"]
                           if r["fits"] and located(r["fits"], reference, names, slack)), None)
            out[label][f"width_at_most_{slack:g}x"] = {
                "search_trials_to_match": needed, "ratio": None if needed is None else round(needed / grid_trials, 3)}
    out["rounds"] = [{"trials_done": r["trials_done"], "widest_ratio_to_grid": widest_ratio(r["fits"], grid, names),
                      "estimates_inside_grid_intervals": inside(r["fits"], grid, names)}
                     for r in search["rounds"] if r["fits"]]
    # from which round on every later round's estimates stay inside the grid's intervals
    settled = [r["trials_done"] for i, r in enumerate(out["rounds"])
               if all(later["estimates_inside_grid_intervals"] for later in out["rounds"][i:])]
    out["estimates_inside_grid_intervals_from_then_on"] = {
        "search_trials_to_match": settled[0] if settled else None,
        "ratio": round(settled[0] / grid_trials, 3) if settled else None}
    out["search_final"] = {key(f["slice"], names): {"x_critical": f["x_critical"], "ci": [f["ci_low"], f["ci_high"]],
                                                    "settled": f["settled"]} for f in final}
    out["search_estimate_inside_grid_interval"] = {
        k: (None if f["x_critical"] is None or grid[k]["x_critical"] is None else
            bool((grid[k]["ci_low"] is None or grid[k]["ci_low"] <= f["x_critical"]) and
                 (grid[k]["ci_high"] is None or f["x_critical"] <= grid[k]["ci_high"])))
        for k, f in ((key(f["slice"], names), f) for f in final)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--high", type=int, default=64, help="longest pretraining, epochs")
    parser.add_argument("--step", type=int, default=2, help="the grid's spacing, epochs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--grid-trials", help="a trials.parquet of this grid already run (skips running it)")
    parser.add_argument("--keep", help="run the grid into this folder and keep it (its export is DIR/export)")
    args = parser.parse_args()
    args.grid_wall_s = None
    if args.grid_trials:
        trials = pd.read_parquet(args.grid_trials)
    else:
        root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="minima-boundary-"))
        try:
            trials = run_grid(args, root)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)  # the grid leaves hundreds of MB of checkpoints
    trials = trials[trials[X] <= args.high]
    cases = [compare("pretraining x weight decay (no input noise)", trials[trials["aug_noise"] == 0.0],
                     {"weight_decay": WEIGHT_DECAYS}, args),
             compare("pretraining x weight decay x augmentation", trials,
                     {"weight_decay": WEIGHT_DECAYS, "aug_noise": AUG_NOISES}, args)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    print(json.dumps({"benchmark": "boundary_search", "date": time.strftime("%Y-%m-%d"), "commit": commit or None,
                      "grid_trials_from": args.grid_trials, "dataset": "mnist1d", "seeds": args.seeds, "delta": DELTA,
                      "grid_every_epochs": args.step, "high": args.high, "slots": SLOTS, "grid_fits": GRID_FITS,
                      "strategies": {n: st.as_dict() for n, st in STRATEGIES.items()},
                      "goal": "search trials <= 0.15 of the grid's for every slice's interval as narrow",
                      "grid_wall_s": args.grid_wall_s, "cases": cases}, indent=1, default=str))


if __name__ == "__main__":
    main()
