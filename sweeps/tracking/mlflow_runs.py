"""The tracking store as a sweep sees it: a client that fails fast, the sweep's trial runs found
in one search, and a tracking failure in one line."""

from __future__ import annotations

import os
from typing import Any

from trainables.metrics import FINAL_METRICS

SEARCH_PAGE = 1_000  # runs per page when a sweep's trial runs are looked up: MLflow loads a page whole
PART_TAG = "minima.part"  # a trial's run in a sweep run in parts: the part (its Tune experiment) it is in
TRIAL_RUN = "tags.trial_key != ''"  # the search for a sweep's trial runs (not its parent)
UNTAGGED = f"{TRIAL_RUN} and tags.`{PART_TAG}` IS NULL"  # the sweep's own folder's, or logged before parts were tagged


def quick_client(tracking_uri: str, max_retries: int, timeout_s: int):
    """An MlflowClient whose HTTP calls give up after `max_retries` retries and `timeout_s` each
    (MLflow's own retries would block for minutes); a value the user set is kept."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def trial_runs(client, experiment_id: str, part: int | None = None) -> dict[str, Any]:
    """Every trial run of a sweep's experiment, by its `trial_key` tag; with `part`, those of
    that part of a sweep run in parts (and runs made without a part tag), so each part's
    writer reads its own runs, not every earlier part's."""
    return {run.data.tags["trial_key"]: run for page in trial_run_pages(client, experiment_id, part) for run in page}


def _tagged(part: int) -> str:
    return f"{TRIAL_RUN} and tags.`{PART_TAG}` = '{part}'"


def trial_run_pages(client, experiment_id: str, part: int | None = None):
    """`trial_runs` a page at a time (a caller that keeps a little of each run never holds them all)."""
    return _pages(client, experiment_id, [TRIAL_RUN] if part is None else [_tagged(part), UNTAGGED])


def part_run_pages(client, experiment_id: str, parts):
    """The trial runs of some of a sweep's Tune experiments (`parts`: part numbers, None for the
    sweep's own folder), a page at a time: one search a part, and one for every run without a
    part tag, whichever experiments ask for those."""
    return _pages(client, experiment_id, [_tagged(p) for p in sorted(p for p in parts if p is not None)] + [UNTAGGED])


def _pages(client, experiment_id: str, searches: list[str]):
    for search in searches:
        token = None
        while True:
            page = client.search_runs([experiment_id], search, max_results=SEARCH_PAGE, page_token=token)
            yield [run for run in page if "trial_key" in run.data.tags]
            token = page.token
            if not token:
                break


def is_complete(run) -> bool:
    """A trial's run that MLflow holds whole: ended FINISHED (the writer ends a run only after
    sending all it had) with its final metrics."""
    return run.info.status == "FINISHED" and any(name in run.data.metrics for name in FINAL_METRICS)


def parent_run(client, experiment_id: str, sweep: str):
    """The sweep's parent run in its experiment, or None."""
    parents = client.search_runs([experiment_id], f"tags.`minima.role` = 'parent' and tags.sweep = '{sweep}'",
                                 max_results=1)
    return parents[0] if parents else None


def short_error(err: Exception) -> str:
    """One line about a tracking-store failure (MLflow's own messages run to a paragraph)."""
    text = str(err)
    for cause in ("Connection refused", "Read timed out", "Name or service not known", "database is locked"):
        if cause in text:
            return f"{type(err).__name__}: {cause.lower()}"
    return f"{type(err).__name__}: {text.splitlines()[0][:160] if text else ''}"
