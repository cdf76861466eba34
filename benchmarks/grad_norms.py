"""Claim: at the demo's settings (mnist1d, MLP 256x2, plain SGD lr 0.1 to 100% train accuracy),
the clean-stage gradient norms give clip thresholds that bind: with `clip_norm` near the median
per-epoch norm, or a fraction of it, a sizeable share of the clean steps is clipped
(`clipped_frac` well above 0) and training still reaches 100% train accuracy within the 200-epoch
cap; and MLPs of width 128 and 512 still memorise the random labels (pretrain_final_acc > 0.95)
and fit the clean labels. These are the numbers behind sweeps/atlas.yaml's clip thresholds,
widths and cost estimate.

Evidence, all through `run_trial` (one torch thread, CPU):
- norms: trials without clipping from scratch and after 30 and 100 epochs of random-label
  pretraining, per seed; each clean-stage epoch's `grad_norm` (the mean over the epoch's steps
  of the global L2 norm of the gradient, taken before clipping: trainables/plain_engine.py),
  raw, and their median and 10th/90th percentiles over epochs and seeds (numpy's linear
  percentiles), pooled and per pretraining duration;
- clip: trials at each `--clip` threshold, from scratch and after the longest pretraining: the
  share of clipped steps (per epoch and over the whole clean stage), whether they fit, and when;
- widths: trials at each `--widths` width, from scratch and after the longest pretraining:
  pretrain_final_acc, fit, test accuracy;
- variants: the other atlas levels (`--variant weight_decay=1e-3,augmentation=shift`), from
  scratch and after the longest pretraining: epochs to fit and wall time.
Every trial row has its wall time split into pretraining epochs, clean epochs and the rest
(evaluation of flatness, mu), so a sweep's cost can be estimated from it. The machine's
1-minute load average is sampled (2 cores shared with other engineers' jobs).

    python benchmarks/grad_norms.py [--seeds 0 1 2] [--pretrain 0 30 100] [--clip 1.0 0.25]
        [--clip-seeds 0] [--widths 128 512] [--variant weight_decay=1e-3,augmentation=shift ...] > out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from trainables.trial import run_trial

# sweeps/demo.yaml's base: the paper's MLP, plain SGD to 100% train accuracy, capped at 200 epochs
DEMO = {"dataset": "mnist1d", "model": "mlp", "width": 256, "depth": 2, "label_noise": 1.0, "pretrain_lr": 0.05,
        "pretrain_momentum": 0.9, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "augmentation": "none",
        "batch_size": 64, "epochs": 200, "stop_at_train_acc": 1.0, "flatness_samples": 3, "device": "cpu",
        "torch_threads": 1}
MEMORISED = 0.95


def git_commit() -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def stats(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
            "p90": float(np.percentile(a, 90)), "min": float(a.min()), "max": float(a.max()),
            "mean": float(a.mean())}


def trial(overrides: dict[str, Any], seed: int, pretrain_epochs: int) -> dict[str, Any]:
    """One trial's row: its results, its clean-stage norms and clipping, its time split."""
    config = {**DEMO, **overrides, "seed": seed, "pretrain_epochs": pretrain_epochs}
    load_before = loadavg()
    result = run_trial(config)
    s, history = result.summary, result.history
    pre = [r for r in history if r["stage"] == "pretrain"]
    clean = [r for r in history if r["stage"] == "train"]
    pretrain_s, clean_s = sum(r["epoch_time_s"] for r in pre), sum(r["epoch_time_s"] for r in clean)
    row = {
        "overrides": overrides, "seed": seed, "pretrain_epochs": pretrain_epochs, "status": s["status"],
        "reached_global_min": s["reached_global_min"], "train_acc": s["train_acc"], "test_acc": s["test_acc"],
        "epochs_to_fit": s["epochs_to_fit"], "train_epochs": s["train_epochs"],
        "pretrain_final_acc": s["pretrain_final_acc"],
        "wall_time_s": round(s["wall_time_s"], 2), "pretrain_epochs_s": round(pretrain_s, 2),
        "clean_epochs_s": round(clean_s, 2), "other_s": round(s["wall_time_s"] - pretrain_s - clean_s, 2),
        "pretrain_epoch_s": round(pretrain_s / len(pre), 4) if pre else None,
        "clean_epoch_s": round(clean_s / len(clean), 4) if clean else None,
        # every epoch has the same number of steps, so the mean of the per-epoch shares is the stage's share
        "clipped_frac_stage": float(np.mean([r["clipped_frac"] for r in clean])) if clean else None,
        "clean_grad_norm": [r["grad_norm"] for r in clean],
        "clean_clipped_frac": [r["clipped_frac"] for r in clean],
        "pretrain_grad_norm_last": pre[-1]["grad_norm"] if pre else None,
        "loadavg_1min": {"before": load_before, "after": loadavg()},
    }
    shown = {k: v for k, v in row.items() if k not in ("clean_grad_norm", "clean_clipped_frac")}
    print(json.dumps(shown), file=sys.stderr, flush=True)
    return row


