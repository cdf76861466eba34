"""Claim: what one lone trial costs end to end through `run_trial`, so a change to the epoch
loop can be compared against a baseline (run this script from each checkout, interleaved).

Evidence: `run_trial` of the paper's mnist1d MLP (width x depth, default 256 x 2) for a fixed
number of clean epochs (no early stop, no pretraining, the default local-energy draws at the
end), one torch thread, after an unmeasured one-epoch warm-up (data generated or cached,
kernels loaded). Prints JSON with each run's wall time, their median, min and max.

    python benchmarks/lone_trial.py [--width 256] [--depth 2] [--epochs 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from trainables.trial import run_trial


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = {"dataset": "mnist1d", "model": "mlp", "width": args.width, "depth": args.depth, "epochs": args.epochs,
              "stop_at_train_acc": None, "torch_threads": 1, "device": "cpu"}
    run_trial({**config, "epochs": 1})  # warm-up
    walls = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = run_trial(config)
        walls.append(time.perf_counter() - start)
    print(json.dumps({
        "benchmark": "lone_trial", "trial": config, "repeats": args.repeats,
        "walls_s": [round(w, 3) for w in walls], "median_s": round(statistics.median(walls), 3),
        "min_s": round(min(walls), 3), "max_s": round(max(walls), 3),
        "epochs_run": result.summary["train_epochs"],
    }, indent=2))


if __name__ == "__main__":
    main()
