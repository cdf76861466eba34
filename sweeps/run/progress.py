"""A one-line progress display for a sweep: done / running / pending / failed and an ETA.

Tune's own table is built for a handful of trials; a phase sweep has thousands, and the
scientist wants counts and time left.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from ray.tune import Callback

from trainables.reports import is_final, member_of, member_values, report_rows


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class SweepProgress(Callback):
    def __init__(self, total: int, every_s: float = 10.0, stream=None, capped: bool = False,
                 before: dict[str, int] | None = None):
        self.total = total
        self.before = dict(before or {})  # outcomes of the sweep's earlier parts (a sweep in parts)
        self.capped = capped  # total is a budget (boundary search), not the trials owed: no ETA
        self.every_s = every_s
        self.stream = stream
        self._started = time.monotonic()
        self._last = 0.0
        self._done_here = 0  # completed since this driver started: the rate behind the ETA
        self._finals: dict[str, dict[int, str]] = {}  # running Ray trial id -> member -> status (packs)
        # trials that ended here, folded into counts: nothing kept per trial but its id
        self._ended_ids: set[str] = set()
        # trials that had ended when this driver started (a resumed sweep's): what Tune marks
        # TERMINATED later without on_trial_complete it stopped with the sweep, unfinished
        self._ended_before: set[str] | None = None
        self._ended_outcomes: Counter = Counter(self.before)
        self.outcomes: Counter = Counter()

    def __getstate__(self):
        return {"total": self.total, "every_s": self.every_s, "capped": self.capped, "before": self.before}

    def __setstate__(self, state):
        self.__init__(state["total"], state["every_s"], capped=state.get("capped", False), before=state.get("before"))

    def setup(self, **info):
        self._started = time.monotonic()

    def on_step_begin(self, iteration, trials, **info):
        if self._ended_before is None:
            self._ended_before = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for row in report_rows(result):
            if is_final(row):
                finals = self._finals.setdefault(trial.trial_id, {})
                if member_of(row) not in finals:
                    self._done_here += 1
                finals[member_of(row)] = str(row.get("status", "ok"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._done_here += self._size(trial) - len(self._finals.get(trial.trial_id, {}))
        self._end(trial, "ERROR")

    def _end(self, trial, status: str) -> None:
        self._ended_outcomes.update(self._tally(trial, status, self._finals.pop(trial.trial_id, {})))
        self._ended_ids.add(trial.trial_id)

    def _tally(self, t, status: str, seen: dict[int, str]) -> Counter:
        """Outcomes of an ended trial: its members' own final statuses, the rest from how it ended."""
        size = self._size(t)
        outcomes = Counter(seen.values())
        if status == "TERMINATED" and size == 1 and not seen:
            outcomes[(t.last_result or {}).get("status", "ok")] += 1
        elif status == "TERMINATED":  # a pack finished before this driver: members unseen
            outcomes["ok"] += size - len(seen)
        elif status == "ERROR":
            outcomes["error"] += size - len(seen)
        return outcomes

    @staticmethod
    def _size(trial) -> int:
        return len(member_values(trial.config))

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(trials)

    def on_experiment_end(self, trials, **info):
        self._print(trials, final=True)

    def _print(self, trials, final: bool = False) -> None:
        """Counts of trials, a pack's members counted one by one as each finishes."""
        outcomes: Counter = Counter(self._ended_outcomes)
        running = pending_known = 0
        for t in trials:
            if t.trial_id in self._ended_ids:
                continue
            seen = self._finals.get(t.trial_id, {})
            if t.status in ("TERMINATED", "ERROR") and (self._ended_before is None or t.trial_id in self._ended_before):
                outcomes.update(self._tally(t, t.status, seen))
            elif t.status == "RUNNING":
                outcomes.update(seen.values())
                running += self._size(t) - len(seen)
            else:  # pending, or stopped with the sweep
                outcomes.update(seen.values())
                pending_known += self._size(t) - len(seen)
        self.outcomes = outcomes
        done = sum(outcomes.values())
        pending = pending_known if self.capped else max(self.total - done - running, pending_known)
        elapsed = time.monotonic() - self._started
        eta = "--"
        if self._done_here and not final and not self.capped:
            eta = _clock(elapsed / self._done_here * (self.total - done))
        parts = [f"{done} done (budget {self.total})" if self.capped else f"{done}/{self.total} done",
                 f"{running} running", f"{pending} pending", f"{outcomes['diverged']} diverged",
                 f"{outcomes['error']} failed", f"elapsed {_clock(elapsed)}", f"ETA {eta}"]
        print("[minima] " + " | ".join(parts), file=self.stream or sys.stderr, flush=True)
