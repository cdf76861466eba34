"""The MLflow callback's bookkeeping against a real (SQLite) tracking store."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from sweeps.tracking import mlflow_batches
from sweeps.storage.sweep_files import read_mlflow_check
from sweeps.tracking.mlflow_audit import audit_mlflow
from sweeps.tracking.mlflow_events import RunEvents, merge, result_events
from sweeps.tracking.mlflow_logger import MLflowSweepLogger, writer_factory
from sweeps.tracking.mlflow_writer import LOGGED_STEP_TAG, MLflowWriter
from sweeps.tracking.mlflow_writer_process import WriterProcess

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
    logger._put(KEY, _events(range(1, 6)))
    time.sleep(3)  # the writer process started, took the event and waits for more
    t = time.monotonic()
    logger.close()  # without a wake-up the writer sleeps the full hour
    assert time.monotonic() - t < 30
    assert not logger.process.is_alive() and logger.process.exitcode == 0 and logger.unlogged == 0
    experiment = MlflowClient(uri).get_experiment_by_name("sweep")
    run = MlflowClient(uri).search_runs([experiment.experiment_id], f"tags.trial_key = '{KEY}'")[0]
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
    assert stages == ["train"]  # "pretrain" went out with create_run, and was not sent again
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


class _SlowStore:
    """Stands in for the writer in the writer process: takes one run every `per_run_s`, noting
    each in `record`; after `stall_after` runs it stops answering (a call that hangs until the
    file `release` exists, then fails)."""

    def __init__(self, record: str, per_run_s: float, stall_after: int | None = None, release: str = ""):
        self.record, self.per_run_s, self.stall_after, self.release = record, per_run_s, stall_after, release
        self.sent = 0
        with open(record + ".pid", "w") as f:
            f.write(str(os.getpid()))

    def flush(self, pending, order, ready=None, on_sent=None):
        for key in list(order):
            if ready is not None and not ready(key, pending[key]):
                continue
            if self.stall_after is not None and self.sent >= self.stall_after:
                while not os.path.exists(self.release):
                    time.sleep(0.05)
                raise ConnectionError("Read timed out")
            time.sleep(self.per_run_s)
            del pending[key]
            order.remove(key)
            self.sent += 1
            with open(self.record, "a") as f:
                f.write(key + "\n")
            on_sent(key)

    def finish_parent(self):
        with open(self.record, "a") as f:
            f.write("parent finished\n")


def _draining_logger(runs: int, *store_args) -> MLflowSweepLogger:
    logger = MLflowSweepLogger("sqlite:///unused.db", "sweep", axes=[], flush_interval_s=3600, give_up_after_s=2,
                               progress_every_s=0.2)
    logger.make_writer = lambda: functools.partial(_SlowStore, *store_args)
    logger.setup()
    for i in range(runs):
        logger._put(f"trial-{i}", RunEvents(end_status="FINISHED"))
    return logger


def _recorded(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_slow_store_that_keeps_taking_runs_is_drained_to_the_last_run(tmp_path):
    """The drain outlasts `give_up_after_s` several times over, but every run goes in and the
    terminal hears how many are left."""
    record = tmp_path / "sent.txt"
    logger = _draining_logger(80, str(record), 0.08)  # ~6.4 s of writes, give-up after 2 s without one
    said = io.StringIO()
    logger.close(stream=said)
    assert _recorded(record) == [f"trial-{i}" for i in range(80)] + ["parent finished"]
    assert logger.unlogged == 0 and not logger.process.is_alive()
    assert "runs left to log" in said.getvalue(), said.getvalue()


def test_a_store_that_stops_answering_is_given_up_on(tmp_path):
    record, release = tmp_path / "sent.txt", tmp_path / "release"
    logger = _draining_logger(50, str(record), 0.01, 10, str(release))
    time.sleep(3)  # the writer process started and holds every run
    t = time.monotonic()
    logger.close(stream=io.StringIO())
    assert time.monotonic() - t < 15  # about give_up_after_s after the last write, not forever
    assert len(_recorded(record)) == 10 and logger.unlogged == 40 and not logger.process.is_alive()


def test_a_store_that_fails_after_the_sweep_is_given_up_on_by_the_writer(tmp_path):
    """A store that answers with errors (not a hang): the writer keeps retrying, then stops by
    itself once no write has succeeded for give_up_after_s, with the count of what it kept."""
    record, release = tmp_path / "sent.txt", tmp_path / "release"
    release.touch()  # every call past the 10th fails at once
    logger = _draining_logger(50, str(record), 0.01, 10, str(release))
    logger.close(stream=io.StringIO())
    assert logger.process.exitcode == 0  # it returned; it was not killed
    assert len(_recorded(record)) == 10 and logger.unlogged == 40 and logger.status.failed.value >= 1


_DIES = """
import functools, os, sys, time
sys.path[:0] = [{tests!r}, {repo!r}]
from test_mlflow_logger import _SlowStore
from sweeps.tracking.mlflow_events import RunEvents
from sweeps.tracking.mlflow_logger import MLflowSweepLogger
logger = MLflowSweepLogger("sqlite:///unused.db", "sweep", axes=[], flush_interval_s=3600)
logger.make_writer = lambda: functools.partial(_SlowStore, {record!r}, 0.01)
logger.setup()
for i in range(5):
    logger._put(f"trial-{{i}}", RunEvents(end_status="FINISHED"))
