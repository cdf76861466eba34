"""Claim: our trial's training epoch (tensors on the device, index-permutation batches, batched
augmentation, grad-norm bookkeeping) is faster than the textbook loop over a DataLoader.

Measured side by side in one run, same model, batch size, thread count and data:
  - ours:      trainables.plain_engine.train_epoch (the training pass every lone trial runs)
  - ours_with_epoch_metrics: that pass plus the per-epoch train/test evaluation and norms
  - reference: DataLoader(TensorDataset(x, y), batch_size, shuffle=True), num_workers=0
Cases: mnist1d with the paper's MLP 256x2, and a CIFAR-shaped CNN on synthetic tensors.
Prints JSON: epochs/s for each (median of n repeats, with min and max) and the ratio.

    python benchmarks/trial_throughput.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainables.config import make_config
from trainables.data import TensorData, load_dataset
from trainables.seeding import generator
from trainables.loop import epoch_record
from trainables.plain_engine import PlainEngine, train_epoch
from trainables.stages import Stage, init_model


def reference_epoch(model: nn.Module, opt: torch.optim.Optimizer, loader: DataLoader) -> None:
    model.train()
    for xb, yb in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()


def timed(fn, repeats: int) -> dict[str, float]:
    fn()  # warm-up: allocator, first-call kernels
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(1.0 / (time.perf_counter() - t0))
    return {"epochs_per_s": statistics.median(rates), "min": min(rates), "max": max(rates), "n": repeats}


def measure_case(name: str, cfg_values: dict, data: TensorData, repeats: int) -> dict:
    cfg = make_config(cfg_values)
    device = data.x_train.device
    ours_model = init_model(cfg, data, device)
    ref_model = init_model(cfg, data, device)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    stage = Stage("train", 1, data.x_train, data.y_train, cfg.lr, cfg.momentum, 0.0, "constant",
                  cfg.augmentation, 0.0, None, None, generator(0, "train", device))
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=cfg.batch_size, shuffle=True)
    engine = PlainEngine(cfg, ours_model, data, device)
    engine.start_stage(stage)  # SGD(lr, momentum, foreach), as a trial's stage makes it

    def full_epoch() -> None:  # what a trial does per epoch: train, then every per-epoch measure
        first = lambda values: {name: v[0] for name, v in values.items()}  # noqa: E731
        stats = first(engine.train_epoch(0))
        epoch_record(stage, 0, first(engine.evaluate()), stats, engine.norms()[0], 0.0, 1)

    ours = timed(lambda: train_epoch(ours_model, engine.opt, stage, cfg.batch_size), repeats)
    ours_full = timed(full_epoch, repeats)
    ref = timed(lambda: reference_epoch(ref_model, ref_opt, loader), repeats)
    return {
        "case": name,
        "rows": len(data.x_train),
        "batch_size": cfg.batch_size,
        "ours": ours,
        "ours_with_epoch_metrics": ours_full,
        "reference_dataloader": ref,
        "ratio_ours_over_reference": ours["epochs_per_s"] / ref["epochs_per_s"],
        "ratio_ours_with_metrics_over_reference": ours_full["epochs_per_s"] / ref["epochs_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cifar-rows", type=int, default=1024, help="synthetic CIFAR-shaped rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    mnist1d = load_dataset("mnist1d", device)
    g = torch.Generator().manual_seed(0)
    cifar_like = TensorData(
        torch.randn(args.cifar_rows, 3, 32, 32, generator=g).to(device),
        torch.randint(0, 10, (args.cifar_rows,), generator=g).to(device),
        torch.randn(256, 3, 32, 32, generator=g).to(device),
        torch.randint(0, 10, (256,), generator=g).to(device),
        num_classes=10,
    )
    cases = [
        measure_case("mnist1d_mlp_256x2", {"model": "mlp", "width": 256, "depth": 2, "batch_size": 64}, mnist1d, args.repeats),
        measure_case("cifar_shaped_cnn_w32", {"model": "cnn", "width": 32, "depth": 3, "batch_size": 64,
                                              "dataset": "cifar10"}, cifar_like, args.repeats),
    ]
    print(json.dumps({
        "benchmark": "trial_throughput",
        "device": device.type,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "cases": cases,
    }, indent=2))


if __name__ == "__main__":
    main()
