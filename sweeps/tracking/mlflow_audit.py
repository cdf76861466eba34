"""After a sweep: does MLflow hold every trial the sweep's storage holds?

The storage is the source of truth; MLflow is a view that a tracking-server outage can leave
incomplete. The audit compares the two, so the sweep can say how many runs are missing and
how to replay them (`minima sync-mlflow`), instead of letting a gap pass unnoticed. Runs the
sweep's own writer saw the store take complete are not read back: reading a run costs about
as much as writing it. What it found is kept beside the sweep (`write_mlflow_check`), which
is how `minima status` tells, without the tracking server, whether MLflow holds every trial.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..design.keys import trial_key
from .mlflow_runs import is_complete, quick_client, short_error, trial_run_pages
from ..storage.results import stored_trials
from ..storage.sweep_files import write_mlflow_check


@dataclass
class MlflowAudit:
    trials: int  # finished trials in storage
    missing: int  # of them without a FINISHED MLflow run holding their final metrics
    error: str | None = None  # the tracking server could not be asked

    @property
    def complete(self) -> bool:
        return self.error is None and self.missing == 0


def audit_mlflow(experiment_dir: str, tracking_uri: str, sweep: str, finished: set[str] | None = None,
                 logged: set[str] | frozenset = frozenset()) -> MlflowAudit:
    """`finished`: the keys of the sweep's finished trials where the caller saw every one (else
    they are read from storage); `logged`: keys of runs the writer saw the store take complete."""
    if finished is None:
        finished = {trial_key(t["values"]) for t in stored_trials(experiment_dir) if t["finished"]}
    audit = _audit(tracking_uri, sweep, finished, finished - logged)
    record_check(experiment_dir, tracking_uri, audit)
    return audit


def _audit(tracking_uri: str, sweep: str, finished: set[str], unconfirmed: set[str]) -> MlflowAudit:
    if not unconfirmed:
        return MlflowAudit(len(finished), 0)
    try:
        client = quick_client(tracking_uri, max_retries=1, timeout_s=15)
        experiment = client.get_experiment_by_name(sweep)
        complete = set()  # keys of runs FINISHED with their final metrics: all a 10,000-run sweep keeps
        for page in trial_run_pages(client, experiment.experiment_id) if experiment is not None else ():
            complete.update(run.data.tags["trial_key"] for run in page if is_complete(run))
    except Exception as err:  # unreachable server: nothing more can be confirmed
        return MlflowAudit(len(finished), len(unconfirmed), short_error(err))
    return MlflowAudit(len(finished), len(unconfirmed - complete))


def record_check(experiment_dir: str, tracking_uri: str, audit: MlflowAudit) -> None:
    """Keep what a check found beside the sweep; a storage that refuses the write loses only this note."""
    try:
        write_mlflow_check(experiment_dir, {"tracking_uri": tracking_uri, "finished": audit.trials,
                                            "missing": audit.missing, "error": audit.error, "checked": time.time()})
    except OSError:
        pass
