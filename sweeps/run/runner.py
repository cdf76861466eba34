"""Run and resume a sweep on Ray Tune (local Ray by default, a cluster via RAY_ADDRESS).

Every check that can fail does so before Ray schedules a trial: the sweep file, the storage
path, GPUs on local Ray, a name already used.
"""

from __future__ import annotations

import contextlib
from collections import Counter

from .notices import plan_lines, report_sharing
from .outcome import SweepOutcome, sweep_outcome, tally
from .parts import clear_unsaved_part, part_count, ray_trials_per_part, split_plan
from ..design.extension import extension_of, trial_keys
from ..design.boundary_grid import search_cell
from ..design.plan import SweepPlan, planned
from ..cluster.ray_cluster import cluster_cpus, cluster_notice, init_ray, local_slots, preflight
from ..storage.safe_storage import prune_unreferenced_checkpoints
from ..design.spec import SweepError, SweepSpec, parse_sweep
from ..storage.results import stored_finals
from ..storage.sweep_files import (add_extension, check_only_yours, experiment_path, logs_to_mlflow, mark_part_done,
                                   part_done, part_path, read_spec, run_settings, snapshot_store, write_spec)
from .tuner import (build_tuner, can_restore, has_results, mlflow_writer, only_json_results, pending_trials,
                    restore_tuner)
from .tuner import trial_dirname  # noqa: F401 - some stored sweeps pickled it as sweeps.runner.trial_dirname


def _start_ray(spec: SweepSpec, on_notice) -> None:
    init_ray()
    notice = cluster_notice(spec)
    if notice:
        on_notice(notice)


def claim_tracking(spec: SweepSpec, source: str) -> None:
    """The sweep's MLflow experiment made by this client, or refused when others may change it
    (before Ray starts; the writer checks again when it connects)."""
    from ..cluster.mlflow_auth import claim_experiment
    from ..tracking.mlflow_writer import EXPERIMENT_KIND

    problem = claim_experiment(spec.tracking_uri, spec.name, dict([EXPERIMENT_KIND]))
    if problem:
        raise SweepError(f"{source}: tracking_uri: {problem}")


def _fit(plan: SweepPlan, make_tuner):
    with pending_trials(plan, cluster_cpus()):
        return make_tuner().fit()


@contextlib.contextmanager
def _mlflow_writer(spec: SweepSpec, log_to_mlflow: bool):
    """The run's MLflow writer process (None without MLflow), stopped however the run ends: after
    a sweep that returned `_conclude` has stopped it already."""
    writer = mlflow_writer(spec) if log_to_mlflow else None
    if writer is not None:
        writer.start()  # it imports MLflow while Tune sets up
    try:
        yield writer
    finally:
        if writer is not None:
            writer.close(end_parent=False)


def _conclude(spec: SweepSpec, counts: Counter, seen: int, finished: dict[int | None, set[str]], writer,
              ended: frozenset = frozenset()) -> SweepOutcome:
    """The sweep's outcome. With MLflow: the run's writer sends what is left and stops (ending
    the parent run once every trial has ended), then the audit reads back what it did not see
    the store take (`finished`: the finished trials' keys of each Tune experiment this run
    tallied, part k or None for the sweep's own folder; the audit finds the others'; `ended`:
    those of them whose every trial ended well, so that nothing will run in them again)."""
    outcome = sweep_outcome(spec, counts, seen)
    if writer is not None:
        writer.close(end_parent=outcome.all_finished)
    if logs_to_mlflow(spec):
        from ..tracking.mlflow_audit import audit_mlflow

        outcome.mlflow = audit_mlflow(experiment_path(spec), spec.tracking_uri, spec.name, finished,
                                      writer.complete if writer is not None else frozenset(), ended)
    return outcome


def _finish(spec: SweepSpec, plan: SweepPlan, grid, writer=None) -> SweepOutcome:
    prune_unreferenced_checkpoints(experiment_path(spec), grid)
    counts, seen, finished = tally(grid, experiment_path(spec), plan.known_keys())
    ended = not counts["error"] and not counts["unfinished"] and seen == plan.num_trials
    return _conclude(spec, counts, seen, {None: finished}, writer, frozenset({None}) if ended else frozenset())


