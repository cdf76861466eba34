"""The MLflow callback's bookkeeping against a real (SQLite) tracking store."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from sweeps import mlflow_batches
from sweeps.mlflow_events import RunEvents, merge
from sweeps.mlflow_logger import MLflowSweepLogger
from sweeps.mlflow_writer import LOGGED_STEP_TAG, MLflowWriter

KEY = "trial-under-test"
NAMES = ("train_loss", "train_acc", "test_acc")


def _events(steps: range) -> RunEvents:
    return RunEvents(params={"seed": "0"}, tags={"trial_key": KEY},
                      metrics=[(name, step / 100, 1_000 + step, step) for step in steps for name in NAMES])


class _DiesAfter:
    """The real client, whose process dies (raises) after `calls` log_batch calls."""

    def __init__(self, client, calls: int):
        self._client, self.calls = client, calls

    def log_batch(self, *args, **kwargs):
        if self.calls == 0:
            raise ConnectionError("driver killed")
        self.calls -= 1
        return self._client.log_batch(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def _flush(writer: MLflowWriter, events: RunEvents) -> None:
    pending, order = {}, []
    merge(pending, order, KEY, events)
    writer.flush(pending, order)


@pytest.mark.parametrize("dies_after, expected_mark", [(0, 0), (1, 3), (2, 6), (4, 13)])
def test_a_driver_killed_between_chunks_leaves_no_gap(tmp_path, monkeypatch, dies_after, expected_mark):
    """A flush bigger than MLflow's batch limit goes out in chunks; the logged-step mark must
    never claim a step whose metrics are not all stored, or the resumed driver skips them."""
    monkeypatch.setattr(mlflow_batches, "MAX_METRICS_PER_BATCH", 10)  # 3 metrics a step: chunks split steps
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = MLflowWriter(uri, "sweep", axes=[])
    first.connect()
    first.client = _DiesAfter(first.client, dies_after)
    with pytest.raises(ConnectionError):
        _flush(first, _events(range(1, 21)))

    client = MlflowClient(uri)
    run = client.search_runs([first.experiment_id], f"tags.trial_key = '{KEY}'")[0]
    # each call stores a chunk of 10 metrics (3 a step), the first with the params
    mark = int(run.data.tags.get(LOGGED_STEP_TAG, "0"))
    assert mark == expected_mark
    for name in NAMES:
        stored = {m.step for m in client.get_metric_history(run.info.run_id, name)}
        assert set(range(1, mark + 1)) <= stored, f"{name}: mark {mark} claims steps not stored"

    resumed = MLflowWriter(uri, "sweep", axes=[])  # a new driver replays every report
    _flush(resumed, _events(range(1, 21)))
    for name in NAMES:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(steps) == list(range(1, 21)), f"{name}: history has gaps or repeats"
    assert client.get_run(run.info.run_id).data.tags[LOGGED_STEP_TAG] == "20"
    assert client.get_run(run.info.run_id).data.params == {"seed": "0"}  # sent again if the first call died
    assert len(client.search_runs([first.experiment_id], f"tags.trial_key = '{KEY}'")) == 1  # found, not made anew


def test_close_flushes_at_once_not_at_the_end_of_the_interval(tmp_path):
    """The writer sleeps between flushes; ending a sweep must wake it, not wait the interval out."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = MLflowSweepLogger(uri, "sweep", axes=[], flush_interval_s=3600)
    logger.setup()
    logger.queue.put((KEY, _events(range(1, 6))))
    while not logger.queue.empty():
        time.sleep(0.05)
    time.sleep(0.5)  # the writer took the event and waits for more
    logger.close(timeout_s=60)  # without a wake-up the writer sleeps the full hour
    assert not logger.thread.is_alive() and logger.unlogged == 0
    run = MlflowClient(uri).search_runs([logger.writer.experiment_id], f"tags.trial_key = '{KEY}'")[0]
    assert [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "test_acc")] == [1, 2, 3, 4, 5]


def test_a_tag_is_logged_again_only_when_it_changes(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    writer = MLflowWriter(uri, "sweep", axes=[])
    writer.connect()
    sent_tags = []

    class _Recording:
        def log_batch(self, run_id, metrics=(), params=(), tags=()):
            sent_tags.append({t.key: t.value for t in tags if t.key != LOGGED_STEP_TAG})
            return client.log_batch(run_id, metrics=metrics, params=params, tags=tags)

        def __getattr__(self, name):
            return getattr(client, name)

    client, writer.client = writer.client, _Recording()
    for stage, steps in (("pretrain", range(1, 3)), ("pretrain", range(3, 5)), ("train", range(5, 7))):
        events = _events(steps)
        events.tags["stage"] = stage
        _flush(writer, events)
    stages = [t.get("stage") for t in sent_tags if t]
    assert stages == ["pretrain", "train"]
    run = client.search_runs([writer.experiment_id], f"tags.trial_key = '{KEY}'")[0]
    assert run.data.tags["stage"] == "train"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_acc")) == list(range(1, 7))


def test_a_long_history_goes_out_within_mlflows_batch_limits(tmp_path):
    """A resumed or synced trial of hundreds of epochs sends thousands of metrics in one flush.
    Each call must stay within MLflow's 1000 entities (metrics, params and tags together):
    MLflow's client splits a bigger one and stores its tags, the logged-step mark among them,
    before the rest of its metrics, so a driver killed in between would leave a mark that
    claims steps not stored."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    writer = MLflowWriter(uri, "sweep", axes=[])
    writer.connect()
    store = writer.client._tracking_client.store
    calls = []
    original = store.log_batch

    def counted(run_id, metrics, params, tags):
        calls.append(len(metrics) + len(params) + len(tags))
        return original(run_id=run_id, metrics=metrics, params=params, tags=tags)

    store.log_batch = counted
    try:
        _flush(writer, _events(range(1, 401)))  # 1200 metrics, a param and a tag
    finally:
        store.log_batch = original
    assert len(calls) == 2 and max(calls) <= 1000, calls  # our two calls, none split by MLflow
    client = MlflowClient(uri)
    run = client.search_runs([writer.experiment_id], f"tags.trial_key = '{KEY}'")[0]
    for name in NAMES:
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == list(range(1, 401))
    assert run.data.params == {"seed": "0"} and run.data.tags[LOGGED_STEP_TAG] == "400"


def test_an_ended_run_leaves_only_its_id_and_marks(tmp_path):
    """A sweep of thousands of trials: what the writer keeps per run after it ended stays small."""
    writer = MLflowWriter(f"sqlite:///{tmp_path}/mlflow.db", "sweep", axes=[])
    writer._trial_dirs[KEY] = ([str(tmp_path)], None)
    events = _events(range(1, 3))
    events.tags["stage"] = "train"
    _flush(writer, events)
    assert KEY in writer._sent_tags
    _flush(writer, RunEvents(end_status="FINISHED"))
    assert KEY not in writer._sent_tags and KEY not in writer._trial_dirs and KEY in writer._runs
