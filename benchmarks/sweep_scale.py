"""Claim (issue 24): the whole product keeps up at thousands of trials on one head: 10,000 tiny
trials with `pack: 1` through Tune and MLflow in at most 20 minutes on 2 cores, driver RSS growth
at most 50 KB per finished trial, every MLflow run FINISHED when `minima run` returns, the
MLflow run at most 1.2x the `--no-mlflow` wall time, export and report each under 60 s.

Evidence: the CLI driven as a user drives it, one subprocess per step: a grid sweep file of N
tiny mnist1d trials (MLP 16x1, 2 clean epochs, pretraining 0 or 1 epoch, flatness off, so the
bookkeeping and not the training is measured) -> `minima run FILE` (local Ray, its own storage
and SQLite store in a new folder) -> `minima export` -> `minima report` (export, phase fit,
HTML). Each (N, mode) runs with and without `--no-mlflow` side by side (the order alternates
between repeats), after one unmeasured warm-up sweep. While `minima run` runs, its RSS is read
from /proc/PID/status every 0.5 s; "start" is the first sample after the first Ray trial's
result.json appears; the CPU seconds of it and every process under it (local Ray, the trial
workers, the MLflow writer) are read every 2 s, by role. Afterwards the SQLite store is read
(child runs by status) and the Ray trials' result.json files give the last trial's end (the newest file's mtime: when the driver
wrote the final result). Prints JSON; `--out` appends every record as a line as it finishes.
Exits non-zero, saying which step, if a run, an export or a report fails.

    python benchmarks/sweep_scale.py [--trials 1000 3000 10000] [--modes packed,unpacked] [--mlflow on,off]
        [--repeats 1] [--out FILE.jsonl] [--keep] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = {"packed": "auto", "unpacked": 1}  # mode -> the sweep file's pack:
CELLS = 4  # pretrain_epochs [0, 1] x two weight decays: seeds fill the rest of N
SAMPLE_S = 0.5


class StepFailed(RuntimeError):
    pass


def sweep_yaml(name: str, trials: int, pack, root: Path) -> str:
    # pretrain_epochs is an axis because `minima report` fits the boundary along it
    return "\n".join([
        f"name: {name}",
        "base: {dataset: mnist1d, model: mlp, width: 16, depth: 1, epochs: 2, stop_at_train_acc: null, "
        "flatness_samples: 0}",
        "axes:",
        "  pretrain_epochs: [0, 1]",
        "  weight_decay: [0.0, 1.0e-4]",
        f"seeds: {math.ceil(trials / CELLS)}",
        "search: grid",
        "resources: {cpu: 1, gpu: 0}",
        f"pack: {pack}",
        f"storage: {root / 'results'}",
        f"tracking_uri: sqlite:///{root / 'mlflow.db'}",
        "",
    ])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "minima.cli", *args]


def child_env() -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # local Ray, never a cluster someone's shell points at
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class RssSampler(threading.Thread):
    """The driver's RSS every SAMPLE_S; marks the sample at which the first Ray trial finished."""

    def __init__(self, pid: int, experiment: Path):
        super().__init__(daemon=True)
        self.pid, self.experiment, self.t0 = pid, experiment, time.perf_counter()
        self.samples: list[tuple[float, float]] = []
        self.first_done: tuple[float, float] | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            rss = rss_mb(self.pid)
            if rss is not None:
                t = time.perf_counter() - self.t0
                self.samples.append((t, rss))
                # globbing stops once found: a 10,000-trial folder is not listed twice a second
                if self.first_done is None and any(p.stat().st_size > 0
                                                   for p in result_files(self.experiment)):
                    self.first_done = (t, rss)
            self.stop.wait(SAMPLE_S)


TICK = os.sysconf("SC_CLK_TCK")
CPU_SAMPLE_S = 2.0


def role(pid: int, ppid: int, driver: int, cmdline: str) -> str:
    if pid == driver:
        return "driver"
    if ppid == driver and "multiprocessing.spawn" in cmdline:
        return "mlflow_writer"
    if cmdline.startswith("ray::") or "default_worker.py" in cmdline:
        return "trial_workers"  # Tune's trial actors and Ray tasks (shared pretraining)
    return "ray_services"  # GCS, raylet, dashboard, log monitor


