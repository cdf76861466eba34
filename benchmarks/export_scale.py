"""Claim: `minima export` turns 10,000 trials x 200 epochs of Ray results into Parquet in under a
minute on this 2-core machine.

Evidence: generated results in Ray Tune's own layout (trial_*/params.json and result.json with
Ray's extra keys, a `config` copy in every row, and a final summary row), then one timed export.
Prints JSON with the generation and export times and the rows written.

    python benchmarks/export_scale.py [--trials 10000] [--epochs 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from analysis.export import export_sweep
from trainables.config import make_config


def generate(root: Path, trials: int, epochs: int, pretrain: int = 20) -> None:
    """Write `trials` Ray-style trial folders, each with `pretrain + epochs` epoch rows and a final row."""
    for i in range(trials):
        config = make_config({"pretrain_epochs": pretrain if i % 2 else 0, "weight_decay": (i % 7) * 1e-4,
                              "seed": i % 5, "epochs": epochs}).to_dict()
        folder = root / f"trial_bench_{i:05d}"
        folder.mkdir(parents=True)
        (folder / "params.json").write_text(json.dumps({**config, "_checkpoint_every": 5}))
        ray_extra = (f', "timestamp": 1795450000, "checkpoint_dir_name": null, "done": false, "trial_id": "bench_{i:05d}", '
                     f'"date": "2026-11-23_16-00-00", "time_this_iter_s": 0.1, "pid": 1234, "hostname": "vm", '
                     f'"node_ip": "10.0.0.2", "config": {json.dumps(config)}')
        lines = []
        n_pre = config["pretrain_epochs"]
        for step in range(1, n_pre + epochs + 1):
            stage, epoch = ("pretrain", step) if step <= n_pre else ("train", step - n_pre)
            acc = min(1.0, 0.1 + 0.9 * step / (n_pre + epochs))
            lines.append(
                f'{{"stage": "{stage}", "epoch": {epoch}, "lr": 0.1, "train_loss": {2.3 * (1 - acc):.6f}, '
                f'"train_acc": {acc:.6f}, "test_loss": {2.3 * (1 - acc) + 0.5:.6f}, "test_acc": {acc * 0.6:.6f}, '
                f'"pretrain_acc": {"null" if stage == "train" else acc}, "step_loss": 0.5, "grad_norm": 1.2, '
                f'"clipped_frac": 0.0, "weight_norm": 14.0, "dist_from_init": 5.0, "diverged": false, '
                f'"epoch_time_s": 0.13, "step": {step}, "final": false{ray_extra}}}')
        lines.append(
            f'{{"status": "ok", "train_acc": 1.0, "test_acc": 0.6, "train_loss": 0.001, "test_loss": 1.9, '
            f'"reached_global_min": true, "epochs_to_fit": {epochs}, "train_epochs": {epochs}, '
            f'"pretrain_final_acc": {"null" if not n_pre else 1.0}, "local_energy_1pct": 0.0001, '
            f'"local_energy_5pct": 0.01, "local_energy_10pct": 0.05, "device": "cpu", "git_commit": "abc", '
            f'"package_version": "0.1.0", "wall_time_s": 30.0, "stage": "final", "step": {n_pre + epochs}, '
            f'"final": true{ray_extra}}}')
        (folder / "result.json").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--keep", help="generate into this folder and keep it")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="minima-export-"))
    experiment = root / "bench"
    t0 = time.perf_counter()
    if not experiment.exists():
        generate(experiment, args.trials, args.epochs)
    generated_s = time.perf_counter() - t0
    size_mb = sum(f.stat().st_size for f in experiment.rglob("*") if f.is_file()) / 1e6
    t0 = time.perf_counter()
    result = export_sweep(str(experiment), root / "export", "bench")
    export_s = time.perf_counter() - t0
    print(json.dumps({
        "benchmark": "export_scale",
        "trials": result.trials,
        "curve_rows": result.curve_rows,
        "results_mb": round(size_mb, 1),
        "cpus": os.cpu_count(),
        "generate_s": round(generated_s, 1),
        "export_s": round(export_s, 1),
        "curve_rows_per_s": round(result.curve_rows / export_s),
        "target_s": 60,
        "parquet_mb": round((result.trials_path.stat().st_size + result.curves_path.stat().st_size) / 1e6, 1),
    }, indent=2))
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
