"""Our MLflow logging for Ray Tune: batched, off the driver's loop, idempotent across restores.

Ray's MLflowLoggerCallback makes one SQL commit per metric per report and keeps run ids only in
memory, so it slows a sweep down and duplicates runs after a restore. This callback only
queues events on Tune's thread; a writer thread sends them (`MLflowWriter`) with one
`log_batch` per run per flush. A run is sent once its trial ends, or once its events have waited
`live_every_s` (a long trial's run shows its metrics as it goes), so a short trial's whole
history goes in one call. Each run is keyed by the trial's deterministic key, so a restored
sweep finds and continues its runs. A tracking server that is down only delays logging: events
stay queued and are retried. At the end of a sweep the logger drains for as long as the store
keeps taking runs, and gives up only once no write has succeeded for `give_up_after_s`.
"""

from __future__ import annotations

import logging
import queue
import sys
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
                 flush_interval_s: float = 2.0, give_up_after_s: float = 30.0, live_every_s: float = 10.0,
                 progress_every_s: float = 5.0, ends_parent: bool = True):
        self.tracking_uri = tracking_uri
        self.sweep = sweep
        self.axes = axes
        self.tags = dict(tags or {})
        self.flush_interval_s = flush_interval_s
        # at the end of a sweep: how long without a successful write before `minima sync-mlflow` is left to do it
        self.give_up_after_s = give_up_after_s
        self.live_every_s = live_every_s
        self.progress_every_s = progress_every_s  # a line on stderr while the end-of-sweep drain lasts
        self.ends_parent = ends_parent  # False in a sweep run in parts: the runner ends the parent after the last
        self._init_runtime()

    def _init_runtime(self) -> None:
        self.writer = MLflowWriter(self.tracking_uri, self.sweep, self.axes, self.tags)
        self.queue: queue.Queue = queue.Queue()  # (trial key, RunEvents) from Tune's thread
        self._pending: dict[str, RunEvents] = {}  # the writer's unsent events, per trial key
        self._order: list[str] = []
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._member_keys: dict[str, list[str]] = {}  # Ray trial id -> its members' keys
        self._final_at: dict[str, int] = {}  # keys whose final report passed: when, in ms (Tune's thread)
        self._ended: set[str] = set()  # keys whose end was queued (Tune's thread)
        self._waiting: dict[str, float] = {}  # the writer's: since when each pending run has waited
        self._end_parent = False
        self._stop_at = 0.0
        self._progress_at = time.monotonic()  # the last run the store took
        self.failed_flushes = 0
        self.last_error: str | None = None

    # Tune pickles callbacks with the experiment state; threads and clients are rebuilt in setup().
    _SETTINGS = ("tracking_uri", "sweep", "axes", "tags", "flush_interval_s", "give_up_after_s", "live_every_s",
                 "progress_every_s", "ends_parent")

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in self._SETTINGS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # a state pickled before a setting existed gets its default

    # --- Tune hooks (Tune's thread: only queue work) -------------------------------------
    def setup(self, **info) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._write, name="minima-mlflow", daemon=True)
            self.thread.start()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        now_ms = int(time.time() * 1000)
        for key, events in self._start_events(trial):
            events.start_ms = now_ms  # a restored trial's run keeps the start it was created with
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
        now_ms = int(time.time() * 1000)  # on the driver's clock, like the start; Ray's timestamp has whole seconds
        for row in report_rows(result):
            key = keys[row.get(MEMBER_KEY) or 0]
            events = result_events({"timestamp": result.get("timestamp"), **row})
            if row.get(FINAL_KEY):
                self._final_at[key] = events.end_ms = now_ms
            self.queue.put((key, events))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        for key in self._keys(trial):
            self._end(key, RunEvents(end_status="FINISHED", end_ms=self._final_at.pop(key, None)))
        self._member_keys.pop(trial.trial_id, None)  # recomputed if ever asked for again

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        message = error_text(trial)
        now_ms = int(time.time() * 1000)
        for key in self._keys(trial):
            if key in self._final_at:  # a pack member that finished before its pack failed
                self._end(key, RunEvents(end_status="FINISHED", end_ms=self._final_at.pop(key)))
            else:
                events = failed(message)
                events.end_ms = now_ms
                self._end(key, events)
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
                if trial.status == "ERROR" and key not in self._final_at:
                    events.absorb(failed(error_text(trial)))
                else:  # its end time, if this driver never saw it, comes from its result.json
                    events.end_status, events.end_ms = "FINISHED", self._final_at.get(key)
                self._end(key, events)
        self.close(end_parent=self.ends_parent and all(t.status in ("TERMINATED", "ERROR") for t in trials))

    def close(self, end_parent: bool = True, stream=None) -> None:
        """Flush everything queued and stop the writer: waits while the store keeps taking runs,
        saying how many are left every `progress_every_s`, and gives up once none has been
        taken for `give_up_after_s`."""
        self._end_parent = end_parent
        self._stop_at = time.monotonic()
        self._stop.set()
        self.queue.put(_WAKE)
        if self.thread is None:
            return
        said = self._stop_at
        while True:
            self.thread.join(min(1.0, self.progress_every_s))
            if not self.thread.is_alive():
                return
            now = time.monotonic()
            if self._stalled(now):  # the writer is stuck in a call that does not return
                log.warning("MLflow: gave up with %d runs left to log: no write succeeded for %.0f s (%s)",
                            self._left(), self.give_up_after_s, self.last_error)
                return
            if now - said >= self.progress_every_s:
                said = now
                print(f"MLflow: {self._left()} runs left to log", file=stream or sys.stderr, flush=True)

    def _stalled(self, now: float) -> bool:
        return now - max(self._progress_at, self._stop_at) >= self.give_up_after_s

    def _left(self) -> int:
        """About how many runs still have events to send (read from another thread)."""
        return len(self._pending) + self.queue.qsize()

    @property
    def unlogged(self) -> int:
        """Trials with events MLflow has not received (after close: given up on)."""
        return len(set(self._pending) | {item[0] for item in list(self.queue.queue) if item is not _WAKE})

    # --- the writer thread ---------------------------------------------------------------
    def _write(self) -> None:
        """Merge queued events and flush the runs that are due every `flush_interval_s` (all of
        them after close()); on failure keep them and retry with a doubling wait (at most 30 s),
        giving up after close() once no write has succeeded for `give_up_after_s`."""
        pending, order = self._pending, self._order
        backoff = self.flush_interval_s
        while True:
            deadline = time.monotonic() + backoff
            while True:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is not _WAKE:
                    self._waiting.setdefault(item[0], time.monotonic())
                    merge(pending, order, *item)
                if self._stop.is_set():
                    deadline = 0.0
            stopping = self._stop.is_set()
            try:
                self.writer.flush(pending, order, ready=None if stopping else self._due, on_sent=self._sent)
                backoff = self.flush_interval_s
            except Exception as err:  # server down, lock timeout: keep everything, retry later
                self.failed_flushes += 1
                self.last_error = short_error(err)
                if self.failed_flushes & (self.failed_flushes - 1) == 0:  # 1st, 2nd, 4th, 8th ... failure
                    log.warning("MLflow logging failed %d times (%s); %d runs queued, retrying",
                                self.failed_flushes, self.last_error, len(pending))
                backoff = min(30.0, backoff * 2)
                if stopping:
                    if self._stalled(time.monotonic()):
                        return  # what is left is in `unlogged`; the sweep's storage has all of it
                    backoff = min(backoff, self.give_up_after_s / 4)
                continue
            if stopping and self.queue.empty():
                if self._end_parent:
                    self.writer.finish_parent()
                return

    def _due(self, key: str, ev: RunEvents) -> bool:
        """Whether a run goes out in this flush while the sweep runs: once its trial ended, or
        once its events have waited `live_every_s`."""
        return ev.end_status is not None or time.monotonic() - self._waiting.get(key, 0.0) >= self.live_every_s

    def _sent(self, key: str) -> None:
        self._waiting.pop(key, None)
        self._progress_at = time.monotonic()
