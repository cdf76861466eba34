"""Claim (issue 24): what a sweep's driver keeps per finished trial, by where it was allocated.

Evidence: one `minima run` of N tiny mnist1d trials (the sweep_scale sweep file), in this
process, with one more Tune callback. It starts tracemalloc (8 frames) and, when A and then B
trials have finished, takes a snapshot; the diff between the two, divided by B - A, is the
bytes each finished trial added, grouped by the innermost frame in Ray, our code or the
standard library that allocated it. At B it also prints how big each part of one finished
Tune Trial is when serialised (a proxy for what it holds), and how many entries our callbacks
hold. tracemalloc slows the driver down: read the bytes, not the times.

With --no-trace it instead reads, at A and B, RSS, glibc's heap, the Ray object references the
driver holds and the Tune controller's container sizes, and times each of Tune's experiment
snapshots (wall and Tune's thread's CPU seconds, with the number of finished trials it held).
Prints JSON; `--out` appends it as one line.

    python benchmarks/driver_memory.py [--trials 600] [--at 150 450] [--pack 1] [--mlflow on]
        [--no-trace] [--dir DIR] [--out FILE.json] [--keep]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
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


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def malloc_mb() -> dict:
    """glibc's heap: bytes in use, free but kept, and mmapped blocks (mallinfo2)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return {k: round(getattr(info, k) / 2**20, 1) for k in ("arena", "uordblks", "fordblks", "hblkhd")}


def ray_object_refs() -> int:
    """Object references the driver's Ray core worker counts (it holds each one's value while counted)."""
    import ray

    return len(ray._private.worker.global_worker.core_worker.get_all_reference_counts())


def time_snapshots(report: dict) -> None:
    """Wrap Tune's experiment snapshot (every trial's state, written as one JSON file) to time each."""
    from ray.tune.execution.tune_controller import TuneController

    plain = TuneController.save_to_dir
    snaps = report.setdefault("snapshots", [])

    def timed(self, *args, **kwargs):
        t0, c0 = time.perf_counter(), time.thread_time()
        out = plain(self, *args, **kwargs)
        finished = sum(t.status in ("TERMINATED", "ERROR") for t in self._trials)
        snaps.append((round(time.perf_counter() - t0, 4), round(time.thread_time() - c0, 4), finished))
        return out

    TuneController.save_to_dir = timed


def make_probe(at: tuple[int, int], report: dict, callbacks_ref: list, trace: bool = True):
    from ray.tune import Callback

    class Probe(Callback):
        def __init__(self):
            self.done = 0
            self.snaps = {}

        def setup(self, **info):
            if trace:
                tracemalloc.start(FRAMES)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            if self.done not in at:
                return
            gc.collect()
            if not trace:
                report.setdefault("rss_mb", {})[self.done] = rss_mb()
                report.setdefault("ray_object_refs", {})[self.done] = ray_object_refs()
                report.setdefault("gc_objects", {})[self.done] = len(gc.get_objects())
                report.setdefault("malloc_mb", {})[self.done] = malloc_mb()
                report.setdefault("controller_entries", {})[self.done] = controller_entries()
                return
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
    ap.add_argument("--no-trace", action="store_true", help="no tracemalloc: time Tune's snapshots, read RSS")
    ap.add_argument("--dir")
    ap.add_argument("--out")
    ap.add_argument("--keep", action="store_true", help="keep the sweep's folder")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="minima-drivermem-", dir=args.dir))
    name = f"drivermem_{args.trials}"
    sweep_file = root / f"{name}.yaml"
    sweep_file.write_text(sweep_yaml(name, args.trials, int(args.pack) if args.pack.isdigit() else args.pack, root))
    os.environ.pop("RAY_ADDRESS", None)

    from sweeps.run import tuner
    from minima.cli import main as cli_main

    report: dict = {"benchmark": "driver_memory", "trials": args.trials, "pack": args.pack,
                    "mlflow": args.mlflow == "on", "at": args.at, "traced": not args.no_trace,
                    "frames": FRAMES, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "loadavg_before": list(os.getloadavg())}
    callbacks_ref: list = []
    plain = tuner.tune_callbacks

    def with_probe(*args_, **kwargs):
        cbs = plain(*args_, **kwargs)
        callbacks_ref.extend(cbs)
        return cbs + [make_probe(tuple(args.at), report, callbacks_ref, trace=not args.no_trace)]

    tuner.tune_callbacks = with_probe
    time_snapshots(report)
    os.chdir(root)
    t0, c0 = time.perf_counter(), time.process_time()
    rc = cli_main(["run", str(sweep_file), *([] if args.mlflow == "on" else ["--no-mlflow"])])
    report["rc"] = rc
    report["driver_wall_s"], report["driver_cpu_s"] = round(time.perf_counter() - t0, 1), round(time.process_time() - c0, 1)
    snaps = report.get("snapshots", [])
    report["snapshot_count"] = len(snaps)
    report["snapshot_wall_s"] = round(sum(s[0] for s in snaps), 2)
    report["snapshot_cpu_s"] = round(sum(s[1] for s in snaps), 2)
    state = sorted(root.glob("results/*/experiment_state-*.json"))
    report["experiment_state_mb"] = round(state[-1].stat().st_size / 2**20, 2) if state else None
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    report["loadavg_after"] = list(os.getloadavg())
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "a") as out:
            out.write(json.dumps(report) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
