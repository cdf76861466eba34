"""A sweep's Ray Tune `Tuner`: its trainable, search, callbacks and run settings; and the
environment Tune reads while it runs."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from trainables.provenance import git_commit, package_version
from trainables.tune_trainable import CHECKPOINT_EVERY_KEY, SNAPSHOTS_KEY, tune_trainable  # light: torch loads in workers

from ..design.keys import KnownKeys
from ..design.plan import SweepPlan
from ..storage.safe_storage import storage_filesystem
from ..design.spec import SweepSpec
from ..storage.sweep_files import experiment_path, part_name, part_path, snapshot_store, storage_root

CHECKPOINTS_TO_KEEP = 3  # each trial forces a save of the experiment state after this many checkpoints


AUTO_LOGGERS_OFF = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def only_json_results(on: bool) -> None:
    """Ray's result.json (the source of truth for exports) without its CSV and TensorBoard loggers:
    they print a pack's batched `records` in full as an 'invalid value' warning and copy it into
    progress.csv. A stored sweep whose run file does not ask for it (`json_logger_only`) resumes
    with Ray's defaults."""
    if on:
        os.environ[AUTO_LOGGERS_OFF] = "1"
    else:
        os.environ.pop(AUTO_LOGGERS_OFF, None)


def _run_tags() -> dict[str, str]:
    """On every MLflow run of a sweep."""
    return {"git_commit": git_commit() or "unknown", "package_version": package_version()}


def mlflow_writer(spec: SweepSpec):
    """The MLflow writer process for one `minima run` or `minima resume`, every Tune experiment
    of it (each part of a sweep run in parts) included; not started."""
    from ..tracking.mlflow_logger import writer_factory
    from ..tracking.mlflow_writer_process import WriterProcess

    return WriterProcess(writer_factory(spec.tracking_uri, spec.name, list(spec.axes), _run_tags()))


def tune_callbacks(spec: SweepSpec, log_to_mlflow: bool, before: dict[str, int] | None = None,
                   part: int | None = None, writer=None, known: KnownKeys | None = None) -> list:
    """Fresh callbacks for one Tune experiment. In a sweep run in parts (`part`), `before` holds
    the earlier parts' outcomes (the progress line counts the whole sweep). MLflow events go to
    the run's `writer` (`mlflow_writer`), which the runner stops. A callback restored from the
    stored experiment starts a writer of its own and stops it when the experiment ends, ending
    the MLflow parent unless the sweep runs in parts (then the runner does, after the last)."""
    from ray.tune.logger import JsonLoggerCallback

    from .lean_results import LeanResults
    from ..tracking.mlflow_logger import MLflowSweepLogger
    from .progress import SweepProgress

    callbacks: list = [SweepProgress(spec.num_trials(), capped=spec.search.kind == "boundary", before=before), JsonLoggerCallback()]
    if log_to_mlflow:
        callbacks.append(MLflowSweepLogger(spec.tracking_uri, spec.name, list(spec.axes), _run_tags(),
                                           ends_parent=part is None, writer=writer, known=known))
    # last: it drops what the callbacks above have read (optuna and boundary read their metric at the top)
    callbacks.append(LeanResults(rows_on_top=spec.search.kind in ("optuna", "boundary")))
    return callbacks


def trial_dirname(trial) -> str:
    """Short folder names: Ray's default embeds the whole config and hits path-length limits."""
    return f"trial_{trial.trial_id}"


PENDING_TRIALS_ENV = "TUNE_MAX_PENDING_TRIALS_PG"


def hands_out_ready_trials(plan: SweepPlan) -> bool:
    """Whether the sweep's trials come from one of our searchers (SnapshotGate, BoundarySearcher),
    which hand out only trials that can start now."""
    return plan.search == "boundary" or bool(plan.jobs)


@contextlib.contextmanager
def pending_trials(plan: SweepPlan, cluster_cpus: float):
    """Let Tune queue as many of our searchers' trials as it queues for a grid search.

    Tune keeps one trial of a custom Searcher pending at a time: locally a slot would idle while
    another trial's actor starts, and an autoscaling cluster would see one trial's demand at a
    time and add nodes one by one. A value the user set is kept.
    """
    if not hands_out_ready_trials(plan) or PENDING_TRIALS_ENV in os.environ:
        yield
        return
    os.environ[PENDING_TRIALS_ENV] = str(max(200, int(cluster_cpus * 1.1)))  # Tune's rule for a grid
    try:
        yield
    finally:
        os.environ.pop(PENDING_TRIALS_ENV, None)


# Tune settings left at Tune's defaults for large sweeps, by measurement (docs/performance.md,
# "Large sweeps"): the experiment state's save period stays "auto" (Tune stretches it to keep its
# saves near 5% of the driver's time at any size); a grid keeps Tune's pending-trial rule
# (fewer pending trials saved nothing on local Ray).


def build_tuner(spec: SweepSpec, plan: SweepPlan, log_to_mlflow: bool = True, part: int | None = None,
                before: dict[str, int] | None = None, writer=None, known: KnownKeys | None = None,
                stored: list[tuple[dict[str, Any], dict[str, Any]]] = ()):
    """The sweep's Tuner; with `part`, that part's (its `plan` is the part's slice), whose
    experiment lives in the sweep's folder. `writer`: the run's MLflow writer process; `known`:
    the whole sweep's planned keys (else the plan's); `stored`: the trials a boundary search
    refining a grid starts from."""
    from ray import tune

    from ..search.search_space import build_search

    sharing = spec.share_pretraining and plan.search == "grid"
    snapshots = snapshot_store(spec) if sharing else None
    space, num_samples, search_alg = build_search(spec, plan, snapshots, stored)
    space[CHECKPOINT_EVERY_KEY] = spec.checkpoint_every
    if snapshots:
        space[SNAPSHOTS_KEY] = snapshots
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.Tuner(
        tune.with_resources(tune_trainable, resources),
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            search_alg=search_alg,
            max_concurrent_trials=spec.max_concurrent,
            reuse_actors=True,  # a worker imports torch once, not once per trial
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=spec.name if part is None else part_name(part),
            storage_path=storage_root(spec.storage) if part is None else experiment_path(spec),
            storage_filesystem=storage_filesystem(spec.storage),
            callbacks=tune_callbacks(spec, log_to_mlflow, before, part, writer, known or plan.known_keys()),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
            verbose=0,
        ),
    )


def restore_tuner(spec: SweepSpec, path: str | None = None):
    """The stored sweep's Tuner (or that of its part at `path`): unfinished trials resume from
    their last checkpoint, errored ones are retried."""
    from ray import tune

    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.Tuner.restore(path or experiment_path(spec), trainable=tune.with_resources(tune_trainable, resources),
                              resume_errored=True, storage_filesystem=storage_filesystem(spec.storage))


def can_restore(spec: SweepSpec, path: str) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(path, storage_filesystem=storage_filesystem(spec.storage))


def has_results(spec: SweepSpec) -> bool:
    """Whether the sweep has a Tune experiment to resume: its own, or its first part's."""
    return can_restore(spec, experiment_path(spec)) or can_restore(spec, part_path(spec, 0))
