"""`minima sync-mlflow`: a sweep's trials re-logged to MLflow from its stored results."""

from __future__ import annotations

from collections import Counter

from trainables.reports import final_rows

from .mlflow_audit import MlflowAudit, forget_confirmed, record_check, settled
from .mlflow_events import RunEvents, merge
from .mlflow_writer import MLflowWriter
from ..storage.results import list_trial_dirs, read_result_rows, read_trial_error, read_trial_params, stored_experiments
from ..storage.sweep_files import part_of


def sync_from_storage(writer: MLflowWriter, experiment_dir: str) -> dict[str, int]:
    """Re-log every trial of a sweep from its stored results, synchronously and idempotently.

    For runs a tracking-server outage left incomplete, or a sweep run with --no-mlflow:
    missing runs are created, missing steps added, statuses set; nothing is duplicated.
    """
    forget_confirmed(experiment_dir)  # until the replay has ended, no part is known complete
    pending: dict[str, RunEvents] = {}
    order: list[str] = []
    counts = {"trials": 0, "finished": 0, "failed": 0, "unfinished": 0}
    finished_in: Counter = Counter()  # per Tune experiment (part k; None: the sweep's own folder)
    for trial_dir in list_trial_dirs(experiment_dir):
        params = read_trial_params(trial_dir)
        if params is None:
            continue
        trial_id = trial_dir.rstrip("/").rsplit("/", 1)[-1].removeprefix("trial_")
        identities = writer.identities.of(params, trial_id, [trial_dir])
        finals = final_rows(read_result_rows(trial_dir))
        error = None if len(finals) == len(identities) else read_trial_error(trial_dir)
        for member, (key, events) in enumerate(identities):
            counts["trials"] += 1
            if member in finals:
                events.end_status = "FINISHED"
                counts["finished"] += 1
                finished_in[part_of(trial_dir)] += 1
            elif error:
                events.end_status = "FAILED"
                events.tags.update({"status": "error", "error": error.strip()[-4000:]})
                counts["failed"] += 1
            else:
                counts["unfinished"] += 1
            merge(pending, order, key, events)
    writer.flush(pending, order)  # back-fills each run from its result.json on first touch
    # flush returns only once the store took every run: each finished one FINISHED with its finals
    experiments = stored_experiments(experiment_dir)
    whole = settled(experiment_dir, experiments, experiments)
    record_check(experiment_dir, writer.tracking_uri,
                 MlflowAudit(counts["finished"], 0, confirmed={part: finished_in[part] for part in whole}))
    if counts["unfinished"] == 0:
        writer.finish_parent()
    return counts
