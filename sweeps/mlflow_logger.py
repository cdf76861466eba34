"""Our MLflow logging for Ray Tune: batched, off the driver, idempotent across restores.

Ray's MLflowLoggerCallback makes one SQL commit per metric per report and keeps run ids only in
memory, so it slows a sweep down and duplicates runs after a restore. This callback only
queues events on Tune's thread; a writer process (`mlflow_writer_process`) sends them with one
`log_batch` per run per flush. A run is sent once its trial ends, or once its events have waited
`live_every_s` (a long trial's run shows its metrics as it goes), so a short trial's whole
history goes in one call. Each run is keyed by the trial's deterministic key, so a restored
sweep finds and continues its runs. A tracking server that is down only delays logging: events
stay queued and are retried. At the end of a sweep the logger drains for as long as the store
keeps taking runs, and gives up only once no write has succeeded for `give_up_after_s`.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import sys
import time
from typing import Any, Callable

from ray.tune import Callback

from trainables.tune_trainable import FINAL_KEY, MEMBER_KEY, member_values, report_rows

from .keys import trial_key
from .mlflow_events import RunEvents, RunIdentities, error_text, failed, result_events
from .mlflow_writer import MLflowWriter
from .mlflow_writer_process import EVENTS, STOP, WriterStatus, WriterTiming, write_loop

log = logging.getLogger(__name__)


class MLflowSweepLogger(Callback):
    """One MLflow experiment per sweep, one parent run, one child run per trial (per member
    of a packed Ray trial: reports carry a `member` index)."""

    def __init__(self, tracking_uri: str, sweep: str, axes: list[str], tags: dict[str, str] | None = None,
                 flush_interval_s: float = 2.0, give_up_after_s: float = 30.0, live_every_s: float = 10.0,
                 progress_every_s: float = 5.0, ends_parent: bool = True, part: int | None = None):
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
        self.part = part  # in a sweep run in parts: this Tune experiment's part
        self._init_runtime()

    def _init_runtime(self) -> None:
        self.identities = RunIdentities(self.sweep, tuple(self.axes), self.tags)
        self._ctx = multiprocessing.get_context("spawn")  # a forked copy of a Ray driver is unsafe
        self.inbox = self._ctx.Queue()  # (EVENTS, trial key, RunEvents) from Tune's thread, then (STOP, end parent)
        self.status = WriterStatus(self._ctx)
        self.process = None
        self._member_keys: dict[str, list[str]] = {}  # Ray trial id -> its members' keys
        self._final_at: dict[str, int] = {}  # keys whose final report passed: when, in ms
        self._ended: set[str] = set()  # keys whose end was queued
        self._stopped = False

    @property
    def timing(self) -> WriterTiming:
        return WriterTiming(self.flush_interval_s, self.live_every_s, self.give_up_after_s)

    def make_writer(self) -> Callable[[], Any]:
        """What the writer process sends with (a picklable factory; tests swap in a stand-in)."""
        return functools.partial(MLflowWriter, self.tracking_uri, self.sweep, list(self.axes), self.tags, self.part)

    # Tune pickles callbacks with the experiment state; the queue and the writer process are made anew.
    _SETTINGS = ("tracking_uri", "sweep", "axes", "tags", "flush_interval_s", "give_up_after_s", "live_every_s",
                 "progress_every_s", "ends_parent", "part")

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in self._SETTINGS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # a state pickled before a setting existed gets its default

    # --- Tune hooks (Tune's thread: only queue work) -------------------------------------
    def setup(self, **info) -> None:
        if self.process is None:
            self.process = self._ctx.Process(target=write_loop, name="minima-mlflow", daemon=True,
                                             args=(self.make_writer(), self.timing, self.inbox, self.status))
            self.process.start()

    def _put(self, key: str, events: RunEvents) -> None:
        self.inbox.put((EVENTS, key, events))

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        now_ms = int(time.time() * 1000)
        for key, events in self._start_events(trial):
            events.start_ms = now_ms  # a restored trial's run keeps the start it was created with
            self._put(key, events)

    def _start_events(self, trial) -> list[tuple[str, RunEvents]]:
        out = self.identities.of(trial.config, trial.trial_id, [d for d in (trial.local_path, trial.path) if d])
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
            self._put(key, events)

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
        self._put(key, events)

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
        """Send everything queued and stop the writer: waits while the store keeps taking runs,
        saying how many are left every `progress_every_s`, and gives up once none has been
        taken for `give_up_after_s`."""
        if self.process is None or self._stopped:
            return
        self._stopped = True
        stop_at = time.monotonic()
        self.inbox.put((STOP, end_parent))
        said = stop_at
        while True:
            self.process.join(min(1.0, self.progress_every_s))
            if not self.process.is_alive():
                break
            now = time.monotonic()
            if now - max(self.status.sent_at.value, stop_at) >= self.timing.hung_after_s:
                log.warning("MLflow: gave up with %d runs left to log: no write succeeded for %.0f s (%s)",
                            self.status.left.value, self.timing.hung_after_s, self.status.last_error)
                self.process.terminate()
                self.process.join(5)
                break
            if now - said >= self.progress_every_s:
                said = now
                print(f"MLflow: {self.status.left.value} runs left to log", file=stream or sys.stderr, flush=True)
        self.inbox.close()

    @property
    def unlogged(self) -> int:
        """Runs the writer holds unsent (after close: given up on)."""
        return self.status.left.value
