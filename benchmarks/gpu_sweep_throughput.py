"""Claim: on a GPU, a packed phase sweep run through Ray does more trials per hour
than the same sweep trial by trial, and keeps the GPU busier.

Evidence: one small phase sweep of the `sweeps/phase_cifar10.yaml` kind (ResNet-18, or an MLP
with `--model mlp`; pretraining durations x weight decays x augmentations x seeds, a fixed
number of clean epochs) run through the runner a user runs (Ray Tune, shared pretraining,
MLflow logging into a SQLite store), once per mode, each Ray trial on `--gpu-per-trial` of the
GPU (0.25: four at once, as the CIFAR sweep asks):
  - alone:  `pack: 1`, one trial per Ray trial
  - packed: `pack: K` (`--pack`), K trials per Ray trial as one stacked model
Data: CIFAR-10's shape (3x32x32, 10 classes) as random tensors, staged in every Ray worker by
a setup hook, because the device machine cannot download CIFAR-10; with the epoch count fixed
a trial's cost does not depend on pixel values. Prints one JSON line per mode as it ends (wall
time, trials/hour, GPU utilisation, power and memory from NVML every 0.1 s), then a summary
with the ratio and the largest test-accuracy difference between the modes (conv nets pack
under vmap: equal to float tolerance per step, so not asserted after chaotic training).
Without a GPU it runs the same on CPU (`--gpu-per-trial 0`): a smoke check, not a measurement.

    python benchmarks/gpu_sweep_throughput.py [--model resnet18|mlp] [--width 16] [--pack 8]
        [--train-rows 10000] [--epochs 2] [--durations 0,2] [--seeds 2] [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

from gpu_pack_throughput import GpuSampler, stage_cifar_shaped  # noqa: E402
from phase_sweep_cost import accuracies, ran_as, tracking_uri  # noqa: E402

from sweeps.cluster.ray_cluster import init_ray  # noqa: E402
from sweeps.run.runner import run_sweep  # noqa: E402
from sweeps.design.spec import parse_sweep  # noqa: E402

MODES = ("alone", "packed")


def make_spec(name: str, root: Path, args, pack: int):
    return parse_sweep({
        "name": name,
        "base": {"dataset": "cifar10", "model": args.model, "width": args.width, "batch_size": 128,
                 "lr": 0.01, "pretrain_lr": 0.01, "pretrain_momentum": 0.9, "epochs": args.epochs,
                 "stop_at_train_acc": None, "flatness_samples": 3},
        "axes": {"pretrain_epochs": [int(d) for d in args.durations.split(",")],
                 "weight_decay": [float(w) for w in args.weight_decays.split(",")],
                 "augmentation": args.augmentations.split(",")},
        "seeds": args.seeds,
        "resources": {"cpu": args.cpu_per_trial, "gpu": args.gpu_per_trial},
        "checkpoint_every": 5,
        "share_pretraining": True,
        "pack": pack,
        "storage": str(root / "results"),
        "tracking_uri": tracking_uri(name, root),
    }, "benchmark")


def main() -> None:
    import torch

    has_gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("resnet18", "mlp"), default="resnet18")
    parser.add_argument("--width", type=int, default=16, help="base channels (ResNet-18) or hidden units (MLP)")
    parser.add_argument("--pack", type=int, default=8, help="members per Ray trial in the packed mode")
    parser.add_argument("--epochs", type=int, default=2, help="clean epochs per trial (fixed: no early stop)")
    parser.add_argument("--durations", default="0,2", help="pretraining epochs axis")
    parser.add_argument("--weight-decays", default="0,1e-4,5e-4,1e-3")
    parser.add_argument("--augmentations", default="none,flip_crop")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=10_000)
    parser.add_argument("--test-rows", type=int, default=2_000)
    parser.add_argument("--gpu-per-trial", type=float, default=0.25 if has_gpu else 0.0)
    parser.add_argument("--cpu-per-trial", type=float, default=2 if has_gpu else 1)
    parser.add_argument("--modes", default=",".join(MODES), help="which to run, in order")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--out", help="also append each JSON line to this file")
    args = parser.parse_args()
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}; use {', '.join(MODES)}")
    if args.gpu_per_trial > 0 and not has_gpu:
        parser.error("--gpu-per-trial: this machine has no CUDA GPU; use 0 for a CPU smoke run")

    import gpu_pack_throughput
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(gpu_pack_throughput)  # Ray's workers cannot import it

    def hook():  # Ray exports a named function, pickled by value
        stage_cifar_shaped(args.train_rows, args.test_rows)

    hook()  # the driver too
    init_ray({"worker_process_setup_hook": hook})  # run_sweep then finds Ray started
    sampler = GpuSampler()
    results, accs = {}, {}
    with tempfile.TemporaryDirectory(prefix="minima-gpu-sweep-") as folder:
        root = Path(folder)
        for mode in args.modes.split(","):
            spec = make_spec(mode, root, args, 1 if mode == "alone" else args.pack)
            start = time.time()
            with contextlib.redirect_stdout(sys.stderr):  # Ray's tables: keep stdout for the JSON
                outcome = run_sweep(spec, log_to_mlflow=not args.no_mlflow, on_notice=lambda m: None)
            end = time.time()
            accs[mode] = accuracies(spec, root)  # asserts every trial ended ok
            results[mode] = {
                "mode": mode, "wall_s": round(end - start, 1), "trials": outcome.total,
                "trials_per_hour": round(outcome.total / (end - start) * 3600),
                **ran_as(spec),
                "gpu": sampler.between(start, end),
            }
            emit(results[mode], args.out)
    summary = {
        "benchmark": "gpu_sweep_throughput", "device": sampler.name() or "cpu",
        "sweep": {k: getattr(args, k) for k in ("model", "width", "epochs", "durations", "weight_decays",
                                                 "augmentations", "seeds", "train_rows", "test_rows",
                                                 "gpu_per_trial", "cpu_per_trial")},
        "mlflow_logging": not args.no_mlflow, "runs": results,
    }
    if {"alone", "packed"} <= results.keys():
        summary["trials_per_hour_packed_over_alone"] = round(results["alone"]["wall_s"] / results["packed"]["wall_s"], 2)
        summary["max_test_acc_difference"] = max(abs(accs["alone"][k] - accs["packed"][k]) for k in accs["alone"])
    emit(summary, args.out)


def emit(line: dict, out: str | None) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