class TreeCpu(threading.Thread):
    """CPU seconds (user + system) of `minima run` and every process under it (local Ray's
    services and workers, the MLflow writer), by role, read from /proc every CPU_SAMPLE_S: a
    process's last seconds before it exits are missed."""

    def __init__(self, driver: int):
        super().__init__(daemon=True)
        self.driver = driver
        self.last: dict[int, tuple[str, float]] = {}  # pid -> (role, cumulative CPU s)
        self.stop = threading.Event()

    def sample(self) -> None:
        parents, stats = {}, {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            stats[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICK
        for pid in stats:
            chain, p = [], pid
            while p in parents and p != self.driver and p > 1:
                chain.append(p)
                p = parents[p]
            if p != self.driver:
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            known = self.last.get(pid)
            # an exiting process (a zombie) has no command line: it keeps the role it was seen with
            kind = known[0] if known and not cmdline.strip() else role(pid, parents[pid], self.driver, cmdline)
            self.last[pid] = (kind, stats[pid])

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(CPU_SAMPLE_S)

    def by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, cpu in self.last.values():
            out[name] = round(out.get(name, 0.0) + cpu, 1)
        return dict(sorted(out.items()))


def run_step(what: str, cmd: list[str], cwd: Path, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise StepFailed(f"{what} failed (exit {proc.returncode}); its output, last lines:\n"
                         + "\n".join(log.read_text(errors="replace").splitlines()[-15:]) + f"\n(full log: {log})")
    return wall


def run_sweep(name: str, sweep_file: Path, root: Path, mlflow: bool) -> dict:
    log = root / "run.log"
    cmd = cli("run", str(sweep_file), *([] if mlflow else ["--no-mlflow"]))
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        sampler = RssSampler(proc.pid, root / "results" / name)
        sampler.start()
        cpu = TreeCpu(proc.pid)
        cpu.start()
        proc.wait()
    wall = time.perf_counter() - t0
    returned_at = time.time()
    for thread in (sampler, cpu):
        thread.stop.set()
        thread.join()
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise StepFailed(f"`minima run` of {name} failed (exit {proc.returncode}); last lines:\n"
                         + "\n".join(text.splitlines()[-15:]) + f"\n(full log: {log})")
    return {"wall_s": wall, "returned_at": returned_at, "sampler": sampler, "cpu_s": cpu.by_role(),
            "unlogged_warning": next((line.strip() for line in text.splitlines() if "not fully logged" in line), None)}


def rss_fields(sampler: RssSampler, trials: int) -> dict:
    if not sampler.samples:
        return {"rss_start_mb": None, "rss_end_mb": None, "rss_growth_kb_per_1000": None}
    start_at = "first_trial_finished"
    start = sampler.first_done
    if start is None:  # no result.json seen while it ran: fall back to a few seconds in
        start_at = "5s_in"
        start = next((s for s in sampler.samples if s[0] >= 5), sampler.samples[0])
    end = sampler.samples[-1]
    return {
        "rss_start_at": start_at,
        "rss_start_after_s": round(start[0], 1),
        "rss_start_mb": round(start[1], 1),
        "rss_end_mb": round(end[1], 1),
        "rss_peak_mb": round(max(rss for _, rss in sampler.samples), 1),
        # over every trial of the sweep: the few finished by the start sample are counted too
        "rss_growth_mb_per_1000_trials": round((end[1] - start[1]) / trials * 1000, 2),
        "rss_samples": len(sampler.samples),
    }


def result_files(experiment: Path):
    """Every Ray trial's result.json: in the sweep's folder, or in its parts (sweeps/run/parts.py)."""
    yield from experiment.glob("trial_*/result.json")
    yield from experiment.glob("part-*/trial_*/result.json")


def trial_ends(experiment: Path) -> dict:
    """The newest Ray trial's result.json mtime, and its last row's own `timestamp` (whole seconds)."""
    mtimes, stamps = [], []
    for path in result_files(experiment):
        mtimes.append(path.stat().st_mtime)
        lines = path.read_bytes().rstrip().splitlines()
        if lines:
            stamps.append(json.loads(lines[-1]).get("timestamp") or 0)
    return {"ray_trials": len(mtimes), "last_end_mtime": max(mtimes, default=None),
            "last_end_timestamp": max(stamps, default=None)}


def mlflow_counts(db: Path, experiment: str) -> dict:
    if not db.exists():
        return {"child_runs": {}, "parent_runs": {}, "metric_rows": 0}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId'),"
            " r.status, count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id"
            " WHERE e.name = ? AND r.lifecycle_stage = 'active' GROUP BY 1, 2", (experiment,)).fetchall()
        metric_rows = con.execute(
            "SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid"
            " JOIN experiments e ON r.experiment_id = e.experiment_id WHERE e.name = ?", (experiment,)).fetchone()[0]
    finally:
        con.close()
    return {"child_runs": {s: n for child, s, n in rows if child},
            "parent_runs": {s: n for child, s, n in rows if not child}, "metric_rows": metric_rows}


def export_status(trials_parquet: Path) -> dict:
    import pyarrow.parquet as pq

    statuses = pq.read_table(trials_parquet, columns=["status"]).column("status").to_pylist()
    return {s: statuses.count(s) for s in sorted(set(statuses), key=str)}


def measure_one(base: Path, trials: int, mode: str, mlflow: bool, repeat: int) -> dict:
    name = f"scale_{trials}_{mode}_{'mlflow' if mlflow else 'nomlflow'}_{repeat}"
    root = base / name
    root.mkdir(parents=True)
    sweep_file = root / "sweep.yaml"
    sweep_file.write_text(sweep_yaml(name, trials, MODES[mode], root))
    load_before, started = os.getloadavg(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run = run_sweep(name, sweep_file, root, mlflow)
    experiment = root / "results" / name
    ends = trial_ends(experiment)
    store = mlflow_counts(root / "mlflow.db", name) if mlflow else None
    no_ml = [] if mlflow else ["--no-mlflow"]
    storage = str(root / "results")
    export_s = run_step(f"`minima export` of {name}",
                           cli("export", name, "--storage", storage, "--out", str(root / "export"), *no_ml),
                           root, root / "export.log")
    statuses = export_status(root / "export" / "trials.parquet")
    report_s = run_step(f"`minima report` of {name}",
                           cli("report", name, "--storage", storage, "--out", str(root / "report"), *no_ml),
                           root, root / "report.log")
    total = sum(statuses.values())
    if statuses.get("ok") != total:
        raise StepFailed(f"{name}: trials not all ok in the export: {statuses} (folder {root})")
    record = {
        "benchmark": "sweep_scale",
        "trials_requested": trials,
        "trials": total,
        "mode": mode,
        "pack": MODES[mode],
        "ray_trials": ends["ray_trials"],
        "tune_experiments": max(1, len(list(experiment.glob("part-*")))),  # sweeps/run/parts.py
        "mlflow": mlflow,
        "repeat": repeat,
        "started_utc": started,
        "run_wall_s": round(run["wall_s"], 1),
        "trials_per_s": round(total / run["wall_s"], 2),
        **rss_fields(run["sampler"], total),
        "cpu_s_by_process": run["cpu_s"],
        "cpu_s_total": round(sum(run["cpu_s"].values()), 1),
        "last_trial_end_to_return_s": (round(run["returned_at"] - ends["last_end_mtime"], 1)
                                       if ends["last_end_mtime"] else None),
        "last_trial_end_source": "newest [part-*/]trial_*/result.json mtime",
        "last_trial_timestamp_to_return_s": (round(run["returned_at"] - ends["last_end_timestamp"], 1)
                                             if ends["last_end_timestamp"] else None),
        "export_s": round(export_s, 1),
        "report_s": round(report_s, 1),
        "export_statuses": statuses,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "storage_mb": round(sum(p.stat().st_size for p in experiment.rglob("*") if p.is_file()) / 2**20, 1),
    }
    if mlflow:
        child = store["child_runs"]
        record.update({
            "mlflow_finished_runs": child.get("FINISHED", 0),
            "mlflow_running_runs": child.get("RUNNING", 0),
            "mlflow_child_runs_by_status": child,
            "mlflow_parent_runs_by_status": store["parent_runs"],
            "mlflow_metric_rows": store["metric_rows"],
            "mlflow_all_logged": child.get("FINISHED", 0) == total and sum(child.values()) == total,
            "unlogged_warning": run["unlogged_warning"],
        })
    return record


def summarize(records: list[dict]) -> dict:
    out = {}
    for key in sorted({(r["trials"], r["mode"]) for r in records}):
        group = [r for r in records if (r["trials"], r["mode"]) == key]
        walls = {flag: [r["run_wall_s"] for r in group if r["mlflow"] is flag] for flag in (True, False)}
        ratios = [on["run_wall_s"] / off["run_wall_s"] for on in group if on["mlflow"]
                  for off in group if not off["mlflow"] and off["repeat"] == on["repeat"]]
        out[f"{key[0]}_{key[1]}"] = {
            "trials": key[0], "mode": key[1],
            "wall_s_mlflow": walls[True], "wall_s_no_mlflow": walls[False],
            "mlflow_over_no_mlflow": [round(x, 2) for x in ratios],
            "mlflow_over_no_mlflow_mean": round(statistics.mean(ratios), 2) if ratios else None,
            "n": len(ratios),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[200],
                        help=f"sweep sizes (rounded up to a multiple of {CELLS}), e.g. 1000 3000 10000")
    parser.add_argument("--modes", default="packed,unpacked", help="packed (pack: auto), unpacked (pack: 1)")
    parser.add_argument("--mlflow", default="on,off", help="on, off or both: off runs `minima run --no-mlflow`")
    parser.add_argument("--repeats", type=int, default=1, help="each (N, mode, mlflow) this many times, interleaved")
    parser.add_argument("--out", help="append every raw record (and the summary) to this JSONL file")
    parser.add_argument("--keep", action="store_true", help="keep the sweeps' folders (results, stores, exports)")
    parser.add_argument("--dir", help="make the work folder here (default: the system's temp dir)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the unmeasured warm-up sweep")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",")]
    flags = [f.strip() for f in args.mlflow.split(",")]
    if bad := [m for m in modes if m not in MODES]:
        parser.error(f"--modes: unknown {bad}; use {', '.join(MODES)}")
    if bad := [f for f in flags if f not in ("on", "off")]:
        parser.error(f"--mlflow: unknown {bad}; use on, off")
    base = Path(tempfile.mkdtemp(prefix="minima-scale-", dir=args.dir))
    records: list[dict] = []
    try:
        if not args.no_warmup:  # page cache, the mnist1d arrays, Ray's first start: paid here, not in a record
            measure_one(base / "warmup", 8, "packed", False, 0)
        for repeat in range(args.repeats):
            for trials in args.trials:
                for mode in modes:
                    # alternate which logging mode goes first: this machine's speed drifts within minutes
                    for flag in (flags if repeat % 2 == 0 else flags[::-1]):
                        record = measure_one(base, trials, mode, flag == "on", repeat)
                        records.append(record)
                        print(json.dumps(record), file=sys.stderr)
                        if args.out:
                            with open(args.out, "a") as f:
                                f.write(json.dumps(record) + "\n")
    except StepFailed as err:
        print(f"sweep_scale: {err}", file=sys.stderr)
        print(f"sweep_scale: work folder kept for inspection: {base}", file=sys.stderr)
        return 1
    summary = {"benchmark": "sweep_scale", "kind": "summary", "summary": summarize(records),
               "targets": {"unpacked_10000_run_wall_s": 1200, "rss_growth_mb_per_1000_trials": 50,
                           "mlflow_over_no_mlflow": 1.2, "export_s": 60, "report_s": 60},
               "kept": str(base) if args.keep else None}
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(summary) + "\n")
    print(json.dumps({**summary, "records": records}, indent=2))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
