"""Claim: on a GPU, packing K ResNet-18 trials into one stacked model runs more
trials per hour than one trial per process, alone on the GPU or four sharing it (Ray's
`gpu: 0.25`, as `sweeps/phase_cifar10.yaml` asks).

Measured side by side in one run, on one GPU, with the trial code a sweep runs
(`trainables.trial.run_trial`, `trainables.packed.run_pack`), each case in fresh processes
that load their data and start CUDA before a common start signal:
  - alone_fp32:       one trial in one process (`pack: 1`)
  - alone_bf16_nhwc:  the same with the speed options (`precision: bf16`, `channels_last`)
  - shared_gpu_4:     4 processes, one trial each, on the GPU at once (`gpu: 0.25`)
  - packed_K:         one process training K trials as one stacked model (`pack: K`)
Trials are the phase sweep's clean phase (ResNet-18, batch 128, lr 0.01, flatness_samples 3),
members differing in weight decay, augmentation, clip threshold and seed; each runs a fixed
number of epochs (stop_at_train_acc off), every per-epoch measure and the end-of-trial summary
included. Data: CIFAR-10's shape and size (50k/10k rows, 3x32x32, 10 classes) as random
tensors, because the device machine cannot download CIFAR-10; with the epoch count fixed a
trial's cost does not depend on pixel values.

Prints JSON: per case its wall time, trials/hour at this trial length, steady-state trial-epochs
per hour (epoch intervals after each process's first, before its last), GPU utilisation and power (NVML, sampled
every 0.1 s while the case runs) and peak memory; ratios against alone_fp32 and shared_gpu_4.

    python benchmarks/gpu_pack_throughput.py [--widths 16,64] [--epochs 3] [--packs 4,8]
        [--train-rows 50000] [--budget-s 480] [--only REGEX] [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WEIGHT_DECAYS = [0.0, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3]  # sweeps/phase_cifar10.yaml
CLIPS = [None, 1.0, 5.0]
SHARED_PROCESSES = 4


def member_configs(count: int, width: int, epochs: int) -> list[dict]:
    """`count` clean-phase trials of the CIFAR-10 phase sweep that can share one stacked model."""
    return [{
        "dataset": "cifar10", "model": "resnet18", "width": width, "batch_size": 128, "lr": 0.01,
        "momentum": 0.0, "epochs": epochs, "stop_at_train_acc": None, "flatness_samples": 3,
        "weight_decay": WEIGHT_DECAYS[i % len(WEIGHT_DECAYS)], "augmentation": ["none", "flip_crop"][i % 2],
        "clip_norm": CLIPS[i % len(CLIPS)], "seed": i,
    } for i in range(count)]


def cases(widths: list[int], packs: list[int], epochs: int) -> list[dict]:
    """Each case: its processes, each a list of configs run packed or one after another."""
    out = []
    for width in widths:
        one = member_configs(1, width, epochs)
        fast = [{**one[0], "precision": "bf16", "channels_last": True}]
        out.append({"case": f"w{width}_alone_fp32", "width": width, "packed": False, "processes": [one]})
        for k in packs:
            out.append({"case": f"w{width}_packed_{k}", "width": width, "packed": True,
                         "processes": [member_configs(k, width, epochs)]})
        shared = member_configs(SHARED_PROCESSES, width, epochs)
        out.append({"case": f"w{width}_shared_gpu_{SHARED_PROCESSES}", "width": width, "packed": False,
                    "processes": [[c] for c in shared]})
        out.append({"case": f"w{width}_alone_bf16_nhwc", "width": width, "packed": False, "processes": [fast]})
    return out


# --- a worker process: one Ray trial's work, timed -------------------------------------------

def stage_cifar_shaped(train_rows: int, test_rows: int) -> None:
    """Make `load_dataset("cifar10", ...)` return random CIFAR-10-shaped arrays in this process
    (the GPU machine cannot download CIFAR-10; a trial's cost does not depend on the pixels)."""
    import numpy as np

    from trainables import data

    def random_cifar(name: str):
        if name != "cifar10":
            raise ValueError(f"this benchmark stages cifar10 only, not {name}")
        rng = np.random.default_rng(0)
        images = lambda n: rng.standard_normal((n, 3, 32, 32), dtype=np.float32)  # noqa: E731
        labels = lambda n: rng.integers(0, 10, n, dtype=np.int64)  # noqa: E731
        return images(train_rows), labels(train_rows), images(test_rows), labels(test_rows)

    data.load_torchvision = random_cifar


def worker(job: dict) -> None:
    import torch

    from trainables.data import load_dataset
    from trainables.packed import run_pack
    from trainables.stages import resolve_device
    from trainables.trial import run_trial

    stage_cifar_shaped(job["train_rows"], job["test_rows"])
    device = resolve_device("auto")
    load_dataset("cifar10", device)  # on the device before the start signal
    if device.type == "cuda":
        torch.cuda.synchronize()
    Path(job["ready"]).touch()
    while not Path(job["go"]).exists():
        time.sleep(0.01)
    epoch_times: list[float] = []
    start = time.time()
    if job["packed"]:
        results = run_pack(job["configs"], on_epoch=lambda i, r: i == 0 and epoch_times.append(time.time()))
    else:
        results = [run_trial(c, on_epoch=lambda r, s: epoch_times.append(time.time())) for c in job["configs"]]
    if device.type == "cuda":
        torch.cuda.synchronize()
    end = time.time()
    print(json.dumps({
        "start": start, "end": end, "epoch_times": epoch_times, "trials": len(job["configs"]),
        "statuses": [r.summary["status"] for r in results],
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }))


# --- the driver: runs each case's processes together and samples the GPU ---------------------

class GpuSampler:
    """NVML utilisation, power and memory every 0.1 s (nothing where there is no NVIDIA GPU)."""

    def __init__(self):
        self.samples: list[tuple[float, int, float, float]] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            self._nvml = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._nvml is not None and not self._stop.wait(0.1):
            nv, h = self._nvml, self._handle
            self.samples.append((time.time(), nv.nvmlDeviceGetUtilizationRates(h).gpu,
                                 nv.nvmlDeviceGetPowerUsage(h) / 1000.0, nv.nvmlDeviceGetMemoryInfo(h).used / 2**30))

    def between(self, start: float, end: float) -> dict | None:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return None
        return {"util_pct_mean": statistics.mean(s[1] for s in inside),
                "power_w_mean": statistics.mean(s[2] for s in inside),
                "memory_used_gib_max": max(s[3] for s in inside), "samples": len(inside)}

    def name(self) -> str | None:
        return self._nvml.nvmlDeviceGetName(self._handle) if self._nvml else None


def run_case(case: dict, args, sampler: GpuSampler, timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        procs = []
        for i, configs in enumerate(case["processes"]):
            job = {"configs": configs, "packed": case["packed"], "train_rows": args.train_rows,
                   "test_rows": args.test_rows, "ready": str(Path(tmp) / f"ready{i}"), "go": str(go)}
            procs.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(job)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.time() + timeout_s
        while not all((Path(tmp) / f"ready{i}").exists() for i in range(len(procs))):
            if any(p.poll() is not None for p in procs) or time.time() > deadline:
                break
            time.sleep(0.05)
        go.touch()
        outs = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                return {"case": case["case"], "error": f"timed out after {timeout_s:.0f} s"}
            if p.returncode != 0:
                return {"case": case["case"], "error": err[-3000:]}
            outs.append(json.loads(out.strip().splitlines()[-1]))
    start, end = min(o["start"] for o in outs), max(o["end"] for o in outs)
    trials = sum(o["trials"] for o in outs)
    members_per_epoch = len(case["processes"][0]) if case["packed"] else 1
    steady = []  # each process's trial-epochs per hour between its first and last epoch
    for o in outs:
        gaps = [b - a for a, b in zip(o["epoch_times"], o["epoch_times"][1:])]
        gaps = gaps[:-1] or gaps  # a pack reports its last epoch after the end-of-trial measures
        steady.append(3600.0 * members_per_epoch / statistics.median(gaps) if gaps else None)
    return {
        "case": case["case"], "width": case["width"], "processes": len(outs), "trials": trials,
        "epochs_per_trial": case["processes"][0][0]["epochs"], "wall_s": end - start,
        "trials_per_hour": 3600.0 * trials / (end - start),
        "steady_trial_epochs_per_hour": sum(steady) if all(s is not None for s in steady) else None,
        "statuses": sorted({s for o in outs for s in o["statuses"]}),
        "max_memory_gib_per_process": max((o["max_memory_gib"] or 0.0) for o in outs),
        "gpu": sampler.between(start, end),
    }


def add_ratios(results: list[dict]) -> None:
    by_name = {r["case"]: r for r in results if "error" not in r}
    for r in results:
        if "error" in r:
            continue
        for base in ("alone_fp32", f"shared_gpu_{SHARED_PROCESSES}"):
            ref = by_name.get(f"w{r['width']}_{base}")
            if ref is not None and ref is not r:
                r[f"trials_per_hour_over_{base}"] = r["trials_per_hour"] / ref["trials_per_hour"]
                if r["steady_trial_epochs_per_hour"] and ref["steady_trial_epochs_per_hour"]:
                    r[f"steady_over_{base}"] = r["steady_trial_epochs_per_hour"] / ref["steady_trial_epochs_per_hour"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--widths", default="16,64", help="ResNet-18 base channels (64 = standard)")
    parser.add_argument("--packs", default="4,8", help="members per pack to measure")
    parser.add_argument("--epochs", type=int, default=3, help="clean epochs per trial (>= 3 for a steady rate)")
    parser.add_argument("--train-rows", type=int, default=50_000)
    parser.add_argument("--test-rows", type=int, default=10_000)
    parser.add_argument("--budget-s", type=float, default=480.0, help="start no case after this many seconds")
    parser.add_argument("--only", help="run only the cases whose name matches this regular expression")
    parser.add_argument("--out", help="append each case's result to this JSON-lines file as it ends")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    sampler = GpuSampler()
    began = time.time()
    results = []
    for case in cases([int(w) for w in args.widths.split(",")], [int(k) for k in args.packs.split(",")], args.epochs):
        if args.only and not re.search(args.only, case["case"]):
            continue
        left = args.budget_s - (time.time() - began)
        if left <= 0:
            results.append({"case": case["case"], "error": "skipped: budget spent"})
            continue
        result = run_case(case, args, sampler, timeout_s=left + 60)
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
    add_ratios(results)
    import torch

    print(json.dumps({"benchmark": "gpu_pack_throughput", "gpu": sampler.name(), "torch": torch.__version__,
                      "train_rows": args.train_rows, "test_rows": args.test_rows, "results": results}, indent=1))


if __name__ == "__main__":
    main()