def _run_parts(spec: SweepSpec, plan: SweepPlan, per_part: int, log_to_mlflow: bool, writer, first: int = 0,
               kept: dict[str, int] | None = None) -> SweepOutcome:
    """Run a sweep in parts, one Tune experiment after another: a finished part is skipped, one
    with a stored experiment is restored, the others start fresh. Stops after a part that left
    trials unfinished (the driver was interrupted), so a resume picks up there. An extension's
    parts are numbered from `first`, after the stored sweep's, whose trials' counts are `kept`."""
    counts: Counter = Counter(kept or {})
    seen = sum(counts.values())
    finished: dict[int, set[str]] = {}  # per part this run tallied; a part skipped as done is not
    known = plan.known_keys()
    for index, part in enumerate(split_plan(plan, per_part), start=first):
        path = part_path(spec, index)
        done = part_done(path)
        if done is not None:
            counts.update(done)
            seen += part.num_trials
            continue
        before = {k: v for k, v in counts.items() if k != "unfinished"}
        if can_restore(spec, path):
            grid = _fit(part, lambda: restore_tuner(spec, path))
        else:
            clear_unsaved_part(path)
            grid = _fit(part, lambda: build_tuner(spec, part, log_to_mlflow, part=index, before=before, writer=writer,
                                                  known=known))
        prune_unreferenced_checkpoints(path, grid)
        part_counts, part_seen, part_finished = tally(grid, path, known)
        del grid  # the next part runs without this part's results
        counts.update(part_counts)
        seen += part_seen
        finished[index] = part_finished
        if part_counts["unfinished"] or part_seen < part.num_trials:
            break
        if not part_counts["error"]:
            mark_part_done(path, dict(part_counts))
    return _conclude(spec, counts, seen, finished, writer)


def run_sweep(spec: SweepSpec, log_to_mlflow: bool = True, on_notice=print, source: str = "sweep") -> SweepOutcome:
    """Start a new sweep; refuses a name that already has results (use resume_sweep)."""
    preflight(spec, source, tracking=log_to_mlflow)
    if has_results(spec):
        raise SweepError(f"sweep {spec.name!r} already has results at {experiment_path(spec)}: "
                         f"`minima resume {spec.name}` continues it, a file that adds trials extends it, "
                         f"or pass --name NEW_NAME")
    if log_to_mlflow:
        claim_tracking(spec, source)
    _start_ray(spec, on_notice)
    spec, plan = planned(spec, local_slots(spec))
    for line in plan_lines(plan):
        on_notice(line)
    per_part = ray_trials_per_part(plan)
    split = {"parts": part_count(plan, per_part), "ray_trials_per_part": per_part} if per_part else {}
    write_spec(spec, log_to_mlflow, **split)
    only_json_results(True)
    with _mlflow_writer(spec, log_to_mlflow) as writer:
        if per_part:
            outcome = _run_parts(spec, plan, per_part, log_to_mlflow, writer)
        else:
            outcome = _finish(spec, plan, _fit(plan, lambda: build_tuner(spec, plan, log_to_mlflow, writer=writer)), writer)
    report_sharing(plan, snapshot_store(spec), on_notice)
    return outcome


def extend_sweep(wanted: SweepSpec, log_to_mlflow: bool = True, on_notice=print, source: str = "sweep") -> SweepOutcome | None:
    """Run only the trials that `wanted` adds to the stored grid sweep of its name, as further
    parts of it (one Tune experiment each, under the sweep's folder; one MLflow parent); or, for
    a boundary search, refine the grid: the grid's trials are the search's first round. None
    when the file adds nothing. Refuses a file that would change stored trials, and a stored
    sweep that has not ended well (resume it first), before Ray starts."""
    stored = read_spec(wanted.name, wanted.storage)
    check_only_yours(experiment_path(stored))
    extension = extension_of(stored, wanted, source)
    if not extension.new:
        return None
    finals = [(values, row) for values, row in stored_finals(experiment_path(stored))
              if extension.known.of(values).trial in extension.kept]
    statuses = [row.get("status") or "ok" for _, row in finals]
    if len(finals) < len(extension.kept) or "error" in statuses:
        raise SweepError(f"sweep {stored.name!r}: {len(extension.kept) - len(finals)} of its {len(extension.kept)} "
                         f"trials have not ended well; `minima resume {stored.name}` first, then extend it")
    first_round = [(v, row) for v, row in finals if search_cell(wanted, v) is not None] if extension.refines else []
    if extension.refines and not first_round:
        raise SweepError(f"search: the boundary search could run none of the {len(finals)} trials sweep "
                         f"{stored.name!r} holds (its base, axes, x range or seeds differ from the grid's); "
                         f"make them match to refine the grid, or `minima run {source} --name NEW_NAME`")
    preflight(wanted, source, tracking=log_to_mlflow)
    if log_to_mlflow:
        claim_tracking(wanted, source)
    on_notice(f"sweep {stored.name}: " + (
        f"refining it: {len(first_round)} of its {len(finals)} trials are the boundary search's first round; "
        f"at most {extension.new} new" if extension.refines else
        f"extending it: {len(extension.kept)} trials kept, {extension.new} new"))
    _start_ray(wanted, on_notice)
    spec, plan = planned(wanted.model_copy(update={"pack_plan": None}), local_slots(wanted), extension.kept)
    for line in plan_lines(plan):
        on_notice(line)
    per_part = None if extension.refines else (ray_trials_per_part(plan) or len(plan.ray_trials))
    settings = run_settings(stored)
    earlier = settings.get("extensions", [])
    first = (earlier[-1]["first_part"] + earlier[-1]["parts"]) if earlier else (settings.get("parts") or 1)
    kept = dict(Counter(statuses))
    add_extension(spec, {"extends": stored.model_dump(), "first_part": first,
                         "parts": part_count(plan, per_part) if per_part else 1, "ray_trials_per_part": per_part,
                         "kept": kept, "log_to_mlflow": log_to_mlflow, "refines": extension.refines})
    only_json_results(True)
    with _mlflow_writer(spec, log_to_mlflow) as writer:
        if extension.refines:
            outcome = _run_search_part(spec, plan, first, kept, log_to_mlflow, writer, first_round)
        else:
            outcome = _run_parts(spec, plan, per_part, log_to_mlflow, writer, first=first, kept=kept)
    report_sharing(plan, snapshot_store(spec), on_notice)
    return outcome