def parse_variant(text: str) -> dict[str, Any]:
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        out[key] = json.loads(value) if value not in ("none", "shift") else value
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the norm trials")
    parser.add_argument("--pretrain", type=int, nargs="+", default=[0, 30, 100], help="pretraining durations")
    parser.add_argument("--clip", type=float, nargs="*", default=[], help="clip thresholds to check")
    parser.add_argument("--clip-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--widths", type=int, nargs="*", default=[], help="widths to check besides 256")
    parser.add_argument("--variant", action="append", default=[],
                        help="other atlas levels to time, as KEY=VALUE,KEY=VALUE (JSON values)")
    args = parser.parse_args()
    longest = max(args.pretrain)
    start = time.perf_counter()
    out: dict[str, Any] = {"benchmark": "grad_norms", "base": DEMO, "argv": sys.argv[1:],
                           "grad_norm_definition": "per clean-stage epoch: the mean over its steps of the global "
                                                   "L2 norm of all parameter gradients, before clipping"}

    norms = [trial({}, seed, p) for p in args.pretrain for seed in args.seeds]
    out["norms"] = {
        "trials": norms,
        "clean_grad_norm": stats([g for r in norms for g in r["clean_grad_norm"]]),
        "clean_grad_norm_by_pretrain": {str(p): stats([g for r in norms if r["pretrain_epochs"] == p
                                                       for g in r["clean_grad_norm"]]) for p in args.pretrain},
        "clean_grad_norm_first_epoch": stats([r["clean_grad_norm"][0] for r in norms]),
        "clean_grad_norm_last_epoch": stats([r["clean_grad_norm"][-1] for r in norms]),
    }
    print(json.dumps({"clean_grad_norm": out["norms"]["clean_grad_norm"]}), file=sys.stderr, flush=True)

    out["clip"] = {}
    for c in args.clip:
        rows = [trial({"clip_norm": c}, seed, p) for p in (0, longest) for seed in args.clip_seeds]
        out["clip"][str(c)] = {
            "trials": rows,
            "clipped_frac_stage": stats([r["clipped_frac_stage"] for r in rows]),
            "every_trial_fit": all(r["reached_global_min"] for r in rows),
            "epochs_to_fit": [r["epochs_to_fit"] for r in rows],
        }

    out["widths"] = {}
    for w in args.widths:
        rows = [trial({"width": w}, 0, p) for p in (0, longest)]
        out["widths"][str(w)] = {
            "trials": rows,
            "memorised": all(r["pretrain_final_acc"] > MEMORISED for r in rows if r["pretrain_epochs"] > 0),
            "every_trial_fit": all(r["reached_global_min"] for r in rows),
        }

    out["variants"] = {}
    for text in args.variant:
        overrides = parse_variant(text)
        rows = [trial(overrides, 0, p) for p in (0, longest)]
        out["variants"][text] = {"overrides": overrides, "trials": rows,
                                 "every_trial_fit": all(r["reached_global_min"] for r in rows)}

    out.update({"wall_time_s": round(time.perf_counter() - start, 1), "cpus": os.cpu_count(),
                "machine_note": "2 cores shared with other engineers' jobs; loadavg_1min per trial",
                "torch_version": torch.__version__, "python": platform.python_version(),
                "machine": platform.machine(), "git_commit": git_commit()})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
