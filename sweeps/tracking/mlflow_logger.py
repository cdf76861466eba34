"""Our MLflow logging for Ray Tune: batched, off the driver, idempotent across restores.

Ray's MLflowLoggerCallback makes one SQL commit per metric per report and keeps run ids only in
memory, so it slows a sweep down and duplicates runs after a restore. This callback only
queues events on Tune's thread; a writer process (`mlflow_writer_process`) sends them with one
`log_batch` per run per flush. A run is sent once its trial ends, or once its events have waited
`live_every_s` (a long trial's run shows its metrics as it goes), so a short trial's whole
history goes in one call. Each run is keyed by the trial's deterministic key, so a restored
sweep finds and continues its runs. A tracking server that is down only delays logging: events
stay queued and are retried.

The runner hands every Tune experiment of a `minima run` the same writer and stops it after the
last; a callback restored from a stored experiment starts its own and stops it when its
experiment ends. Stopping drains for as long as the store keeps taking runs, and gives up only
once no write has succeeded for `give_up_after_s`.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

from ray.tune import Callback

from trainables.reports import is_final, member_of, member_values, report_rows

from ..design.keys import KnownKeys
from .mlflow_events import RunEvents, RunIdentities, error_text, failed, result_events
from .mlflow_writer import MLflowWriter
from .mlflow_writer_process import WriterProcess, WriterTiming

DEFAULT_TIMING = WriterTiming()


def writer_factory(tracking_uri: str, sweep: str, axes: list[str], tags: dict[str, str]) -> Callable[[], MLflowWriter]:
    """What a writer process sends with (picklable)."""
    return functools.partial(MLflowWriter, tracking_uri, sweep, list(axes), dict(tags))


class MLflowSweepLogger(Callback):
    """One MLflow experiment per sweep, one parent run, one child run per trial (per member
    of a packed Ray trial: reports carry a `member` index)."""

    def __init__(self, tracking_uri: str, sweep: str, axes: list[str], tags: dict[str, str] | None = None,
                 flush_interval_s: float = DEFAULT_TIMING.flush_interval_s,
                 give_up_after_s: float = DEFAULT_TIMING.give_up_after_s,
                 live_every_s: float = DEFAULT_TIMING.live_every_s,
                 progress_every_s: float = 5.0, ends_parent: bool = True, writer: WriterProcess | None = None,
                 known: KnownKeys | None = None):
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
        self.writer = writer  # the runner's, shared by every experiment of the run; else this callback's own
        self._owns_writer = writer is None
        # the plan's keys are not pickled: a callback restored from storage makes each trial's once
        self.identities = RunIdentities(self.sweep, tuple(self.axes), self.tags, known or KnownKeys())
        self._member_keys: dict[str, list[str]] = {}  # Ray trial id -> its members' keys
        self._final_at: dict[str, int] = {}  # keys whose final report passed: when, in ms
        self._ended_trials: set[str] = set()  # Ray trials whose every run's end was queued

    @property
    def timing(self) -> WriterTiming:
        return WriterTiming(self.flush_interval_s, self.live_every_s, self.give_up_after_s)

    def make_writer(self) -> Callable[[], Any]:
        """What this callback's own writer process sends with (tests swap in a stand-in)."""
        return writer_factory(self.tracking_uri, self.sweep, self.axes, self.tags)

    # Tune pickles callbacks with the experiment state; a restored one starts a writer of its own.
    _SETTINGS = ("tracking_uri", "sweep", "axes", "tags", "flush_interval_s", "give_up_after_s", "live_every_s",
                 "progress_every_s", "ends_parent")

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in self._SETTINGS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a setting pickled before it existed gets its default; one since dropped (`part`) is ignored
        self.__init__(**{k: v for k, v in state.items() if k in self._SETTINGS})

    # --- Tune hooks (Tune's thread: only queue work) -------------------------------------
    def setup(self, **info) -> None:
        if self.writer is None:
            self.writer = WriterProcess(self.make_writer(), self.timing, self.progress_every_s)
        self.writer.start()

    @property
    def process(self):
        return self.writer.process if self.writer is not None else None

    @property
    def status(self):
        return self.writer.status

    def _put(self, key: str, events: RunEvents) -> None:
        self.writer.put(key, events)

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
            self._member_keys[trial.trial_id] = [self.identities.known.of(v).trial for v in member_values(trial.config)]
        return self._member_keys[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        keys = self._keys(trial)
        now_ms = int(time.time() * 1000)  # on the driver's clock, like the start; Ray's timestamp has whole seconds
        for row in report_rows(result):
            key = keys[member_of(row)]
            events = result_events({"timestamp": result.get("timestamp"), **row})
            if is_final(row):
                self._final_at[key] = events.end_ms = now_ms
            self._put(key, events)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        for key in self._keys(trial):
            self._put(key, RunEvents(end_status="FINISHED", end_ms=self._final_at.pop(key, None)))
        self._ended_trials.add(trial.trial_id)
        self._member_keys.pop(trial.trial_id, None)  # recomputed if ever asked for again

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        message = error_text(trial)
        now_ms = int(time.time() * 1000)
        for key in self._keys(trial):
            if key in self._final_at:  # a pack member that finished before its pack failed
                self._put(key, RunEvents(end_status="FINISHED", end_ms=self._final_at.pop(key)))
            else:
                events = failed(message)
                events.end_ms = now_ms
                self._put(key, events)
        self._ended_trials.add(trial.trial_id)
        self._member_keys.pop(trial.trial_id, None)

    def on_experiment_end(self, trials, **info) -> None:
        for trial in trials:  # trials finished before a restore were never seen ending here
            if trial.status not in ("TERMINATED", "ERROR") or trial.trial_id in self._ended_trials:
                continue
            for key, events in self._start_events(trial):  # their runs may not even exist yet
                if trial.status == "ERROR" and key not in self._final_at:
                    events.absorb(failed(error_text(trial)))
                else:  # its end time, if this driver never saw it, comes from its result.json
                    events.end_status, events.end_ms = "FINISHED", self._final_at.get(key)
                self._put(key, events)
        if self._owns_writer:
            self.close(end_parent=self.ends_parent and all(t.status in ("TERMINATED", "ERROR") for t in trials))

    def close(self, end_parent: bool = True, stream=None) -> None:
        """Stop this callback's own writer (`WriterProcess.close`); the runner stops a shared one."""
        if self._owns_writer and self.writer is not None:
            self.writer.close(end_parent, stream)

    @property
    def unlogged(self) -> int:
        """Runs the writer holds unsent (after close: given up on)."""
        return self.writer.unlogged
