"""Our MLflow logging for Ray Tune: batched, off the driver's loop, idempotent across restores.

Ray's MLflowLoggerCallback makes one SQL commit per metric per report and keeps run ids only in
memory, so it slows a sweep down and duplicates runs after a restore. This callback only
queues events on Tune's thread; a writer thread sends them (`MLflowWriter`) with one
`log_batch` per run per flush. Each run is keyed by the trial's deterministic key, so a restored
sweep finds and continues its runs. A tracking server that is down only delays logging: events
stay queued and are retried.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from ray.tune import Callback

from trainables.tune_trainable import FINAL_KEY, MEMBER_KEY, member_values, report_rows

from .keys import trial_key
from .mlflow_events import RunEvents, error_text, failed, merge, result_events
from .mlflow_runs import short_error
from .mlflow_writer import MLflowWriter

log = logging.getLogger(__name__)

_WAKE = None  # queued by close(): the writer flushes now instead of at the end of its interval


class MLflowSweepLogger(Callback):
    """One MLflow experiment per sweep, one parent run, one child run per trial (per member
    of a packed Ray trial: reports carry a `member` index)."""

    def __init__(self, tracking_uri: str, sweep: str, axes: list[str], tags: dict[str, str] | None = None,
                 flush_interval_s: float = 2.0, give_up_after_s: float = 30.0):
        self.tracking_uri = tracking_uri
        self.sweep = sweep
        self.axes = axes
        self.tags = dict(tags or {})
        self.flush_interval_s = flush_interval_s
        self.give_up_after_s = give_up_after_s  # retrying at the end of a sweep, then `minima sync-mlflow`
        self._init_runtime()

    def _init_runtime(self) -> None:
        self.writer = MLflowWriter(self.tracking_uri, self.sweep, self.axes, self.tags)
        self.queue: queue.Queue = queue.Queue()  # (trial key, RunEvents) from Tune's thread
        self._pending: dict[str, RunEvents] = {}  # the writer's unsent events, per trial key
        self._order: list[str] = []
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._member_keys: dict[str, list[str]] = {}  # Ray trial id -> its members' keys
        self._finals_seen: set[str] = set()  # keys whose final report passed (Tune's thread)
        self._ended: set[str] = set()  # keys whose end was queued (Tune's thread)
        self._end_parent = False
        self.failed_flushes = 0
        self.last_error: str | None = None

    # Tune pickles callbacks with the experiment state; threads and clients are rebuilt in setup().
    def __getstate__(self) -> dict[str, Any]:
        keep = ("tracking_uri", "sweep", "axes", "tags", "flush_interval_s", "give_up_after_s")
        return {k: self.__dict__.get(k, 30.0) for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # --- Tune hooks (Tune's thread: only queue work) -------------------------------------
    def setup(self, **info) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._write, name="minima-mlflow", daemon=True)
            self.thread.start()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        for key, events in self._start_events(trial):
            self.queue.put((key, events))

    def _start_events(self, trial) -> list[tuple[str, RunEvents]]:
        out = self.writer.run_identities(trial.config, trial.trial_id,
                                         [d for d in (trial.local_path, trial.path) if d])
        self._member_keys[trial.trial_id] = [key for key, _ in out]
        return out

    def _keys(self, trial) -> list[str]:
        if trial.trial_id not in self._member_keys:
            self._member_keys[trial.trial_id] = [trial_key(v) for v in member_values(trial.config)]
        return self._member_keys[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        keys = self._keys(trial)
        for row in report_rows(result):
            key = keys[row.get(MEMBER_KEY) or 0]
            if row.get(FINAL_KEY):
                self._finals_seen.add(key)
            self.queue.put((key, result_events({"timestamp": result.get("timestamp"), **row})))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        for key in self._keys(trial):
            self._end(key, RunEvents(end_status="FINISHED"))
        self._member_keys.pop(trial.trial_id, None)  # recomputed if ever asked for again

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        message = error_text(trial)
        for key in self._keys(trial):
            if key in self._finals_seen:  # a pack member that finished before its pack failed
                self._end(key, RunEvents(end_status="FINISHED"))
            else:
                self._end(key, failed(message))
        self._member_keys.pop(trial.trial_id, None)

    def _end(self, key: str, events: RunEvents) -> None:
        self._ended.add(key)
        self.queue.put((key, events))

    def on_experiment_end(self, trials, **info) -> None:
        for trial in trials:  # trials finished before a restore were never seen ending here
            if trial.status not in ("TERMINATED", "ERROR"):
                continue
            for key, events in self._start_events(trial):  # their runs may not even exist yet
                if key in self._ended:
                    continue
                if trial.status == "ERROR" and key not in self._finals_seen:
                    events.absorb(failed(error_text(trial)))
                else:
                    events.end_status = "FINISHED"
                self._end(key, events)
        self.close(end_parent=all(t.status in ("TERMINATED", "ERROR") for t in trials))

    def close(self, end_parent: bool = True, timeout_s: float = 60.0) -> None:
        """Flush everything queued and stop the writer (waits up to `timeout_s` for the server)."""
        self._end_parent = end_parent
        self._stop.set()
        self.queue.put(_WAKE)
        if self.thread is not None:
            self.thread.join(timeout_s)
            if self.thread.is_alive():
                log.warning("MLflow logging did not finish in %.0f s: %s", timeout_s, self.last_error)

    @property
    def unlogged(self) -> int:
        """Trials with events MLflow has not received (after close: given up on)."""
        return len(set(self._pending) | {item[0] for item in list(self.queue.queue) if item is not _WAKE})

    # --- the writer thread ---------------------------------------------------------------
    def _write(self) -> None:
        """Merge queued events and flush them every `flush_interval_s`; on failure keep them and
        retry with a doubling wait (at most 30 s), giving up `give_up_after_s` after close()."""
        pending, order = self._pending, self._order
        backoff = self.flush_interval_s
        stop_seen: float | None = None
        while True:
            deadline = time.monotonic() + backoff
            while True:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is not _WAKE:
                    merge(pending, order, *item)
                if self._stop.is_set():
                    deadline = 0.0
            try:
                self.writer.flush(pending, order)
                backoff = self.flush_interval_s
            except Exception as err:  # server down, lock timeout: keep everything, retry later
                self.failed_flushes += 1
                self.last_error = short_error(err)
                if self.failed_flushes & (self.failed_flushes - 1) == 0:  # 1st, 2nd, 4th, 8th ... failure
                    log.warning("MLflow logging failed %d times (%s); %d runs queued, retrying",
                                self.failed_flushes, self.last_error, len(pending))
                backoff = min(30.0, backoff * 2)
                if self._stop.is_set():
                    stop_seen = stop_seen or time.monotonic()
                    if time.monotonic() - stop_seen >= self.give_up_after_s:
                        return  # what is left is in `unlogged`; the sweep's storage has all of it
                    backoff = min(backoff, self.give_up_after_s / 4)
                continue
            if self._stop.is_set() and self.queue.empty():
                if self._end_parent:
                    self.writer.finish_parent()
                return
