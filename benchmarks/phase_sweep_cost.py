"""Claim: shared pretraining plus packing makes a phase sweep at least 5x cheaper than running
its trials one by one, without changing any trial's result.

Evidence: the same mnist1d phase sweep (pretraining durations x weight decays x augmentations
x seeds; 96 trials by default) run on one local Ray, with MLflow logging, after an unmeasured
warm-up sweep, each run into its own new MLflow store: (a) trial by trial (`pack: 1`,
`share_pretraining: false`), (b) with shared pretraining, (c) with shared pretraining and
packing (`pack: auto`), in the order c, a, b, c (this machine's speed drifts within minutes:
the two (c) runs bracket the others and their mean is compared). Prints JSON with each wall
time (a repeated mode: every run and their mean), the driver process's CPU seconds (Tune and
MLflow logging, on the cores the trials use), trials/hour, the speed-ups over (a), and the
largest difference in any trial's final test accuracy between the runs (asserted to be within
float tolerance; here it is 0).

With `--no-mlflow` the trials are not logged to MLflow: on local Ray the driver's SQLite
logging (~60k metrics here, 0.1-0.2 ms each) takes CPU from the trials on the same cores, which a
cluster's head node does not; this isolates what sharing and packing save in the trials.

    python benchmarks/phase_sweep_cost.py [--width 64 | --width 64,1024] [--epochs 30] [--durations 0,10,20,40] [--pack auto]
        [--no-mlflow] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from analysis.export import export_sweep  # noqa: E402
from sweeps.design.plan import sweep_plan  # noqa: E402
from sweeps.cluster.ray_cluster import init_ray  # noqa: E402
from sweeps.run.runner import run_sweep  # noqa: E402
from sweeps.design.spec import parse_sweep  # noqa: E402
from sweeps.storage.sweep_files import experiment_path, read_spec  # noqa: E402

MODES = {  # name -> (pack, share_pretraining)
    "a_trial_by_trial": (1, False),
    "b_shared_pretraining": (1, True),
    "c_shared_and_packed": ("auto", True),
}
# (c) first and last: this machine's speed drifts by 20% within minutes, and whichever mode
# runs later paid for it; the mean of both (c) runs brackets (a) and (b) between them.
DEFAULT_ORDER = "c_shared_and_packed,a_trial_by_trial,b_shared_pretraining,c_shared_and_packed"


def ran_as(spec) -> dict:
    """The largest pack and the Ray trials of the plan the sweep stored (pack: auto as resolved)."""
    plan = sweep_plan(read_spec(spec.name, spec.storage))
    return {"pack": plan.largest_pack, "ray_trials": len(plan.ray_trials)}


def make_spec(name: str, root: Path, args, pack, share: bool):
    widths = [int(w) for w in str(args.width).split(",")]
    return parse_sweep({
        "name": name,
        "base": {"dataset": "mnist1d", "model": "mlp", "depth": 2, "epochs": args.epochs,
                 "stop_at_train_acc": 1.0, "flatness_samples": 1, "lr": 0.1, "pretrain_lr": 0.05,
                 **({"width": widths[0]} if len(widths) == 1 else {})},
        "axes": {**({"width": widths} if len(widths) > 1 else {}),
                 "pretrain_epochs": [int(d) for d in args.durations.split(",")],
                 "weight_decay": [float(w) for w in args.weight_decays.split(",")],
                 "augmentation": args.augmentations.split(",")},
        "seeds": args.seeds,
        "resources": {"cpu": 1},
        "checkpoint_every": 10,
        "share_pretraining": share,
        "pack": pack,
        "storage": str(root / "results"),
        "tracking_uri": tracking_uri(name, root),
    }, "benchmark")


def tracking_uri(name: str, root: Path) -> str:
    """A store per run: each starts from an empty database, as the first did (a shared one would
    make every later run insert into tables already holding the earlier runs' ~60k metrics)."""
    return f"sqlite:///{root / (name + '.db')}"


def accuracies(spec, root: Path) -> dict[str, float]:
    import pyarrow.parquet as pq

    out = root / "export" / spec.name
    export_sweep(experiment_path(spec), out, spec.name)
    rows = pq.read_table(out / "trials.parquet", columns=["trial_key", "test_acc", "status"]).to_pylist()
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    return {r["trial_key"]: r["test_acc"] for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", default="64", help="MLP width, or widths (an axis: 64,1024)")
    parser.add_argument("--epochs", type=int, default=30, help="cap on clean epochs (stops at 100%% train)")
    parser.add_argument("--durations", default="0,10,20,40", help="pretraining epochs axis")
    parser.add_argument("--weight-decays", default="0,1e-4,3e-4,1e-3")
    parser.add_argument("--augmentations", default="none,shift")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--modes", default=DEFAULT_ORDER,
                        help="which to run, in order (names or letters: c,a,b,c); a mode named twice runs "
                             "twice and reports its mean")
    parser.add_argument("--pack", default="auto", help="(c)'s pack: auto, or members per Ray trial")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the trials to MLflow")
    parser.add_argument("--keep", action="store_true", help="keep the results, MLflow store and exports")
    args = parser.parse_args()
    try:
        args.modes = ",".join(_mode_name(m) for m in args.modes.split(","))
    except KeyError as err:
        parser.error(f"--modes: unknown mode {err}; use {', '.join(MODES)} or their letters a, b, c")
    # a phase sweep leaves ~100 MB of results and checkpoints: removed unless kept
    with (contextlib.nullcontext(tempfile.mkdtemp(prefix="minima-cost-")) if args.keep
          else tempfile.TemporaryDirectory(prefix="minima-cost-")) as folder:
        print(json.dumps({**measure(args, Path(folder)), "kept": folder if args.keep else None}, indent=2))


def _mode_name(mode: str) -> str:
    """A mode's full name, from itself or its letter (`c` is `c_shared_and_packed`)."""
    by_letter = {name[0]: name for name in MODES}
    name = by_letter.get(mode.strip(), mode.strip())
    if name not in MODES:
        raise KeyError(mode)
    return name


def measure(args, root: Path) -> dict:
    init_ray()
    warm = argparse.Namespace(**{**vars(args), "durations": "0,1", "weight_decays": "0", "augmentations": "none",
                                 "seeds": 2, "epochs": 1})
    with contextlib.redirect_stdout(sys.stderr):
        run_sweep(make_spec("warmup", root, warm, "auto", True), on_notice=lambda m: None)

    from mlflow import MlflowClient

    runs = [(mode, f"{mode}_{i}") for i, mode in enumerate(args.modes.split(","))]
    for _, name in runs:  # create every store's tables now, untimed
        MlflowClient(tracking_uri(name, root)).search_experiments()
    results, accs, walls, cpus = {}, {}, {}, {}
    for mode, name in runs:
        pack, share = MODES[mode]
        if pack == "auto" and args.pack != "auto":
            pack = int(args.pack)
        spec = make_spec(name, root, args, pack, share)
        t0, cpu0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(sys.stderr):  # Ray's tables: keep stdout for the JSON
            outcome = run_sweep(spec, log_to_mlflow=not args.no_mlflow, on_notice=lambda m: None)
        wall, driver_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        assert outcome.counts.get("ok") == outcome.total, outcome.counts
        accs[name] = accuracies(spec, root)
        walls.setdefault(mode, []).append(round(wall, 1))
        cpus.setdefault(mode, []).append(round(driver_cpu, 1))
        mean = sum(walls[mode]) / len(walls[mode])
        results[mode] = {"wall_s": round(mean, 1), "walls_s": walls[mode], "driver_cpu_s": cpus[mode],
                         "trials": outcome.total,
                         "trials_per_hour": round(outcome.total / mean * 3600),
                         **ran_as(spec),
                         "share_pretraining": share}
    reference = next(iter(accs.values()))
    diffs = {m: max(abs(a[k] - reference[k]) for k in reference) for m, a in accs.items()}
    assert all(a.keys() == reference.keys() for a in accs.values())
    assert max(diffs.values()) <= 1e-6, diffs  # same per-trial test accuracies
    base = results.get("a_trial_by_trial", {}).get("wall_s")
    return {
        "benchmark": "phase_sweep_cost",
        "sweep": {"width": args.width, "clean_epochs_cap": args.epochs, "pretrain_epochs": args.durations,
                  "weight_decays": args.weight_decays, "augmentations": args.augmentations, "seeds": args.seeds},
        "cpus": os.cpu_count(),
        "device": "cpu",
        "mlflow_logging": not args.no_mlflow,
        "runs": results,
        "speedup_over_trial_by_trial": {m: round(base / r["wall_s"], 2) for m, r in results.items()} if base else None,
        "max_test_acc_difference": diffs,
        "target_speedup_c": 5.0,
    }


if __name__ == "__main__":
    main()
