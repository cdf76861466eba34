"""Claim: an adaptive boundary search locates every slice's x_critical as precisely as a dense
grid does with at most a third of the grid's trials.

Evidence, in one run on local Ray (real trials, no MLflow): the mnist1d phase sweep of the demo
(MLP 256x2, random-label pretraining, plain SGD to 100% train accuracy), pretraining duration x
weight decay, 3 seeds:
1. the dense grid (durations 0..64 every 2 epochs; shared pretraining and packing, the grid at
   its cheapest), fitted as `minima phase` fits it: per weight decay, x_critical and its 90%
   interval. Grids every 4 and 8 epochs are its subsets (a trial's result does not depend on
   what else runs: packed and shared trials equal their standalone runs bit for bit, tested),
   fitted the same way;
2. `search: boundary` over the same range from a coarse grid (0, 32, 64), with ci_width set to
   the narrowest interval of the densest grid and that grid's trial count as budget.
For each grid, from the search's saved rounds: the first round at which every slice's interval
is at most as wide as that grid's (and a slice without a crossing agrees), the trials it took,
and the ratio to the grid's count. Also checked: trials of the search that the grid also ran
(same config and seed) have the same test accuracy.

    python benchmarks/boundary_search.py [--high 64] [--step 2] [--seeds 3] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.export import export_sweep  # noqa: E402
from analysis.phase import fit_boundaries  # noqa: E402
from sweeps.boundary_searcher import HISTORY_FILE  # noqa: E402
from sweeps.phase_fit import AxisScale, label_phases  # noqa: E402
from sweeps.ray_cluster import init_ray  # noqa: E402
from sweeps.runner import run_sweep  # noqa: E402
from sweeps.spec import parse_sweep  # noqa: E402
from sweeps.sweep_files import experiment_path  # noqa: E402

BASE = {"dataset": "mnist1d", "model": "mlp", "width": 256, "depth": 2, "label_noise": 1.0, "pretrain_lr": 0.05,
        "pretrain_momentum": 0.9, "lr": 0.1, "momentum": 0.0, "batch_size": 64, "epochs": 200,
        "stop_at_train_acc": 1.0, "flatness_samples": 0}
DELTA = 0.05


def make_spec(name: str, root: Path, args, search: dict, durations) -> object:
    return parse_sweep({
        "name": name, "base": BASE,
        "axes": {"pretrain_epochs": durations, "weight_decay": args.weight_decays},
        "seeds": args.seeds, "search": search, "resources": {"cpu": 1}, "checkpoint_every": 50,
        "storage": str(root / "results"), "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
    }, "benchmark")


def trials_of(spec, root: Path) -> pd.DataFrame:
    out = root / "export" / spec.name
    export_sweep(experiment_path(spec), out, spec.name)
    return pd.read_parquet(out / "trials.parquet")


def width(b: dict) -> float | None:
    return None if b["x_critical"] is None else b["ci_high"] - b["ci_low"]


def located(search_fits: list[dict], dense: dict[float, dict]) -> bool:
    """Every slice's interval at most as wide as the dense grid's, or both without a crossing."""
    for fit in search_fits:
        d = dense[fit["slice"]["weight_decay"]]
        if d["x_critical"] is None or fit["x_critical"] is None:
            if (d["x_critical"] is None) != (fit["x_critical"] is None):
                return False
            continue
        if width(fit) > width(d) + 1e-9:
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--high", type=int, default=64, help="longest pretraining, epochs")
    parser.add_argument("--step", type=int, default=2, help="the densest grid's spacing, epochs (x2, x4 also fitted)")
    parser.add_argument("--coarse", type=int, default=3, help="coarse grid points of the search")
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[0.0, 3e-4, 1e-3])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep both sweeps' results (Ray storage, exports)")
    args = parser.parse_args()
    # the dense grid leaves ~200 MB of results and checkpoints: removed unless kept
    with (contextlib.nullcontext(tempfile.mkdtemp(prefix="minima-boundary-")) if args.keep
          else tempfile.TemporaryDirectory(prefix="minima-boundary-")) as folder:
        print(json.dumps(measure(args, Path(folder)), indent=1))


def measure(args, root: Path) -> dict:
    init_ray()

    durations = list(range(0, args.high + 1, args.step))
    dense_spec = make_spec("dense", root, args, {"kind": "grid"}, durations)
    started = time.perf_counter()
    run_sweep(dense_spec, log_to_mlflow=False, on_notice=lambda m: None)
    dense_s = time.perf_counter() - started
    dense_trials = trials_of(dense_spec, root)
    grids = {}  # spacing -> (trials, boundaries per weight decay)
    for spacing in (args.step, 2 * args.step, 4 * args.step):
        subset = dense_trials[dense_trials["pretrain_epochs"] % spacing == 0]
        grids[spacing] = (len(subset), fit_grid(subset))
    densest = grids[args.step][1]
    widths = [width(b) for b in densest.values() if width(b) is not None]

    search = {"kind": "boundary", "max_trials": len(dense_trials), "ci_width": min(widths) if widths else 1.0,
              "delta": DELTA}
    search_spec = make_spec("adaptive", root, args, search, {"low": 0, "high": args.high, "count": args.coarse})
    started = time.perf_counter()
    run_sweep(search_spec, log_to_mlflow=False, on_notice=lambda m: None)
    search_s = time.perf_counter() - started
    history = json.loads(Path(experiment_path(search_spec), HISTORY_FILE).read_text())
    search_trials = trials_of(search_spec, root)
    final_fits = history["rounds"][-1]["fits"]

    comparison = []
    for spacing, (n, fits) in grids.items():
        needed = next((r["trials_done"] for r in history["rounds"] if r["fits"] and located(r["fits"], fits)), None)
        comparison.append({"grid_every_epochs": spacing, "grid_trials": n, "search_trials_to_match": needed,
                           "ratio": None if needed is None else round(needed / n, 3),
                           "grid_boundaries": {fmt_wd(k): _brief(v) for k, v in fits.items()},
                           "search_estimate_inside_grid_interval": {
                               fmt_wd(f["slice"]["weight_decay"]): _inside(f, fits[f["slice"]["weight_decay"]])
                               for f in final_fits}})
    key = ["pretrain_epochs", "weight_decay", "seed"]
    both = search_trials.merge(dense_trials, on=key, suffixes=("_search", "_grid"))
    return {
        "benchmark": "boundary_search", "dataset": "mnist1d", "seeds": args.seeds, "delta": DELTA,
        "goal": "search trials <= 1/3 of the grid's for intervals as narrow",
        "grids": comparison,
        "dense_grid_wall_s": round(dense_s, 1),
        "search": {"trials_run": len(search_trials), "rounds": len(history["rounds"]), "wall_s": round(search_s, 1),
                   "ci_width": search["ci_width"], "coarse": args.coarse,
                   "trials_per_round": [r["queued"] for r in history["rounds"]],
                   "boundaries": {fmt_wd(f["slice"]["weight_decay"]): {**_brief(f), "settled": f["settled"]}
                                  for f in final_fits}},
        "same_config_trials": int(len(both)),
        "same_config_max_test_acc_diff": float(np.abs(both["test_acc_search"] - both["test_acc_grid"]).max())
        if len(both) else None,
        "kept": str(root) if args.keep else None,
    }


def fit_grid(trials: pd.DataFrame) -> dict:
    """Per weight decay, the boundary `minima phase` fits (linear x, as the search declares it)."""
    labelled = label_phases(trials, DELTA)
    return {b.y: b.as_dict() for b in fit_boundaries(labelled, "pretrain_epochs", "weight_decay", [],
                                                      scale=AxisScale(False))}


def fmt_wd(v) -> str:
    return f"weight_decay={v:g}"


def _brief(b: dict) -> dict:
    return {"x_critical": b["x_critical"], "ci": [b["ci_low"], b["ci_high"]], "width": width(b),
            "n_trials": b["n_trials"]}


def _inside(fit: dict, d: dict) -> bool | None:
    if fit["x_critical"] is None or d["x_critical"] is None:
        return (fit["x_critical"] is None) == (d["x_critical"] is None)
    return bool(d["ci_low"] <= fit["x_critical"] <= d["ci_high"])


if __name__ == "__main__":
    main()
