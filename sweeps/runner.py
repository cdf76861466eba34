"""Run and resume a sweep on Ray Tune (local Ray by default, a cluster via RAY_ADDRESS).

Every check that can fail does so before Ray schedules a trial: the sweep file, the storage
path, GPUs on local Ray, a name already used.
"""

from __future__ import annotations

from .notices import plan_lines, report_sharing
from .outcome import SweepOutcome, count_outcome
from .plan import SweepPlan, planned
from .ray_cluster import cluster_cpus, cluster_notice, init_ray, local_slots, preflight
from .safe_storage import prune_unreferenced_checkpoints
from .spec import SweepError, SweepSpec
from .sweep_files import experiment_path, logs_to_mlflow, read_spec, run_settings, snapshot_store, write_spec
from .tuner import build_tuner, has_results, only_json_results, pending_trials, restore_tuner
from .tuner import trial_dirname  # noqa: F401 - sweeps stored before sweeps.tuner existed pickled it by this path


def _start_ray(spec: SweepSpec, on_notice) -> None:
    init_ray()
    notice = cluster_notice(spec)
    if notice:
        on_notice(notice)


def _fit(plan: SweepPlan, make_tuner):
    with pending_trials(plan, cluster_cpus()):
        return make_tuner().fit()


def _finish(spec: SweepSpec, grid) -> SweepOutcome:
    prune_unreferenced_checkpoints(experiment_path(spec), grid)
    return count_outcome(spec, grid)


def run_sweep(spec: SweepSpec, log_to_mlflow: bool = True, on_notice=print, source: str = "sweep") -> SweepOutcome:
    """Start a new sweep; refuses a name that already has results (use resume_sweep)."""
    preflight(spec, source, tracking=log_to_mlflow)
    if has_results(spec):
        raise SweepError(f"sweep {spec.name!r} already has results at {experiment_path(spec)}: "
                         f"`minima resume {spec.name}` continues it, or pass --name NEW_NAME")
    _start_ray(spec, on_notice)
    spec, plan = planned(spec, local_slots(spec))
    for line in plan_lines(plan):
        on_notice(line)
    write_spec(spec, log_to_mlflow)
    only_json_results(True)
    grid = _fit(plan, lambda: build_tuner(spec, plan, log_to_mlflow))
    report_sharing(plan, snapshot_store(spec), on_notice)
    return _finish(spec, grid)


def resume_sweep(name: str, storage: str = "minima_results", on_notice=print) -> SweepOutcome:
    """Finish an interrupted sweep: unfinished trials resume from their last checkpoint and
    errored ones are retried (Tuner.restore with resume_errored=True). Its callbacks, the MLflow
    logger included, come back from the stored experiment state."""
    spec = read_spec(name, storage)
    if not has_results(spec):
        raise SweepError(f"sweep {name!r} at {experiment_path(spec)} has no Ray experiment state to resume from")
    preflight(spec, name, tracking=logs_to_mlflow(spec))
    _start_ray(spec, on_notice)
    from .missing_pretrainings import run_missing_pretrainings

    slots = local_slots(spec)
    spec, plan = planned(spec, slots)  # the stored spec: its pack_plan as the sweep started
    run_missing_pretrainings(spec, plan, snapshot_store(spec), slots, on_notice)  # what a killed driver never finished
    only_json_results(bool(run_settings(spec).get("json_logger_only")))
    tuner = restore_tuner(spec)
    return _finish(spec, _fit(plan, lambda: tuner))
