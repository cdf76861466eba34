"""Claim: on scikit-learn's 8x8 digits (dataset: digits, the fixed 1,437 / 360 split), random-label
pretraining sends plain SGD to a worse global minimum: trained from a net that memorised fully
random labels, it reaches 100% train accuracy with lower test accuracy than from scratch.

Evidence: per setting (model and width) and seed, two trials through `run_trial`: from scratch
(pretrain_epochs 0) and after label_noise 1.0 pretraining (SGD lr 0.05, momentum 0.9) long
enough to memorise the random labels (pretrain_final_acc > 0.95, recorded per seed); then plain
SGD (lr 0.1, momentum 0, weight decay 0, no augmentation, batch 64) until 100% train accuracy
(capped at 300 epochs; every trial is checked to have fit). One torch thread, CPU, flatness off.
Prints one JSON object: per-seed test accuracies, their mean, std and n, the gap in points (mean
and std of the per-seed differences), the configs, wall time and the torch version.

    python benchmarks/digits_effect.py [--seeds 0 1 2 3 4] [--settings cnn32 cnn16 cnn8 mlp128 mlp512] > out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

from trainables.trial import run_trial

PLAIN_SGD = {"dataset": "digits", "label_noise": 1.0, "pretrain_lr": 0.05, "pretrain_momentum": 0.9,
             "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "augmentation": "none", "aug_noise": 0.0,
             "batch_size": 64, "epochs": 300, "lr_schedule": "constant", "stop_at_train_acc": 1.0,
             "flatness_samples": 0, "device": "cpu", "torch_threads": 1}
# model, width, depth, and the pretraining that memorises the random labels (checked per seed)
SETTINGS = {
    "cnn32": {"model": "cnn", "width": 32, "depth": 3, "pretrain_epochs": 80},
    "cnn16": {"model": "cnn", "width": 16, "depth": 3, "pretrain_epochs": 80},
    "cnn8": {"model": "cnn", "width": 8, "depth": 3, "pretrain_epochs": 150},
    "mlp128": {"model": "mlp", "width": 128, "depth": 2, "pretrain_epochs": 150},
    "mlp512": {"model": "mlp", "width": 512, "depth": 2, "pretrain_epochs": 100},
}
MEMORISED = 0.95


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def git_commit() -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def measure(setting: dict, seeds: list[int]) -> dict:
    pretrain_epochs = setting["pretrain_epochs"]
    base = {**PLAIN_SGD, **{k: v for k, v in setting.items() if k != "pretrain_epochs"}}
    rows = []
    for seed in seeds:
        for epochs in (0, pretrain_epochs):
            s = run_trial({**base, "seed": seed, "pretrain_epochs": epochs}).summary
            rows.append({"seed": seed, "pretrain_epochs": epochs, "test_acc": s["test_acc"],
                         "train_acc": s["train_acc"], "reached_global_min": s["reached_global_min"],
                         "train_epochs": s["train_epochs"], "pretrain_final_acc": s["pretrain_final_acc"],
                         "wall_time_s": round(s["wall_time_s"], 2)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    scratch = [r["test_acc"] for r in rows if r["pretrain_epochs"] == 0]
    pretrained = [r["test_acc"] for r in rows if r["pretrain_epochs"] > 0]
    memorised = [r["pretrain_final_acc"] for r in rows if r["pretrain_epochs"] > 0]
    return {
        "config": base,
        "pretrain_epochs": pretrain_epochs,
        "trials": rows,
        "test_acc_scratch_per_seed": scratch,
        "test_acc_pretrained_per_seed": pretrained,
        "test_acc_scratch": spread(scratch),
        "test_acc_pretrained": spread(pretrained),
        "gap_points": spread([100 * (a - b) for a, b in zip(scratch, pretrained)]),
        "every_trial_fit": all(r["reached_global_min"] and r["train_acc"] == 1.0 for r in rows),
        "pretrain_final_acc_min": min(memorised),
        "memorised": min(memorised) > MEMORISED,
        "wall_time_s": round(sum(r["wall_time_s"] for r in rows), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    start = time.perf_counter()
    out = {"benchmark": "digits_effect", "dataset": "digits", "seeds": args.seeds, "settings": {}}
    for name in args.settings:
        out["settings"][name] = measure(SETTINGS[name], args.seeds)
        print(json.dumps({name: out["settings"][name]["gap_points"]}), file=sys.stderr, flush=True)
    out.update({"wall_time_s": round(time.perf_counter() - start, 1), "torch_version": torch.__version__,
                "python": platform.python_version(), "machine": platform.machine(), "git_commit": git_commit()})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
