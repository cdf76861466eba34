"""Where a sweep stands, from its storage alone (a local path or `s3://`): its trials per
outcome, the hours its Ray trials ran and what they held, whether MLflow holds every trial as
last checked, and per part its own counts, the slowest Ray trials, an ETA and the failures.
It starts no Ray and asks no tracking server, so it answers from a laptop while the sweep runs
on a cluster. `minima status` prints it (`status_lines`).

A trial is counted once (a pack's members one by one): ok or diverged by its final row; else
running or pending as Tune's newest stored experiment state lists its Ray trial; else error
when its Ray trial left an error.txt; else unfinished. A planned trial no experiment holds yet
is pending. Running and pending are what Tune last stored: a driver that was killed leaves
them so until `minima resume`, hence the state's age beside them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from trainables.uri import filesystem

from ..design.spec import SweepError, SweepSpec
from ..storage.costs import held_s, shares
from ..storage.results import list_parts, list_trial_dirs, read_trial_error
from ..storage.sweep_files import (OWN, RUN_FILE, experiment_path, held_resources, list_sweeps, part_done,
                                   read_mlflow_check, read_spec, run_settings, storage_root)
from ..storage.trial_end import TrialEnd, read_trial_end
from ..storage.tune_state import TuneState, read_tune_state

OUTCOMES = ("ok", "diverged", "error", "running", "pending")  # always shown; "unfinished" when there are any
_WAITING = {"RUNNING": "running", "ERROR": "error"}  # a Ray trial Tune lists without a started folder: else pending
SLOWEST = 5  # Ray trials listed as the slowest
ETA_WINDOW = 100  # the ETA's rate: over at most this many of the latest finished trials
# no ETA once nothing has finished for this many of those trials' mean intervals (and 5 minutes):
# a stopped driver, whose Tune state still says running, not a rate
STALLED_INTERVALS, STALLED_MIN_S = 20, 300.0
ERROR_TAIL = 5  # last lines of a failed trial's error kept
READERS = 8  # result files read at once: object stores answer each read slowly, local disks do not mind


@dataclass
class RayTrial:
    where: str  # its folder inside the sweep's: trial_<id> or part-<k>/trial_<id>
    end: TrialEnd
    outcomes: list[str]  # per member
    error: str | None = None


@dataclass
class Experiment:
    """One Tune experiment of the sweep: the sweep's own folder, or one part of it."""
    name: str  # its part's folder, or OWN: the sweep's own folder (a sweep run as one experiment)
    done: bool  # a part whose every trial ended without error (a resume skips it)
    state_saved: float | None  # when Tune last stored its state (None: done, or none stored)
    ray_trials: list[RayTrial] = field(default_factory=list)
    waiting: Counter = field(default_factory=Counter)  # trials of Ray trials Tune lists but that have no folder yet
    extension: int = 0  # which run of the sweep made it: 0 the first, k its k-th extension
    held: tuple[float, float] = (0.0, 0.0)  # CPUs and GPUs each of its Ray trials held (its run's resources)



def storage_status(storage: str) -> dict[str, Any]:
    """Every sweep under `storage`, each as `summary` gives it; one this version cannot read
    says why, and the others are still listed."""
    sweeps = []
    with _reading(storage):
        for name in list_sweeps(storage):
            try:
                sweeps.append(summary(sweep_status(name, storage)))
            except SweepError as err:
                sweeps.append({"name": name, "error": str(err)})
    return {"storage": storage_root(storage), "sweeps": sweeps}


def sweep_status(name: str, storage: str) -> dict[str, Any]:
    """The sweep's status as a JSON-ready dict (see the module's docstring)."""
    with _reading(storage):
        return _sweep_status(name, storage)


@contextlib.contextmanager
def _reading(storage: str):
    """A storage that goes away, or refuses a read, midway: bad input in one line, not a traceback."""
    try:
        yield
    except OSError as err:
        raise SweepError(f"storage: cannot read {storage_root(storage)} ({err}); check the path or URI and its "
                         f"credentials") from None


