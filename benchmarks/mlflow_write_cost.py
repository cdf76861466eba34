"""Claim (issue 24): logging a finished trial to MLflow's embedded SQLite store costs little
enough per run that the end-of-sweep drain of a packed sweep is not its bottleneck.

Evidence: the writer the runner uses (`sweeps.tracking.mlflow_writer.MLflowWriter`) drains N finished
trials at once, as the logger does after a packed sweep's last report: each trial has its
real params (every TrialConfig field), identity tags, E epochs of every per-epoch metric,
the final summary and its end. Every call on the MLflow client is timed (count, total,
per call), plus the whole drain per run. With `--trees A B ...` the same measurement runs
in a subprocess per tree (e.g. a `git archive` of an older commit beside this checkout),
interleaved over `--repeats`, each in a fresh store, so before/after come from one run of
this script on one machine state. Prints JSON records; `--out` appends them as lines.

    python benchmarks/mlflow_write_cost.py [--trials 1000] [--epochs 2] [--repeats 3]
        [--trees DIR ...] [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CALLS = ("get_experiment_by_name", "create_experiment", "set_experiment_tag", "search_runs", "create_run",
         "log_batch", "update_run", "set_terminated")


def _timed(client, totals: dict) -> None:
    for name in CALLS:
        method = getattr(client, name, None)
        if method is None:
            continue

        def wrapper(*args, _method=method, _name=name, **kwargs):
            t = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                entry = totals.setdefault(_name, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - t

        setattr(client, name, wrapper)


def measure(trials: int, epochs: int, root: str) -> dict:
    """One drain of `trials` finished trials into a new SQLite store under `root`."""
    from sweeps.tracking.mlflow_events import RunEvents, merge, result_events
    from sweeps.tracking.mlflow_writer import MLflowWriter
    from trainables.config import TrialConfig
    from trainables.metrics import EPOCH_METRICS, FINAL_METRICS

    writer = MLflowWriter(f"sqlite:///{root}/mlflow.db", "cost", ["weight_decay"],
                          {"git_commit": "0" * 40, "package_version": "0.1.0"})
    totals: dict[str, list] = {}
    t = time.perf_counter()
    writer.connect()
    connect_s = time.perf_counter() - t
    _timed(writer.client, totals)
    base = {**TrialConfig().model_dump(), "width": 16, "depth": 1, "epochs": epochs, "flatness_samples": 0}
    now = time.time()
    pending: dict = {}
    order: list = []
    for i in range(trials):
        config = {**base, "seed": i, "weight_decay": [0.0, 1e-4][i % 2]}
        for key, events in writer.identities.of(config, f"t{i:05d}", []):
            if "start_ms" in RunEvents.__dataclass_fields__:  # trees that log a trial's own start
                events.start_ms = int(now * 1000)
            merge(pending, order, key, events)
            for step in range(1, epochs + 1):
                row = {m: 0.5 + step / 100 for m in EPOCH_METRICS}
                merge(pending, order, key, result_events({**row, "step": step, "stage": "train", "timestamp": now + step}))
            final = {m: 1.0 for m in FINAL_METRICS}
            merge(pending, order, key, result_events({**final, "step": epochs, "status": "ok", "final": True,
                                                      "timestamp": now + epochs}))
            merge(pending, order, key, RunEvents(end_status="FINISHED"))
    t = time.perf_counter()
    writer.flush(pending, order)
    drain_s = time.perf_counter() - t
    return {"trials": trials, "epochs": epochs, "connect_s": round(connect_s, 3), "drain_s": round(drain_s, 3),
            "ms_per_run": round(1000 * drain_s / trials, 2),
            "calls": {k: {"n": n, "total_s": round(s, 3), "ms_per_call": round(1000 * s / n, 2)}
                      for k, (n, s) in sorted(totals.items())}}


def in_tree(tree: str, trials: int, epochs: int) -> dict:
    """`measure` in a subprocess that imports the project from `tree`."""
    with tempfile.TemporaryDirectory(prefix="mlflow-cost-") as root:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        out = subprocess.run([sys.executable, __file__, "--worker", "--trials", str(trials), "--epochs", str(epochs),
                              "--dir", root], capture_output=True, text=True, env=env, cwd=tree)
        if out.returncode != 0:
            raise SystemExit(f"{tree}: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trees", nargs="+", default=[str(REPO)])
    parser.add_argument("--out")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.trials, args.epochs, args.dir)))
        return
    runs: dict[str, list] = {tree: [] for tree in args.trees}
    for repeat in range(args.repeats):
        trees = args.trees if repeat % 2 == 0 else args.trees[::-1]  # alternate who goes first
        for tree in trees:
            record = {"tree": tree, "repeat": repeat, "load1": round(os.getloadavg()[0], 2),
                      **in_tree(tree, args.trials, args.epochs)}
            runs[tree].append(record)
            print(json.dumps(record), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(record) + "\n")
    for tree, records in runs.items():
        per_run = [r["ms_per_run"] for r in records]
        print(json.dumps({"tree": tree, "n": len(per_run), "ms_per_run_median": statistics.median(per_run),
                          "ms_per_run_min": min(per_run), "ms_per_run_max": max(per_run)}))


if __name__ == "__main__":
    main()
