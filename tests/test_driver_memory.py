"""What the driver keeps per finished trial: our callbacks hold nothing of an ended trial but
counts, and Tune is handed back a report without what only our callbacks read."""

from __future__ import annotations

import io
from types import SimpleNamespace

from sweeps.run.lean_results import LeanResults
from sweeps.run.progress import SweepProgress
from trainables.reports import FINAL_KEY, MEMBERS_KEY, RECORDS_KEY


def _trial(trial_id: str, members: int = 1, status: str = "RUNNING"):
    config = {"seed": 0} if members == 1 else {MEMBERS_KEY: [{"seed": s} for s in range(members)]}
    return SimpleNamespace(trial_id=trial_id, config=config, status=status, last_result={})


def _final_report(status: str = "ok", member: int | None = None) -> dict:
    row = {"train_acc": 1.0, "test_acc": 0.5, "status": status, FINAL_KEY: True, "stage": "final"}
    if member is not None:
        row["member"] = member
    return {**row, RECORDS_KEY: [{"train_acc": 0.9, FINAL_KEY: False}, row], "training_iteration": 2, "done": False}


def test_progress_keeps_counts_not_trials():
    progress = SweepProgress(total=4, stream=io.StringIO())
    a, b, pack = _trial("a"), _trial("b"), _trial("p", members=2)
    progress.on_trial_result(0, [], a, _final_report("diverged"))
    progress.on_trial_complete(0, [], a)
    progress.on_trial_result(0, [], pack, _final_report("ok", member=0))
    progress.on_trial_error(0, [], pack)
    progress.on_trial_result(0, [], b, {RECORDS_KEY: [{"train_acc": 0.1, FINAL_KEY: False}]})
    assert progress._finals == {}  # b reported no final row; a and the pack ended
    for t, status in ((a, "TERMINATED"), (pack, "ERROR")):
        t.status = status
    progress._print([a, b, pack])
    assert progress.outcomes == {"diverged": 1, "ok": 1, "error": 1}
    assert progress._ended_ids == {"a", "p"}


def test_progress_counts_trials_that_ended_before_this_driver():
    progress = SweepProgress(total=3, stream=io.StringIO())
    done = _trial("a", status="TERMINATED")
    done.last_result = {"status": "diverged"}
    progress._print([done, _trial("p", members=2, status="ERROR")])
    assert progress.outcomes == {"diverged": 1, "error": 2}


def test_a_sweep_stopped_under_its_trials_counts_their_unreported_members_unfinished():
    """Tune's cleanup marks the trials it stops TERMINATED without on_trial_complete."""
    progress = SweepProgress(total=6, stream=io.StringIO())
    pack, before = _trial("p", members=3, status="PENDING"), _trial("b", members=2, status="TERMINATED")
    progress.on_step_begin(0, [pack, before])
    progress.on_trial_result(0, [], pack, _final_report("ok", member=0))
    pack.status = "TERMINATED"
    progress._print([pack, before, _trial("q", status="PENDING")], final=True)
    assert progress.outcomes == {"ok": 3}  # the pack's reported member and the two that ended before
    assert "3/6 done | 0 running | 3 pending" in progress.stream.getvalue()


def test_lean_results_keeps_only_what_is_read_after_the_callbacks():
    result = _final_report("diverged")
    LeanResults(rows_on_top=False).on_trial_result(0, [], _trial("a"), result)
    assert result == {"status": "diverged", FINAL_KEY: True, "training_iteration": 2, "done": False}


def test_lean_results_leaves_the_top_row_to_searchers():
    result = _final_report()
    LeanResults(rows_on_top=True).on_trial_result(0, [], _trial("a"), result)
    assert RECORDS_KEY not in result and result["test_acc"] == 0.5


def test_an_ended_trial_forgets_its_metric_stats_in_this_ray():
    from ray.tune.experiment import Trial

    trial = Trial("__fake", stub=True)
    trial.update_last_result({"train_acc": 0.5, "training_iteration": 1})
    assert trial.run_metadata.metric_analysis and trial.run_metadata.metric_n_steps
    LeanResults(rows_on_top=False).on_trial_complete(0, [], trial)
    assert trial.run_metadata.metric_analysis == {} and trial.run_metadata.metric_n_steps == {}
    trial.update_last_result({"train_acc": 0.7, "training_iteration": 2})  # still takes results
    assert trial.run_metadata.metric_analysis["train_acc"]["last"] == 0.7


def test_lean_results_is_the_last_callback():
    from sweeps.design.spec import parse_sweep
    from sweeps.run.tuner import tune_callbacks

    sweep = {"name": "g", "base": {"width": 16, "epochs": 1}, "seeds": 1, "axes": {"weight_decay": [0.0, 1e-3]}}
    grid = tune_callbacks(parse_sweep(sweep), log_to_mlflow=False)
    optuna = tune_callbacks(parse_sweep({**sweep, "search": {"kind": "optuna", "num_samples": 2, "metric": "test_acc",
                                                             "mode": "max"}}), log_to_mlflow=False)
    assert isinstance(grid[-1], LeanResults) and not grid[-1].rows_on_top
    assert isinstance(optuna[-1], LeanResults) and optuna[-1].rows_on_top