while not os.path.exists({record!r} + ".pid"):  # the writer is up, as in a sweep under way
    time.sleep(0.1)
os._exit(9)  # as a killed driver: no close, no exit handlers
"""


def test_a_killed_drivers_writer_sends_what_it_queued_and_exits(tmp_path):
    record = tmp_path / "sent.txt"
    tests = os.path.dirname(os.path.abspath(__file__))
    script = _DIES.format(tests=tests, repo=os.path.dirname(tests), record=str(record))
    assert subprocess.run([sys.executable, "-c", script], timeout=120).returncode == 9
    pid = int((tmp_path / "sent.txt.pid").read_text())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}") or _state(pid) == "Z", "the writer outlived its driver"
    assert _recorded(record) == [f"trial-{i}" for i in range(5)]  # sent; the parent run is not ended


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _trial_dir(tmp_path) -> str:
    rows = [{"step": 1, "stage": "train", "test_acc": 0.5, "timestamp": 2_000, "final": False},
            {"step": 2, "stage": "train", "test_acc": 0.6, "timestamp": 2_003, "final": False},
            {"step": 2, "stage": "final", "status": "ok", "train_epochs": 2, "timestamp": 2_004, "final": True}]
    (tmp_path / "trial_t1").mkdir()
    (tmp_path / "trial_t1" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / "trial_t1")


def _sync(writer: MLflowWriter, trial_dir: str, start_ms: int | None = None, end: str | None = "FINISHED") -> str:
    (key, events), = writer.identities.of({"seed": 0}, "t1", [trial_dir])
    events.start_ms, events.end_status = start_ms, end
    pending, order = {}, []
    merge(pending, order, key, events)
    writer.flush(pending, order)
    return key


def test_a_synced_run_takes_its_times_from_the_trials_reports_and_a_found_run_keeps_its_start(tmp_path):
    trial_dir = _trial_dir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    key = _sync(MLflowWriter(uri, "synced", axes=[]), trial_dir)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("synced")
    run = client.search_runs([experiment.experiment_id], f"tags.trial_key = '{key}'")[0]
    assert (run.info.start_time, run.info.end_time) == (2_000_000, 2_004_000)  # first report, final report
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    _sync(MLflowWriter(uri, "resumed", axes=[]), trial_dir, start_ms=1_999_500, end=None)  # a driver that died
    _sync(MLflowWriter(uri, "resumed", axes=[]), trial_dir)
    run = client.search_runs([client.get_experiment_by_name("resumed").experiment_id], f"tags.trial_key = '{key}'")[0]
    assert (run.info.start_time, run.info.end_time, run.info.status) == (1_999_500, 2_004_000, "FINISHED")


def test_an_ended_run_leaves_only_its_id_and_marks(tmp_path):
    """A sweep of thousands of trials: what the writer keeps per run after it ended stays small."""
    writer = MLflowWriter(f"sqlite:///{tmp_path}/mlflow.db", "sweep", axes=[])
    events = _events(range(1, 3))
    events.source = ((str(tmp_path),), None)
    events.tags["stage"] = "train"
    _flush(writer, events)
    assert KEY in writer._sent_tags
    _flush(writer, RunEvents(end_status="FINISHED"))
    assert KEY not in writer._sent_tags and KEY not in writer._start_ms and KEY in writer._runs


def test_a_writer_reads_a_parts_earlier_runs_when_it_reaches_that_part(tmp_path):
    """A sweep run in parts, resumed: one writer serves every part, and looks up the runs it may
    continue part by part as it reaches them, never every earlier part's runs at once (they
    grow with the sweep)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def log(writer: MLflowWriter, seed: int, folder: str) -> str:
        (key, events), = writer.identities.of({"seed": seed}, f"t{seed}", [f"{tmp_path}/sweep/{folder}"])
        events.end_status = "FINISHED"
        pending, order = {}, []
        merge(pending, order, key, events)
        writer.flush(pending, order)
        return key

    first = log(MLflowWriter(uri, "sweep", axes=[]), 0, "part-000/trial_t0")
    synced = log(MLflowWriter(uri, "sweep", axes=[]), 1, "trial_t1")  # no part: as in a sweep of one experiment
    resumed = MLflowWriter(uri, "sweep", axes=[])
    resumed.connect()
    assert resumed._existing == {}  # nothing read before a run is sent
    log(resumed, 2, "part-001/trial_t2")
    assert set(resumed._existing) == {synced}  # part 1's runs (none) and those without a part
    assert log(resumed, 0, "part-000/trial_t0") == first  # part 0 reached: its run is found and continued
    assert resumed._earlier == {1, 0} and first not in resumed._existing
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweep")
    assert len(client.search_runs([experiment.experiment_id], f"tags.trial_key = '{first}'")) == 1
    assert resumed.complete == set()  # no final metrics were sent: not complete


