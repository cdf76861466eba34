"""The MLflow writer's own process: it takes a sweep's run events from a queue, merges them per
run and sends each run when it is due (`MLflowWriter`), keeping everything through store outages;
and `WriterProcess`, the driver's handle on it.

A process, not a thread of the driver: the SQL store's client is pure Python, and in the
driver it would hold Tune's interpreter lock for every run it writes, delaying every trial's
report. It runs at the driver's CPU priority: a lower one made no sweep faster on a busy
head, only left its events queued in the driver until the sweep ended (docs/performance.md).
It shares its state with the driver through `WriterStatus`: how many runs it holds unsent,
when it last sent one, its failures. When it stops it hands back the keys of the runs the store
took complete, so the end-of-sweep audit reads back only the others.

One writer serves a whole `minima run`, every part of a sweep run in parts included: a part
ends without waiting for its runs to be logged, and the writer starts once.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import queue
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from .mlflow_events import merge
from .mlflow_runs import short_error

log = logging.getLogger(__name__)

STOP = "stop"  # (STOP, end_parent): everything queued before it is the last of the sweep
EVENTS = "events"  # (EVENTS, trial key, RunEvents)


class WriterStatus:
    """Values the writer process updates and the driver reads (shared memory, no lock needed:
    one writer, and a stale read only delays a progress line)."""

    def __init__(self, ctx):
        self.left = ctx.Value(ctypes.c_long, 0, lock=False)  # runs with unsent events
        self.sent_at = ctx.Value(ctypes.c_double, time.monotonic(), lock=False)  # the last run the store took
        self.failed = ctx.Value(ctypes.c_long, 0, lock=False)  # flushes that raised
        self._error = ctx.Array(ctypes.c_char, 400, lock=False)

    @property
    def last_error(self) -> str | None:
        return self._error.value.decode(errors="replace") or None

    @last_error.setter
    def last_error(self, text: str) -> None:
        self._error.value = text.encode()[:399]


@dataclass(frozen=True)
class WriterTiming:
    flush_interval_s: float = 2.0  # between flushes while the sweep runs
    live_every_s: float = 10.0  # a run whose events waited this long goes out before its trial ends
    give_up_after_s: float = 30.0  # after STOP: without a successful write this long, what is left stays unsent

    @property
    def hung_after_s(self) -> float:
        """After STOP, how long without a write means the writer hangs in a call: a failing one
        retries at most a quarter of `give_up_after_s` apart, so it has given up by itself by then."""
        return self.give_up_after_s * 1.5


def write_loop(make_writer: Callable[[], Any], timing: WriterTiming, inbox, outbox, status: WriterStatus) -> None:
    """The writer process: merge queued events and flush the runs that are due every
    `flush_interval_s` (all of them after STOP); on failure keep them and retry with a doubling
    wait (at most 30 s), giving up after STOP once no write has succeeded for `give_up_after_s`.
    On the way out it puts the keys of the runs the store took complete on `outbox`.
    A driver that died (killed, out of memory) is a STOP without ending the parent run: what it
    had queued is still sent, and the process does not outlive it."""
    driver = multiprocessing.parent_process()
    writer = make_writer()
    pending: dict[str, Any] = {}
    order: list[str] = []
    waiting: dict[str, float] = {}  # since when each pending run has waited
    stopping, end_parent, stop_at = False, False, 0.0

    def due(key: str, ev) -> bool:
        return ev.end_status is not None or time.monotonic() - waiting.get(key, 0.0) >= timing.live_every_s

    def sent(key: str) -> None:
        waiting.pop(key, None)
        status.sent_at.value = time.monotonic()
        status.left.value = len(pending)

    backoff = timing.flush_interval_s
    while True:
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            try:  # a second at most: a dead driver is noticed between its events
                item = inbox.get(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if driver is not None and not driver.is_alive():
                    _take_rest(inbox, pending, order)
                    stopping, stop_at = True, time.monotonic()
                continue
            if item[0] == STOP:
                stopping, end_parent, stop_at = True, item[1], time.monotonic()
                break
            _, key, events = item
            waiting.setdefault(key, time.monotonic())
            merge(pending, order, key, events)
        status.left.value = len(pending)
        try:
            writer.flush(pending, order, ready=None if stopping else due, on_sent=sent)
            backoff = timing.flush_interval_s
        except Exception as err:  # server down, lock timeout: keep everything, retry later
            status.failed.value += 1
            status.last_error = short_error(err)
            failures = status.failed.value
            if failures & (failures - 1) == 0:  # 1st, 2nd, 4th, 8th ... failure
                log.warning("MLflow logging failed %d times (%s); %d runs queued, retrying",
                            failures, status.last_error, len(pending))
            backoff = min(30.0, backoff * 2)
            if stopping:
                if time.monotonic() - max(status.sent_at.value, stop_at) >= timing.give_up_after_s:
                    _hand_back(writer, outbox, driver)
                    return  # what is left is counted in status.left; the sweep's storage has all of it
                backoff = min(backoff, timing.give_up_after_s / 4)
                time.sleep(backoff)  # no events left to wait for
            continue
        if stopping:
            if end_parent:
                writer.finish_parent()
            _hand_back(writer, outbox, driver)
            return


def _hand_back(writer, outbox, driver) -> None:
    """The keys of the runs the store took complete, for the driver's audit. Not to a dead
    driver: nobody would read them, and a full pipe would keep this process from exiting."""
    if driver is None or driver.is_alive():
        outbox.put(sorted(getattr(writer, "complete", ())))


def _take_rest(inbox, pending: dict[str, Any], order: list[str]) -> None:
    """Everything a dead driver left in the queue."""
    while True:
        try:
            item = inbox.get(timeout=0.1)
        except (queue.Empty, EOFError, OSError):
            return
        if item[0] == EVENTS:
            merge(pending, order, item[1], item[2])


class WriterProcess:
    """The driver's handle on a writer process: events go in with `put`; `close` sends what is
    queued and stops it, then `complete` holds the keys of the runs the store took complete."""

    def __init__(self, make_writer: Callable[[], Any], timing: WriterTiming = WriterTiming(),
                 progress_every_s: float = 5.0):
        self.make_writer = make_writer  # a picklable factory of what the process sends with
        self.timing = timing
        self.progress_every_s = progress_every_s  # a line on stderr while the end-of-sweep drain lasts
        self._ctx = multiprocessing.get_context("spawn")  # a forked copy of a Ray driver is unsafe
        self.inbox = self._ctx.Queue()  # (EVENTS, trial key, RunEvents), then (STOP, end parent)
        self.outbox = self._ctx.Queue()  # the writer's one reply: the keys of the runs it logged complete
        self.status = WriterStatus(self._ctx)
        self.process = None
        self.complete: set[str] = set()
        self._replied = False
        self._stopped = False

    def start(self) -> None:
        if self.process is None:
            self.process = self._ctx.Process(target=write_loop, name="minima-mlflow", daemon=True,
                                             args=(self.make_writer, self.timing, self.inbox, self.outbox, self.status))
            self.process.start()

    def put(self, key: str, events) -> None:
        self.inbox.put((EVENTS, key, events))

    def close(self, end_parent: bool, stream=None) -> None:
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
            if self._replied:
                self.process.join(min(1.0, self.progress_every_s))
            else:  # read before the join: a reply left in a full pipe would keep the process from exiting
                self._take_reply(min(1.0, self.progress_every_s))
            if not self.process.is_alive():
                if not self._replied:
                    self._take_reply(0.5)  # what the pipe still holds of an exited process's reply
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
        self.process.join(5)
        self.inbox.close()

    def _take_reply(self, timeout_s: float) -> None:
        try:
            self.complete.update(self.outbox.get(timeout=timeout_s))
            self._replied = True
        except (queue.Empty, EOFError, OSError):
            pass

    @property
    def unlogged(self) -> int:
        """Runs the writer holds unsent (after close: given up on)."""
        return self.status.left.value