def _sweep_status(name: str, storage: str) -> dict[str, Any]:
    spec = read_spec(name, storage)
    path = experiment_path(spec)
    settings = run_settings(spec)
    experiments = _experiments(path)
    held = held_resources(spec)
    for e in experiments:
        e.extension, e.held = held.of_part("" if e.name == OWN else e.name)
    trials = [t for e in experiments for t in e.ray_trials]
    counts = Counter(o for t in trials for o in t.outcomes)
    for e in experiments:
        counts.update(e.waiting)
    capped = spec.search.kind == "boundary"  # its budget is a cap, not a count of trials owed
    total = spec.num_trials()
    not_started = 0 if capped else max(0, total - sum(counts.values()))
    counts["pending"] += not_started
    finished = counts["ok"] + counts["diverged"]
    ends = sorted(ts for t in trials for row in t.end.finals.values() if (ts := row.get("timestamp")) is not None)
    return {
        "name": spec.name, "path": path, "search": spec.search.kind,
        "trials": sum(counts.values()) if capped else total, "budget": total if capped else None,
        "counts": {k: counts[k] for k in OUTCOMES} | ({"unfinished": counts["unfinished"]} if counts["unfinished"] else {}),
        "started": _when(settings.get("started") or _modified(f"{path}/{RUN_FILE}")),
        "last_result": _when(max((t.end.timestamp for t in trials if t.end.timestamp), default=None)),
        "ray_trials": len(trials),
        "trial_hours": _hours(t.end.time_total_s for t in trials),
        "cost": _cost(spec, experiments),
        "mlflow": _mlflow(spec, settings, path, finished),
        "eta_s": None if capped else eta_s(ends, counts["running"] + counts["pending"], time.time()),
        "parts": [_part(e, spec) for e in experiments] if len(experiments) > 1 else [],
        "not_started": not_started,
        "slowest": [_trial_line(t) for t in sorted(trials, key=lambda t: -(t.end.time_total_s or 0))[:SLOWEST]],
        "failed": [{**_trial_line(t), "error": t.error} for t in trials if "error" in t.outcomes],
    }


def summary(status: dict[str, Any]) -> dict[str, Any]:
    """A sweep's status without its per-trial lists (as every sweep of a storage is listed)."""
    return {k: v for k, v in status.items() if k not in ("parts", "slowest", "failed")}


def _experiments(path: str) -> list[Experiment]:
    """The sweep's Tune experiments, each with its Ray trials read (in parallel)."""
    dirs = list_trial_dirs(path)
    parts = list_parts(path)
    own = [d for d in dirs if d.rsplit("/", 1)[0] == path]
    experiments = [_experiment(path, OWN, own)] if own or not parts else []
    for part in parts:
        experiments.append(_experiment(f"{path}/{part}", part, [d for d in dirs if d.startswith(f"{path}/{part}/")]))
    return experiments


def _experiment(path: str, name: str, dirs: list[str]) -> Experiment:
    done = part_done(path) is not None
    state: TuneState | None = None if done else read_tune_state(path)
    statuses = state.statuses if state else {}
    experiment = Experiment(name, done, state.saved if state else None)
    with ThreadPoolExecutor(READERS) as pool:
        ends = list(pool.map(read_trial_end, dirs))
    started = set()
    for trial_dir, end in zip(dirs, ends):
        folder = trial_dir.rsplit("/", 1)[-1]
        trial_id = folder.removeprefix("trial_")
        if end.members:  # else Tune made its folder, and it has not started
            where = folder if name == OWN else f"{name}/{folder}"
            experiment.ray_trials.append(_ray_trial(where, trial_dir, end, statuses.get(trial_id), state is not None))
            started.add(trial_id)
    for trial_id, status in statuses.items():
        if trial_id not in started:
            experiment.waiting[_WAITING.get(status, "pending")] += state.sizes[trial_id]
    return experiment


def _ray_trial(where: str, trial_dir: str, end: TrialEnd, status: str | None, in_state: bool) -> RayTrial:
    trial = RayTrial(where, end, [])
    for m in range(len(end.members)):
        if m in end.finals:
            outcome = end.finals[m].get("status") or "ok"
        elif status == "RUNNING":
            outcome = "running"
        elif status in ("PENDING", "PAUSED"):
            outcome = "pending"
        else:
            if trial.error is None:
                trial.error = _error_tail(read_trial_error(trial_dir))
            # started since Tune last stored its state: running, as far as storage can tell
            outcome = "error" if trial.error else ("running" if status is None and in_state else "unfinished")
        trial.outcomes.append(outcome)
    return trial