def test_the_writer_hands_back_the_runs_the_store_took_complete_and_the_audit_reads_back_only_the_rest(tmp_path):
    """Reading a run back costs about what writing it did: the end-of-sweep audit asks the store
    only about finished trials the run's writer did not see it take complete."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    writer = WriterProcess(writer_factory(uri, "sweep", [], {}))
    writer.start()
    keys = [f"trial-{i}" for i in range(4)]
    for i, key in enumerate(keys):
        writer.put(key, RunEvents(params={"seed": str(i)}, tags={"trial_key": key}))
        writer.put(key, result_events({"step": 1, "stage": "train", "test_acc": 0.5, "timestamp": 1_000}))
        if i < 3:  # the last one ends without its final report, as a trial killed by its driver would not
            writer.put(key, result_events({"final": True, "status": "ok", "train_epochs": 1.0, "timestamp": 1_001}))
        writer.put(key, RunEvents(end_status="FINISHED"))
    writer.close(end_parent=True)
    assert writer.complete == set(keys[:3]) and writer.unlogged == 0 and writer.process.exitcode == 0

    all_logged = audit_mlflow(str(tmp_path), "http://127.0.0.1:9", "sweep", {None: set(keys[:3])}, writer.complete)
    assert all_logged.complete and all_logged.trials == 3  # the unreachable store was never asked
    unseen = audit_mlflow(str(tmp_path), uri, "sweep", {None: set(keys)}, writer.complete)
    assert (unseen.trials, unseen.missing, unseen.error) == (4, 1, None)  # read back: no final metrics
    unreachable = audit_mlflow(str(tmp_path), "http://127.0.0.1:9", "sweep", {None: set(keys)}, writer.complete)
    assert unreachable.missing == 1 and unreachable.error
    # each audit leaves what it found beside the sweep, where `minima status` reads it offline
    check = read_mlflow_check(str(tmp_path))
    assert (check["tracking_uri"], check["finished"], check["missing"]) == ("http://127.0.0.1:9", 4, 1)
    assert check["error"] == unreachable.error


def test_a_run_sent_whole_needs_no_marks_and_is_not_sent_again(tmp_path):
    """A short trial's whole life goes out in one flush: its run carries no logged-step marks
    (one SQL upsert fewer a run); the audit still counts it complete, and a replay (a resumed
    driver, `sync-mlflow`) sends none of its metrics again."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    key = "trial-whole"

    def whole() -> RunEvents:
        events = RunEvents(params={"seed": "0"}, tags={"trial_key": key})
        for step in (1, 2):
            events.absorb(result_events({"step": step, "stage": "train", "test_acc": step / 10, "timestamp": 1_000 + step}))
        events.absorb(result_events({"final": True, "status": "ok", "train_epochs": 2.0, "timestamp": 1_003}))
        events.end_status = "FINISHED"
        return events

    batches = []

    def send(writer: MLflowWriter) -> None:
        writer.connect()
        log_batch = writer.client.log_batch
        writer.client.log_batch = lambda *a, **k: batches.append(k) or log_batch(*a, **k)
        _flush_key(writer, key, whole())

    first = MLflowWriter(uri, "sweep", axes=[])
    send(first)
    client = MlflowClient(uri)
    run = client.search_runs([first.experiment_id], f"tags.trial_key = '{key}'")[0]
    assert len(batches) == 1 and batches[0]["tags"] == []  # no marks
    assert run.info.status == "FINISHED" and LOGGED_STEP_TAG not in run.data.tags
    assert first.complete == {key}
    assert audit_mlflow(str(tmp_path), uri, "sweep", {None: {key}}).complete  # read back: FINISHED with its finals

    replay = MLflowWriter(uri, "sweep", axes=[])
    send(replay)
    assert len(batches) == 1  # found complete: nothing of it sent again
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")] == [1, 2]
    assert len(client.search_runs([first.experiment_id], f"tags.trial_key = '{key}'")) == 1


def _flush_key(writer: MLflowWriter, key: str, events: RunEvents) -> None:
    pending, order = {}, []
    merge(pending, order, key, events)
    writer.flush(pending, order)
