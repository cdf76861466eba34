"""What the MLflow logging sends for a trial's run, merged per run until it is sent: params,
tags, metrics (name, value, ms, step), when the trial started and ended, and how it ended."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from trainables.metrics import EPOCH_METRICS, FINAL_METRICS
from trainables.tune_trainable import FINAL_KEY


@dataclass
class RunEvents:
    """What is queued for one trial's run, merged across events until the next flush."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # name, value, ms, step
    end_status: str | None = None
    start_ms: int | None = None  # when the trial started (a pack member: its Ray trial)
    end_ms: int | None = None  # when its final report came (or it failed)

    def absorb(self, ev: "RunEvents") -> None:
        self.params.update(ev.params)
        self.tags.update(ev.tags)
        self.metrics.extend(ev.metrics)
        self.end_status = ev.end_status or self.end_status
        self.start_ms = earliest(self.start_ms, ev.start_ms)
        self.end_ms = ev.end_ms or self.end_ms


def earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def merge(pending: dict[str, RunEvents], order: list[str], key: str, ev: RunEvents) -> None:
    """Add `ev` to run `key`'s pending events; `order` keeps the runs in first-seen order."""
    if key not in pending:
        pending[key] = RunEvents()
        order.append(key)
    pending[key].absorb(ev)


def _metric_items(result: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for name in names:
        value = result.get(name)
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
    return out


def result_events(result: dict[str, Any]) -> RunEvents:
    """The metrics and tags of one Tune report (an epoch, or the trial's final summary, whose
    time is the trial's end)."""
    step = int(result.get("step") or result.get("training_iteration") or 0)
    stamp = int((result.get("timestamp") or time.time()) * 1000)
    end_ms = None
    if result.get(FINAL_KEY):
        items = _metric_items(result, FINAL_METRICS)
        tags = {"status": str(result.get("status"))}
        end_ms = stamp
    else:
        items = _metric_items(result, EPOCH_METRICS)
        tags = {"stage": str(result.get("stage"))}
    return RunEvents(tags=tags, metrics=[(k, v, stamp, step) for k, v in items.items()], end_ms=end_ms)


def error_text(trial) -> str:
    """The traceback Ray wrote for a failed trial (driver staging copy first, then storage)."""
    try:
        if trial.error_file and os.path.exists(trial.error_file):
            with open(trial.error_file) as f:
                return f.read().strip()
        return str(trial.get_error() or "").strip()
    except Exception:  # a missing error file must not break logging
        return ""


def failed(message: str) -> RunEvents:
    """The end of a run whose trial raised, with the tail of its traceback."""
    return RunEvents(tags={"status": "error", "error": message.strip()[-4000:] or "trial raised"}, end_status="FAILED")
