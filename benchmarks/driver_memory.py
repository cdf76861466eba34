"""Claim (issue 24): what a sweep's driver keeps per finished trial, by where it was allocated.

Evidence: one `minima run` of N tiny mnist1d trials (the sweep_scale sweep file), in this
process, with one more Tune callback. It starts tracemalloc (8 frames) and, when A and then B
trials have finished, takes a snapshot; the diff between the two, divided by B - A, is the
bytes each finished trial added, grouped by the innermost frame in Ray, our code or the
standard library that allocated it. At B it also prints how big each part of one finished
Tune Trial is when serialised (a proxy for what it holds), and how many entries our callbacks
hold. tracemalloc slows the driver down: read the bytes, not the times.

    python benchmarks/driver_memory.py [--trials 600] [--at 150 450] [--pack 1] [--mlflow on]
        [--dir DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.sweep_scale import sweep_yaml  # noqa: E402

FRAMES = 8
TOP = 25


def site(trace: tracemalloc.StatisticDiff) -> str:
    """The innermost frame outside tracemalloc-noise modules (json encoder, copy, pickle)."""
    frames = list(trace.traceback)[::-1]  # tracemalloc lists the oldest frame first
    for fr in frames:
        if not any(s in fr.filename for s in ("/json/", "/copy.py", "/pickle.py", "/copyreg.py", "/abc.py")):
            return f"{fr.filename.split('site-packages/')[-1].replace(str(REPO) + '/', '')}:{fr.lineno}"
    fr = frames[0]
    return f"{fr.filename}:{fr.lineno}"


def pickled(obj) -> int:
    try:
        return len(pickle.dumps(obj, protocol=5))
    except Exception:
        import cloudpickle

        return len(cloudpickle.dumps(obj))


def trial_parts(trial) -> dict:
    md = trial.run_metadata
    cm = md.checkpoint_manager
    parts = {
        "last_result": pickled(md.last_result),
        "last_result_records": pickled(md.last_result.get("records")),
        "metric_analysis": pickled(md.metric_analysis),
        "metric_n_steps": pickled(md.metric_n_steps),
        "metric_keys": len(md.metric_analysis),
        "checkpoint_manager": pickled(cm) if cm is not None else 0,
        "checkpoint_results": len(cm._checkpoint_results) if cm is not None else 0,
        "run_metadata_cached_json": len(md._cached_json or ""),
        "trial_state_json": len(trial._state_json or ""),
        "config": pickled(trial.config),
        "evaluated_params": pickled(trial.evaluated_params),
    }
    return parts


def callback_entries(callbacks) -> dict:
    out = {}
    for cb in callbacks:
        name = type(cb).__name__
        for obj in (cb, getattr(cb, "writer", None)):
            if obj is None:
                continue
            for k, v in vars(obj).items():
                if isinstance(v, (dict, set, list)) and k != "tags":
                    out[f"{name}.{type(obj).__name__}.{k}"] = len(v)
    return out


def container_sizes(obj, prefix: str) -> dict:
    return {f"{prefix}.{k}": len(v) for k, v in vars(obj).items()
            if isinstance(v, (dict, set, list)) and len(v) > 10}


def controller_entries() -> dict:
    """Sizes of the Tune controller's and its actor manager's containers (they hold what
    Tune keeps per trial and per actor task)."""
    from ray.tune.execution.tune_controller import TuneController

    out: dict = {}
    for obj in gc.get_objects():
        if isinstance(obj, TuneController):
            out.update(container_sizes(obj, "TuneController"))
            am = obj._actor_manager
            out.update(container_sizes(am, "RayActorManager"))
            for name in ("_actor_task_events", "_actor_state_events"):
                out.update(container_sizes(getattr(am, name), name))
    return out


def make_probe(at: tuple[int, int], report: dict, callbacks_ref: list):
    from ray.tune import Callback

    class Probe(Callback):
        def __init__(self):
            self.done = 0
            self.snaps = {}

        def setup(self, **info):
            tracemalloc.start(FRAMES)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            if self.done not in at:
                return
            gc.collect()
            self.snaps[self.done] = tracemalloc.take_snapshot()
            types = Counter(type(o).__name__ for o in gc.get_objects())
            report.setdefault("gc_types", {})[self.done] = dict(types.most_common(40))
            report.setdefault("traced_mb", {})[self.done] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
            report.setdefault("callback_entries", {})[self.done] = callback_entries(callbacks_ref)
            report.setdefault("controller_entries", {})[self.done] = controller_entries()
            if os.environ.get("DRIVER_MEMORY_DUMP"):
                self.snaps[self.done].dump(f"{os.environ['DRIVER_MEMORY_DUMP']}.{self.done}")
            if self.done == at[1]:
                self._diff(trials, trial)

        def _diff(self, trials, trial):
            a, b = at
            per = b - a
            stats = self.snaps[b].compare_to(self.snaps[a], "traceback")
            sites: Counter = Counter()
            for s in stats:
                sites[site(s)] += s.size_diff
            report["per_trial_bytes_total"] = round(sum(s.size_diff for s in stats) / per)
            report["per_trial_bytes_by_site"] = {k: round(v / per) for k, v in sites.most_common(TOP)}
            finished = [t for t in trials if t.status == "TERMINATED"]
            report["finished_trial_parts"] = trial_parts(finished[len(finished) // 2])
            report["trials_in_controller"] = len(trials)
            ta, tb = report["gc_types"][a], report["gc_types"][b]
            report["gc_type_growth_per_trial"] = {k: round((tb.get(k, 0) - ta.get(k, 0)) / per, 2)
                                                  for k in tb if tb.get(k, 0) - ta.get(k, 0) > per / 2}

    return Probe()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=600)
    ap.add_argument("--at", type=int, nargs=2, default=[150, 450])
    ap.add_argument("--pack", default="1")
    ap.add_argument("--mlflow", choices=["on", "off"], default="on")
    ap.add_argument("--dir")
    ap.add_argument("--out")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="minima-drivermem-", dir=args.dir))
    name = f"drivermem_{args.trials}"
    sweep_file = root / f"{name}.yaml"
    sweep_file.write_text(sweep_yaml(name, args.trials, int(args.pack) if args.pack.isdigit() else args.pack, root))
    os.environ.pop("RAY_ADDRESS", None)

    from sweeps import tuner
    from sweeps.cli import main as cli_main

    report: dict = {"benchmark": "driver_memory", "trials": args.trials, "pack": args.pack,
                    "mlflow": args.mlflow == "on", "at": args.at, "frames": FRAMES}
    callbacks_ref: list = []
    plain = tuner.tune_callbacks

    def with_probe(spec, log_to_mlflow):
        cbs = plain(spec, log_to_mlflow)
        callbacks_ref.extend(cbs)
        return cbs + [make_probe(tuple(args.at), report, callbacks_ref)]

    tuner.tune_callbacks = with_probe
    os.chdir(root)
    rc = cli_main(["run", str(sweep_file), *([] if args.mlflow == "on" else ["--no-mlflow"])])
    report["rc"] = rc
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
