"""A one-line progress display for a sweep: done / running / pending / failed and an ETA.

Tune's own table is built for a handful of trials; a phase sweep has thousands, and the
scientist wants counts and time left.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from ray.tune import Callback


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class SweepProgress(Callback):
    def __init__(self, total: int, every_s: float = 10.0, stream=None):
        self.total = total
        self.every_s = every_s
        self.stream = stream
        self._started = time.monotonic()
        self._last = 0.0
        self._done_here = 0  # completed since this driver started: the rate behind the ETA
        self.outcomes: Counter = Counter()

    def __getstate__(self):
        return {"total": self.total, "every_s": self.every_s}

    def __setstate__(self, state):
        self.__init__(state["total"], state["every_s"])

    def setup(self, **info):
        self._started = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._done_here += 1

    def on_trial_error(self, iteration, trials, trial, **info):
        self._done_here += 1

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(trials)

    def on_experiment_end(self, trials, **info):
        self._print(trials, final=True)

    def _print(self, trials, final: bool = False) -> None:
        status = Counter(t.status for t in trials)
        outcomes = Counter(
            "error" if t.status == "ERROR" else (t.last_result or {}).get("status", "ok")
            for t in trials if t.status in ("TERMINATED", "ERROR")
        )
        self.outcomes = outcomes
        done = status["TERMINATED"] + status["ERROR"]
        pending = max(self.total - done - status["RUNNING"], status["PENDING"])
        elapsed = time.monotonic() - self._started
        eta = "--"
        if self._done_here and not final:
            eta = _clock(elapsed / self._done_here * (self.total - done))
        parts = [f"{done}/{self.total} done", f"{status['RUNNING']} running", f"{pending} pending",
                 f"{outcomes['diverged']} diverged", f"{outcomes['error']} failed",
                 f"elapsed {_clock(elapsed)}", f"ETA {eta}"]
        print("[minima] " + " | ".join(parts), file=self.stream or sys.stderr, flush=True)
