"""What the MLflow logging sends for a trial's run, merged per run until it is sent: params,
tags, metrics (name, value, ms, step), when the trial started and ended, how it ended, and
where its reports are stored; and who a Ray trial's runs are (`RunIdentities`)."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from trainables.metrics import EPOCH_METRICS, FINAL_METRICS
from trainables.reports import is_final, member_values

from ..design.keys import KnownKeys, member_trial_id
from .mlflow_runs import PART_TAG
from ..storage.sweep_files import part_of


@dataclass
class RunEvents:
    """What is queued for one trial's run, merged across events until the next flush."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # name, value, ms, step
    end_status: str | None = None
    start_ms: int | None = None  # when the trial started (a pack member: its Ray trial)
    end_ms: int | None = None  # when its final report came (or it failed)
    source: tuple[tuple[str, ...], int | None] | None = None  # its Ray trial's folders, its member index in a pack

    def absorb(self, ev: "RunEvents") -> None:
        self.params.update(ev.params)
        self.tags.update(ev.tags)
        self.metrics.extend(ev.metrics)
        self.end_status = ev.end_status or self.end_status
        self.start_ms = earliest(self.start_ms, ev.start_ms)
        self.end_ms = ev.end_ms or self.end_ms
        self.source = self.source or ev.source


@dataclass(frozen=True)
class RunIdentities:
    """Who the runs of a sweep's Ray trials are: params and identifying tags, one run per pack member."""

    sweep: str
    axes: tuple[str, ...]
    tags: dict[str, str] = field(default_factory=dict)  # on every run: the git commit, the package version
    known: KnownKeys = field(default_factory=KnownKeys)  # a grid plan's keys, found instead of made

    def of(self, config: dict[str, Any], trial_id: str, dirs: list[str]) -> list[tuple[str, RunEvents]]:
        """(trial key, events) of each run of a Ray trial, with where its results live."""
        members = member_values(config)
        parts = {part_of(d) for d in dirs} - {None}
        where = {PART_TAG: str(parts.pop())} if parts else {}
        out = []
        for member, values in enumerate(members):
            keys = self.known.of(values)
            key = keys.trial
            out.append((key, RunEvents(
                params={k: str(v) for k, v in sorted(values.items())},
                tags={"sweep": self.sweep, "cell": keys.cell, "seed": str(values.get("seed", 0)),
                      "trial_key": key, "trial_id": member_trial_id(trial_id, member, len(members)),
                      "ray_trial_id": trial_id, "mlflow.runName": self._run_name(values), **where, **self.tags},
                source=(tuple(dirs), member if len(members) > 1 else None),
            )))
        return out

    def _run_name(self, values: dict[str, Any]) -> str:
        parts = [f"{a}={values[a]}" for a in self.axes if a in values] + [f"seed={values.get('seed', 0)}"]
        return " ".join(parts)


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
    if is_final(result):
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