def _error_tail(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return "\n".join(lines[-ERROR_TAIL:])[-1000:]


def _cost(spec: SweepSpec, experiments: list[Experiment]) -> dict[str, Any]:
    """What the Ray trials held (their run's resources for Tune's time of each), in all and per
    cell: the trials that differ only by seed, a phase diagram's cell over every axis."""
    cells: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    accelerators: Counter = Counter()
    ray_trials = [(t, *e.held) for e in experiments for t in e.ray_trials]
    for t, cpu, gpu in ray_trials:
        seconds = t.end.time_total_s or 0.0
        for values, share in zip(t.end.members, shares(t.end.epochs)):
            cell = cells[tuple((axis, repr(values.get(axis))) for axis in spec.axes)]
            cell[0] += held_s(seconds, cpu, share)
            cell[1] += held_s(seconds, gpu, share)
        types = {row.get("accelerator_type") for row in t.end.finals.values()} - {None}
        accelerators.update({kind: held_s(seconds, gpu) / 3600 for kind in types})
    per_cell = [(c / 3600, g / 3600) for c, g in cells.values()]
    return {
        "cpu_per_ray_trial": spec.resources.cpu, "gpu_per_ray_trial": spec.resources.gpu,
        "cpu_hours": _hours(held_s(t.end.time_total_s, cpu) for t, cpu, _ in ray_trials),
        "gpu_hours": _hours(held_s(t.end.time_total_s, gpu) for t, _, gpu in ray_trials),
        "gpu_hours_by_accelerator": dict(accelerators),
        "cells": len(per_cell),
        "cell_cpu_hours_mean": sum(c for c, _ in per_cell) / len(per_cell) if per_cell else None,
        "cell_cpu_hours_max": max((c for c, _ in per_cell), default=None),
        "cell_gpu_hours_mean": sum(g for _, g in per_cell) / len(per_cell) if per_cell else None,
        "cell_gpu_hours_max": max((g for _, g in per_cell), default=None),
    }


def _mlflow(spec: SweepSpec, settings: dict, path: str, finished: int) -> dict[str, Any]:
    """Whether MLflow holds every finished trial, as the last check found it (stored beside the
    sweep by the sweep's end and by `minima sync-mlflow`), without asking the tracking server."""
    replay = f"minima sync-mlflow {spec.name} --storage {spec.storage}"
    if not settings.get("log_to_mlflow"):
        return {"state": "off", "detail": f"run with --no-mlflow; `{replay}` logs it"}
    check = read_mlflow_check(path)
    if check is None:
        return {"state": "unknown", "detail": "not checked yet: a sweep checks MLflow when its run ends"}
    at = f"at {check['tracking_uri']}, checked {_when(check['checked'])}"
    if check["finished"] != finished:
        return {"state": "unknown", "detail": f"{check['finished']} finished trials when last checked, {finished} "
                                              f"now ({at})"}
    if check["missing"] or check["error"]:
        why = f" (tracking server: {check['error']})" if check["error"] else ""
        return {"state": "incomplete", "detail": f"{check['missing']} of {check['finished']} finished trials not "
                                                 f"confirmed{why} {at}; `{replay}` replays them"}
    return {"state": "complete", "detail": f"every finished trial {at}"}


def eta_s(ends: list[int], remaining: int, now: float) -> float | None:
    """Seconds until the `remaining` trials end, at the rate the latest ones finished (`ends`:
    when each finished, sorted); None when that rate is unknown or has stalled."""
    window = ends[-ETA_WINDOW:]
    if not remaining or len(window) < 2 or window[-1] <= window[0]:
        return None
    interval = (window[-1] - window[0]) / (len(window) - 1)
    if now - window[-1] > max(STALLED_MIN_S, STALLED_INTERVALS * interval):
        return None
    return remaining * interval


def _part(e: Experiment, spec: SweepSpec) -> dict[str, Any]:
    counts = Counter(o for t in e.ray_trials for o in t.outcomes) + e.waiting
    return {"part": e.name, "extension": e.extension, "done": e.done, "counts": dict(counts),
            "ray_trials": len(e.ray_trials), "trial_hours": _hours(t.end.time_total_s for t in e.ray_trials),
            "cpu_hours": _hours(held_s(t.end.time_total_s, e.held[0]) for t in e.ray_trials),
            "gpu_hours": _hours(held_s(t.end.time_total_s, e.held[1]) for t in e.ray_trials),
            "state_saved": _when(e.state_saved)}


def _trial_line(t: RayTrial) -> dict[str, Any]:
    return {"trial": t.where, "hours": _hours([t.end.time_total_s]), "members": len(t.outcomes),
            "outcomes": dict(Counter(t.outcomes))}


def _hours(seconds) -> float:
    return sum(s for s in seconds if s is not None) / 3600


def _when(timestamp: float | None) -> str | None:
    return None if timestamp is None else dt.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _modified(path: str) -> float | None:
    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    return info.mtime.timestamp() if info.mtime is not None else None
