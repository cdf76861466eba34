"""After a sweep: does MLflow hold every trial the sweep's storage holds?

The storage is the source of truth; MLflow is a view that a tracking-server outage can leave
incomplete. The audit compares the two, so the sweep can say how many runs are missing and
how to replay them (`minima sync-mlflow`), instead of letting a gap pass unnoticed. Reading a
run costs about as much as writing it, so what is already confirmed is not read back: the runs
the sweep's own writer saw the store take complete, and the Tune experiments (parts) whose
trials can no longer change (`settled`) and that an earlier check confirmed at the same
tracking URI. What it found is kept beside the sweep (`write_mlflow_check`), which is how
`minima status` tells, without the tracking server, whether MLflow holds every trial, and how
the next audit knows which parts it need not read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..design.keys import trial_key
from .mlflow_runs import is_complete, part_run_pages, quick_client, short_error
from ..storage.results import stored_experiments, stored_trials
from ..storage.sweep_files import (OWN, PART_PREFIX, experiment_folder, part_done, part_name, read_mlflow_check,
                                   write_mlflow_check)


@dataclass
class MlflowAudit:
    trials: int  # finished trials in storage
    missing: int  # of them without a FINISHED MLflow run holding their final metrics
    error: str | None = None  # the tracking server could not be asked
    # settled Tune experiments (part k; None: the sweep's own folder) whose every finished trial
    # has a complete run: how many finished trials each holds
    confirmed: dict[int | None, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.error is None and self.missing == 0


def audit_mlflow(experiment_dir: str, tracking_uri: str, sweep: str,
                 finished: dict[int | None, set[str]] | None = None,
                 logged: set[str] | frozenset = frozenset(), ended: frozenset = frozenset()) -> MlflowAudit:
    """`finished`: the keys of the finished trials of each of the sweep's Tune experiments the
    caller tallied (part k; None: the sweep's own folder); the others' are read from storage,
    but for those an earlier check confirmed at this tracking URI, which are counted from its
    record. `logged`: keys of runs the writer saw the store take complete; `ended`: experiments
    the caller saw end with every trial ended well, settled as a part marked done is."""
    finished = dict(finished or {})
    experiments = set(stored_experiments(experiment_dir)) | set(finished)
    earlier = {part: count for part, count in confirmed_at(experiment_dir, tracking_uri).items()
               if part in experiments and part not in finished}
    for part in experiments - set(earlier) - set(finished):
        finished[part] = _finished_keys(experiment_dir, part)
    unconfirmed = {part: keys - logged for part, keys in finished.items()}
    complete, error = _read_back(tracking_uri, sweep, [part for part, keys in unconfirmed.items() if keys])
    missing = {part: keys - complete for part, keys in unconfirmed.items()}
    whole = settled(experiment_dir, [part for part in finished if not missing[part]], experiments, ended)
    audit = MlflowAudit(sum(earlier.values()) + sum(map(len, finished.values())), sum(map(len, missing.values())),
                        error, {**earlier, **{part: len(finished[part]) for part in whole}})
    record_check(experiment_dir, tracking_uri, audit)
    return audit


def _finished_keys(experiment_dir: str, part: int | None) -> set[str]:
    folder = experiment_folder(experiment_dir, part)
    return {trial_key(t["values"]) for t in stored_trials(folder, parts=False) if t["finished"]}


def _read_back(tracking_uri: str, sweep: str, parts: list[int | None]) -> tuple[set[str], str | None]:
    """The keys of the complete runs of these Tune experiments' trials, and why the tracking
    server could not be asked (None when it answered)."""
    if not parts:
        return set(), None
    try:
        client = quick_client(tracking_uri, max_retries=1, timeout_s=15)
        experiment = client.get_experiment_by_name(sweep)
        complete = set()  # keys of runs FINISHED with their final metrics: all a 10,000-run sweep keeps
        for page in part_run_pages(client, experiment.experiment_id, parts) if experiment is not None else ():
            complete.update(run.data.tags["trial_key"] for run in page if is_complete(run))
    except Exception as err:  # unreachable server: nothing more can be confirmed
        return set(), short_error(err)
    return complete, None


def settled(experiment_dir: str, parts, experiments, ended: frozenset = frozenset()) -> set[int | None]:
    """Those of `parts`, of the sweep's Tune experiments `experiments`, whose trials can no
    longer change: one whose every trial ended well (`ended`), a part marked done (every resume
    skips it), and the sweep's own folder once an extension put parts beside it (an extension
    starts only when every trial there ended well)."""
    extended = any(part is not None for part in experiments)
    return {part for part in parts
            if part in ended
            or (extended if part is None else part_done(experiment_folder(experiment_dir, part)) is not None)}


def confirmed_at(experiment_dir: str, tracking_uri: str) -> dict[int | None, int]:
    """The settled experiments the last check confirmed, when it was made at `tracking_uri`
    (another tracking server holds other runs)."""
    check = read_mlflow_check(experiment_dir) or {}
    if check.get("tracking_uri") != tracking_uri:
        return {}
    return {None if name == OWN else int(name.removeprefix(PART_PREFIX)): count
            for name, count in check.get("confirmed", {}).items()}


def record_check(experiment_dir: str, tracking_uri: str, audit: MlflowAudit) -> None:
    """Keep what a check found beside the sweep; a storage that refuses the write loses only this note."""
    confirmed = dict(sorted((OWN if part is None else part_name(part), count) for part, count in audit.confirmed.items()))
    try:
        write_mlflow_check(experiment_dir, {"tracking_uri": tracking_uri, "finished": audit.trials,
                                            "missing": audit.missing, "error": audit.error, "checked": time.time(),
                                            "confirmed": confirmed})
    except OSError:
        pass


def forget_confirmed(experiment_dir: str) -> None:
    """Drop the last check's confirmed experiments before something that may change their runs
    (a replay), so one cut short leaves nothing confirmed that no longer is."""
    check = read_mlflow_check(experiment_dir)
    if not check or not check.get("confirmed"):
        return
    try:
        write_mlflow_check(experiment_dir, {**check, "confirmed": {}})
    except OSError:  # a storage only readable: the replay still ends each complete run FINISHED
        pass
