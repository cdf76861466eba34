"""Keep Tune's per-trial memory small: what the driver holds of each report after our callbacks
have read it.

Tune keeps every trial for the whole sweep, and with it the trial's last report and, per
numeric key ever reported at its top level, a running max/min/avg and two small deques; it
also caches all of that as JSON for its saved experiment state. A report of ours carries its rows
in `records` (read by the JSON logger, MLflow and the progress line, all before this
callback) and, for searchers, its latest row's fields again at the top. Ray lets a callback
change the result in place before the trial stores it; this one, the last callback, drops
what nothing reads afterwards; and once a trial has ended, its per-metric running stats.
"""

from __future__ import annotations

from ray.tune import Callback

from trainables.reports import FINAL_KEY, RECORDS_KEY

# read from a finished trial's last result: `outcome.tally` and the progress line
KEPT_ROW_KEYS = frozenset({FINAL_KEY, "status"})
# Tune's own result keys, never dropped even if a row were to carry one
TUNE_KEYS = frozenset({"done", "should_checkpoint", "training_iteration", "timestamp", "time_this_iter_s",
                       "time_total_s", "time_since_restore", "iterations_since_restore", "trial_id",
                       "experiment_tag", "checkpoint_dir_name", "pid", "hostname", "node_ip", "date", "config"})


class LeanResults(Callback):
    """Drops a report's `records` and, when `rows_on_top` is False (no searcher reads a metric
    from the trial's last result: grid sweeps), the latest row's copy at the top level; forgets
    an ended trial's metric stats."""

    def __init__(self, rows_on_top: bool):
        self.rows_on_top = rows_on_top

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        rows = result.pop(RECORDS_KEY, None)
        if self.rows_on_top or not rows:
            return
        for key in rows[-1].keys() - KEPT_ROW_KEYS - TUNE_KEYS:
            result.pop(key, None)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        forget_metric_stats(trial)


def forget_metric_stats(trial) -> None:
    """Empty a finished trial's running max/min/avg and last-5/10 deques per metric.

    Only Tune's best-trial helpers (`get_best_result` with a scope) read them; a sweep reads its
    results from result.json. They are not public API, so a Ray without them is left alone; an
    errored trial keeps them (a resume may run it again and would update them).
    """
    meta = getattr(trial, "run_metadata", None)
    if hasattr(meta, "metric_analysis") and hasattr(meta, "metric_n_steps"):
        meta.metric_analysis = {}
        meta.metric_n_steps = {}