def _run_search_part(spec: SweepSpec, plan: SweepPlan, index: int, kept: dict[str, int], log_to_mlflow: bool,
                     writer, first_round=()) -> SweepOutcome:
    """A boundary search refining a stored grid, as the sweep's part `index` (restored when it
    has a stored experiment); `first_round`: the grid's trials it starts from."""
    path = part_path(spec, index)
    if can_restore(spec, path):
        grid = _fit(plan, lambda: restore_tuner(spec, path))
    else:
        clear_unsaved_part(path)
        grid = _fit(plan, lambda: build_tuner(spec, plan, log_to_mlflow, part=index, before=kept, writer=writer,
                                              stored=list(first_round)))
    prune_unreferenced_checkpoints(path, grid)
    counts, seen, finished = tally(grid, path, plan.known_keys())
    counts.update(kept)
    return _conclude(spec, counts, seen + sum(kept.values()), {index: finished}, writer)


def resume_sweep(name: str, storage: str = "minima_results", on_notice=print) -> SweepOutcome:
    """Finish an interrupted sweep: unfinished trials resume from their last checkpoint and
    errored ones are retried (Tuner.restore with resume_errored=True). Its callbacks, the MLflow
    logger included, come back from the stored experiment state."""
    spec = read_spec(name, storage)
    check_only_yours(experiment_path(spec))  # before anything of it is unpickled
    if not has_results(spec):
        raise SweepError(f"sweep {name!r} at {experiment_path(spec)} has no Ray experiment state to resume from")
    preflight(spec, name, tracking=logs_to_mlflow(spec))
    if logs_to_mlflow(spec):
        claim_tracking(spec, name)
    _start_ray(spec, on_notice)
    from .missing_pretrainings import run_missing_pretrainings

    slots = local_slots(spec)
    settings = run_settings(spec)
    latest = (settings.get("extensions") or [None])[-1]
    # the stored spec: its pack_plan as the sweep (or its latest extension) started
    spec, plan = planned(spec, slots, trial_keys(parse_sweep(latest["extends"])) if latest else frozenset())
    run_missing_pretrainings(spec, plan, snapshot_store(spec), slots, on_notice)  # what a killed driver never finished
    only_json_results(bool(settings.get("json_logger_only")))
    if latest:  # the sweep it extends had ended: only the extension's parts are left to run
        log_to_mlflow = bool(latest["log_to_mlflow"])
        with _mlflow_writer(spec, log_to_mlflow) as writer:
            if latest.get("refines"):
                return _run_search_part(spec, plan, latest["first_part"], latest["kept"], log_to_mlflow, writer)
            return _run_parts(spec, plan, latest["ray_trials_per_part"], log_to_mlflow, writer,
                              first=latest["first_part"], kept=latest["kept"])
    if settings.get("ray_trials_per_part"):
        log_to_mlflow = bool(settings.get("log_to_mlflow"))
        with _mlflow_writer(spec, log_to_mlflow) as writer:  # for the parts that start now
            return _run_parts(spec, plan, settings["ray_trials_per_part"], log_to_mlflow, writer)
    tuner = restore_tuner(spec)  # its MLflow callback, restored with it, starts and stops its own writer
    return _finish(spec, plan, _fit(plan, lambda: tuner))
