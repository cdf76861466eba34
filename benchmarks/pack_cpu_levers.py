"""Claim: a CPU pack of narrow MLPs runs faster with each of its CPU levers than without it,
with the same bits: its log-softmax taken class-major (`trainables/class_major.py`) rather
than by ATen's row-by-row kernel, and its batches gathered and shifted a whole epoch at once
(`stacked_step.whole_epoch`) rather than batch by batch.

Measured side by side in one run, interleaved (this machine's speed drifts within minutes):
`run_pack` of K mnist1d MLPs (members differing in seed, weight decay and augmentation; a
fixed number of epochs, flatness measured at the end) with every lever, and with each one
switched off in turn. Also the log-softmax kernels alone: forward and backward of one training
step's (K x batch, 10) logits. Asserts every member's summary and per-epoch records are equal
in every mode (timings aside); prints JSON with each mode's times (median, min, max of n) and
each lever's speed-up (the pack without it over the pack with all).

    python benchmarks/pack_cpu_levers.py [--members 24] [--width 64] [--epochs 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from trainables import class_major, stacked_step
from trainables.packed import run_pack

TIMING_FIELDS = ("epoch_time_s", "wall_time_s")


def member_configs(members: int, width: int, epochs: int) -> list[dict]:
    grid = [(seed, wd, aug) for seed in range(members) for wd in (0.0, 1e-4, 3e-4, 1e-3) for aug in ("none", "shift")]
    return [{"dataset": "mnist1d", "model": "mlp", "width": width, "depth": 2, "seed": seed, "weight_decay": wd,
             "augmentation": aug, "epochs": epochs, "stop_at_train_acc": None, "flatness_samples": 1,
             "torch_threads": 1} for seed, wd, aug in grid[:members]]


def outcomes(results) -> list:
    """Each member's summary and per-epoch records, the timing fields left out."""
    drop = lambda record: {k: v for k, v in record.items() if k not in TIMING_FIELDS}  # noqa: E731
    return [(drop(res.summary), [drop(r) for r in res.history]) for res in results]


def kernel_seconds(rows: int, repeats: int) -> float:
    """One step's log-softmax forward and backward on (rows, 10) logits, median of `repeats` x 200."""
    gen = torch.Generator().manual_seed(0)
    logits, grad = torch.randn(rows, 10, generator=gen), torch.randn(rows, 10, generator=gen)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(200):
            out, by_class = class_major.log_softmax_forward(logits)
            class_major.log_softmax_backward(grad, out, by_class)
        times.append((time.perf_counter() - start) / 200)
    return statistics.median(times)


def summary(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "max_s": round(max(times), 4)}


def modes() -> dict:
    """Each mode's switches: (class_major.applies, stacked_step.EPOCH_BATCHES_BYTES)."""
    on = (class_major.applies, stacked_step.EPOCH_BATCHES_BYTES)
    return {"all_levers": on, "aten_log_softmax": (lambda logits: False, on[1]), "batch_by_batch": (on[0], 0)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=24)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = member_configs(args.members, args.width, args.epochs)
    switches = modes()
    run_pack(configs[:2])  # warm: data cached, kernels loaded
    times: dict[str, list[float]] = {m: [] for m in switches}
    kernels: dict[str, list[float]] = {m: [] for m in ("all_levers", "aten_log_softmax")}
    seen: dict[str, list] = {}
    try:
        for _ in range(args.repeats):
            for mode, (applies, epoch_bytes) in switches.items():
                class_major.applies, stacked_step.EPOCH_BATCHES_BYTES = applies, epoch_bytes
                start = time.perf_counter()
                results = run_pack(configs)
                times[mode].append(time.perf_counter() - start)
                seen[mode] = outcomes(results)
                if mode in kernels:
                    kernels[mode].append(kernel_seconds(args.members * 64, 3))
    finally:
        class_major.applies, stacked_step.EPOCH_BATCHES_BYTES = switches["all_levers"]
    assert all(s == seen["all_levers"] for s in seen.values()), "a member's records differ between modes"
    fastest = statistics.median(times["all_levers"])
    print(json.dumps({
        "benchmark": "pack_cpu_levers", "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "class_major_used": class_major.agrees(10, torch.float32),
        "pack": {"members": args.members, "width": args.width, "epochs": args.epochs, "repeats": args.repeats},
        "pack_wall": {m: summary(t) for m, t in times.items()},
        "lever_speedup": {m: round(statistics.median(t) / fastest, 2) for m, t in times.items() if m != "all_levers"},
        "step_log_softmax_us": {m: round(statistics.median(t) * 1e6, 1) for m, t in kernels.items()},
        "records_equal": True,
    }, indent=2))


if __name__ == "__main__":
    main()
