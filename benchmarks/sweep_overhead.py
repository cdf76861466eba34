"""Claim: logging every trial to MLflow (our batched callback, SQLite store) costs the sweep
at most 20% of its throughput: trials/s with logging >= 0.8x trials/s without.

Evidence: the same sweep of short mnist1d trials (each logs every epoch) run on one local
Ray, alternately without and with logging, after an unmeasured warm-up sweep; each measured
`rounds` times. Prints JSON with trials/s per round, medians and the ratio.

    python benchmarks/sweep_overhead.py [--trials 48] [--epochs 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from sweeps.cluster.ray_cluster import init_ray  # noqa: E402
from sweeps.run.runner import run_sweep  # noqa: E402
from sweeps.design.spec import parse_sweep  # noqa: E402


def make_spec(name: str, root: Path, trials: int, epochs: int):
    return parse_sweep({
        "name": name,
        "base": {"width": 16, "depth": 1, "epochs": epochs, "stop_at_train_acc": None, "flatness_samples": 0},
        "axes": {"weight_decay": [0.0, 1e-4, 3e-4, 1e-3], "pretrain_epochs": [0, 1]},
        "seeds": max(1, trials // 8),
        "resources": {"cpu": 1},
        "checkpoint_every": 1000,  # measure logging, not checkpoint I/O
        "storage": str(root / "results"),
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
    }, "benchmark")


def timed_sweep(spec, log: bool) -> float:
    t0 = time.perf_counter()
    outcome = run_sweep(spec, log_to_mlflow=log, on_notice=lambda m: None)
    elapsed = time.perf_counter() - t0
    assert outcome.counts.get("ok") == outcome.total, outcome.counts
    return outcome.total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="minima-bench-") as folder:  # results and MLflow store, removed
        print(json.dumps(measure(args, Path(folder)), indent=2))


def measure(args, root: Path) -> dict:
    init_ray()
    timed_sweep(make_spec("warmup", root, 8, 1), log=True)  # actors, imports, MLflow schema
    bare, logged = [], []
    for r in range(args.rounds):
        bare.append(timed_sweep(make_spec(f"bare{r}", root, args.trials, args.epochs), log=False))
        logged.append(timed_sweep(make_spec(f"logged{r}", root, args.trials, args.epochs), log=True))
    return {
        "benchmark": "sweep_overhead",
        "trials_per_sweep": make_spec("x", root, args.trials, args.epochs).num_trials(),
        "reports_per_trial": args.epochs + 1,
        "cpus": os.cpu_count(),
        "tracking": "sqlite",
        "trials_per_s_without_logging": bare,
        "trials_per_s_with_logging": logged,
        "median_without": statistics.median(bare),
        "median_with": statistics.median(logged),
        "ratio_with_over_without": statistics.median(logged) / statistics.median(bare),
        "target_ratio": 0.8,
    }


if __name__ == "__main__":
    main()
