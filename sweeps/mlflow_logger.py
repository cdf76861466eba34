"""Our MLflow logging for Ray Tune: batched, off the driver's loop, idempotent across restores.

Ray's MLflowLoggerCallback makes one SQL commit per metric per report and keeps run ids only in
memory, so it slows a sweep down and duplicates runs after a restore. This callback only
queues events on Tune's thread; a writer thread sends them with one `log_batch` per run per
flush. Each run is keyed by the trial's deterministic key, so a restored sweep finds and
continues its runs; metrics at steps already logged are skipped. A tracking server that is
down only delays logging: events stay queued and are retried.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

from trainables.metrics import EPOCH_METRICS, FINAL_METRICS

from trainables.tune_trainable import FINAL_KEY, MEMBER_KEY, member_values, report_rows

from .keys import cell_key, member_trial_id, trial_key
from .results import read_result_rows

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits (mlflow.utils.validation)
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000  # metrics, params and tags together
SEARCH_PAGE = 10_000  # runs per page when a resumed sweep looks up its trials' runs
_WAKE = None  # queued by close(): the writer flushes now instead of at the end of its interval
LOGGED_STEP_TAG = "minima.logged_step"
FINAL_LOGGED_TAG = "minima.final_logged"


@dataclass
class _RunEvents:
    """What is queued for one trial's run, merged across events until the next flush."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # name, value, ms, step
    end_status: str | None = None


def _metric_items(result: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for name in names:
        value = result.get(name)
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
    return out


def short_error(err: Exception) -> str:
    """One line about a tracking-store failure (MLflow's own messages run to a paragraph)."""
    text = str(err)
    for cause in ("Connection refused", "Read timed out", "Name or service not known", "database is locked"):
        if cause in text:
            return f"{type(err).__name__}: {cause.lower()}"
    return f"{type(err).__name__}: {text.splitlines()[0][:160] if text else ''}"


def _error_text(trial) -> str:
    """The traceback Ray wrote for a failed trial (driver staging copy first, then storage)."""
    try:
        if trial.error_file and os.path.exists(trial.error_file):
            with open(trial.error_file) as f:
                return f.read().strip()
        return str(trial.get_error() or "").strip()
    except Exception:  # a missing error file must not break logging
        return ""


def _result_events(result: dict[str, Any]) -> _RunEvents:
    """The metrics and tags of one Tune report (an epoch, or the trial's final summary)."""
    step = int(result.get("step") or result.get("training_iteration") or 0)
    stamp = int((result.get("timestamp") or time.time()) * 1000)
    if result.get(FINAL_KEY):
        items = _metric_items(result, FINAL_METRICS)
        tags = {"status": str(result.get("status"))}
    else:
        items = _metric_items(result, EPOCH_METRICS)
        tags = {"stage": str(result.get("stage"))}
    return _RunEvents(tags=tags, metrics=[(k, v, stamp, step) for k, v in items.items()])


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
        self._queue: queue.Queue = queue.Queue()
        self._pending: dict[str, _RunEvents] = {}  # the writer's unsent events, per trial key
        self._order: list[str] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._runs: dict[str, str] = {}  # trial key -> run id
        self._logged_step: dict[str, int] = {}
        self._params_due: dict[str, dict[str, str]] = {}  # per key: params its run still lacks
        self._final_logged: set[str] = set()
        self._sent_tags: dict[str, dict[str, str]] = {}  # per key: tags this process has logged
        self._trial_dirs: dict[str, tuple[list[str], int | None]] = {}  # where its result.json is, its member
        self._member_keys: dict[str, list[str]] = {}  # Ray trial id -> its members' keys
        self._finals_seen: set[str] = set()  # keys whose final report passed (Tune's thread)
        self._backfilled: set[str] = set()
        self._ended: set[str] = set()  # keys whose end was queued (Tune's thread)
        self._end_parent = False
        self._client = None
        self._existing: dict[str, Any] = {}  # trial key -> its run from an earlier driver or sync
        self._experiment_id: str | None = None
        self._parent_run_id: str | None = None
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
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="minima-mlflow", daemon=True)
            self._thread.start()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        for key, events in self._start_events(trial):
            self._queue.put((key, events))

    def _start_events(self, trial) -> list[tuple[str, _RunEvents]]:
        return self._run_identities(trial.config, trial.trial_id, [d for d in (trial.local_path, trial.path) if d])

    def _run_identities(self, config: dict[str, Any], trial_id: str, dirs: list[str]) -> list[tuple[str, _RunEvents]]:
        """Params and identifying tags of the runs of a Ray trial (one per pack member);
        remembers where their results live."""
        members = member_values(config)
        out = []
        for member, values in enumerate(members):
            key = trial_key(values)
            self._trial_dirs[key] = (dirs, member if len(members) > 1 else None)
            events = _RunEvents(
                params={k: str(v) for k, v in sorted(values.items())},
                tags={"sweep": self.sweep, "cell": cell_key(values), "seed": str(values.get("seed", 0)),
                      "trial_key": key, "trial_id": member_trial_id(trial_id, member, len(members)),
                      "ray_trial_id": trial_id, "mlflow.runName": self._run_name(values), **self.tags},
            )
            out.append((key, events))
        self._member_keys[trial_id] = [key for key, _ in out]
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
            self._queue.put((key, _result_events({"timestamp": result.get("timestamp"), **row})))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        for key in self._keys(trial):
            self._end(key, _RunEvents(end_status="FINISHED"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        message = _error_text(trial)[-4000:]
        for key in self._keys(trial):
            if key in self._finals_seen:  # a pack member that finished before its pack failed
                self._end(key, _RunEvents(end_status="FINISHED"))
            else:
                self._end(key, _RunEvents(tags={"status": "error", "error": message or "trial raised"},
                                          end_status="FAILED"))

    def _end(self, key: str, events: _RunEvents) -> None:
        self._ended.add(key)
        self._queue.put((key, events))

    def on_experiment_end(self, trials, **info) -> None:
        for trial in trials:  # trials finished before a restore were never seen ending here
            if trial.status not in ("TERMINATED", "ERROR"):
                continue
            for key, events in self._start_events(trial):  # their runs may not even exist yet
                if key in self._ended:
                    continue
                failed = trial.status == "ERROR" and key not in self._finals_seen
                events.end_status = "FAILED" if failed else "FINISHED"
                if failed:
                    events.tags.update({"status": "error", "error": _error_text(trial)[-4000:] or "trial raised"})
                self._end(key, events)
        self.close(end_parent=all(t.status in ("TERMINATED", "ERROR") for t in trials))

    def close(self, end_parent: bool = True, timeout_s: float = 60.0) -> None:
        """Flush everything queued and stop the writer (waits up to `timeout_s` for the server)."""
        self._end_parent = end_parent
        self._stop.set()
        self._queue.put(_WAKE)
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("MLflow logging did not finish in %.0f s: %s", timeout_s, self.last_error)

    # --- writer thread -------------------------------------------------------------------
    def _writer(self) -> None:
        pending, order = self._pending, self._order
        backoff = self.flush_interval_s
        stop_seen: float | None = None
        while True:
            deadline = time.monotonic() + backoff
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is not _WAKE:
                    self._merge(pending, order, *item)
                if self._stop.is_set():
                    deadline = 0.0
            try:
                self._flush(pending, order)
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
            if self._stop.is_set() and self._queue.empty():
                self._finish_parent()
                return

    @staticmethod
    def _merge(pending: dict[str, _RunEvents], order: list[str], key: str, ev: _RunEvents) -> None:
        if key not in pending:
            pending[key] = _RunEvents()
            order.append(key)
        MLflowSweepLogger._merge_into(pending[key], ev)

    @property
    def unlogged(self) -> int:
        """Trials with events MLflow has not received (after close: given up on)."""
        return len(set(self._pending) | {item[0] for item in list(self._queue.queue) if item is not _WAKE})

    def _connect(self) -> None:
        if self._client is not None:
            return
        # MLflow's own HTTP retries would block a flush for minutes; this thread retries instead
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(self.sweep)
        self._experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.sweep)
        if experiment:  # a resumed or synced sweep: its trials' runs, found in one search, not one each
            self._existing = self._trial_runs(client)
        parents = client.search_runs(
            [self._experiment_id], f"tags.`minima.role` = 'parent' and tags.sweep = '{self.sweep}'", max_results=1
        )
        if parents:
            self._parent_run_id = parents[0].info.run_id
            if parents[0].info.status != "RUNNING":
                client.update_run(self._parent_run_id, status="RUNNING")
        else:
            run = client.create_run(self._experiment_id, run_name=f"{self.sweep} (sweep)",
                                    tags={"minima.role": "parent", "sweep": self.sweep, **self.tags})
            self._parent_run_id = run.info.run_id
        self._client = client

    def _trial_runs(self, client) -> dict[str, Any]:
        """Every trial run of the sweep's experiment, by its `trial_key` tag."""
        runs, token = {}, None
        while True:
            page = client.search_runs([self._experiment_id], max_results=SEARCH_PAGE, page_token=token)
            runs.update({r.data.tags["trial_key"]: r for r in page if "trial_key" in r.data.tags})
            token = page.token
            if not token:
                return runs

    def _run_for(self, key: str, ev: _RunEvents) -> str:
        """The run of trial `key`: cached, found when the driver connected, or created. Its
        params go out with its first metrics (`_params_due`), one call fewer per run; a run
        found without them (its driver died in between) gets them then."""
        if key in self._runs:
            return self._runs[key]
        client = self._client
        run = self._existing.pop(key, None)
        if run is not None:
            run_id = run.info.run_id
            self._logged_step[key] = int(run.data.tags.get(LOGGED_STEP_TAG, "0"))
            if run.data.tags.get(FINAL_LOGGED_TAG):
                self._final_logged.add(key)
            if run.info.status != "RUNNING" and ev.end_status is None:
                client.update_run(run_id, status="RUNNING")  # a trial resumed after an error
            missing = {k: v for k, v in ev.params.items() if k not in run.data.params}
        else:
            tags = {"mlflow.parentRunId": self._parent_run_id, **ev.tags}
            run_id = client.create_run(self._experiment_id, tags=tags).info.run_id
            self._logged_step[key] = 0
            missing = dict(ev.params)
        if missing:
            self._params_due[key] = missing
        self._runs[key] = run_id
        return run_id

    def _flush(self, pending: dict[str, _RunEvents], order: list[str]) -> None:
        if not pending:
            return
        from mlflow.entities import RunTag

        self._connect()
        while order:
            key = order[0]
            ev = pending[key]
            run_id = self._run_for(key, ev)
            if key not in self._backfilled:
                self._backfill(key, ev)
            floor = self._logged_step.get(key, 0)
            # metrics a previous driver (or sync) already logged are replays: per-epoch ones by
            # step, the final summary by its tag
            final_done = key in self._final_logged
            epochs = sorted((m for m in ev.metrics if m[0] not in FINAL_METRICS and m[3] > floor), key=lambda m: m[3])
            finals = [m for m in ev.metrics if m[0] in FINAL_METRICS and not final_done]
            # every report repeats its stage tag: an unchanged tag costs a SQL upsert (20% of a batch) for nothing
            sent = self._sent_tags.setdefault(key, {})
            tags = {k: v for k, v in ev.tags.items() if sent.get(k) != v}
            self._send(key, run_id, epochs, finals, [RunTag(k, v) for k, v in tags.items()])
            sent.update(tags)
            if ev.end_status:
                self._client.set_terminated(run_id, ev.end_status)
            del pending[key]
            order.pop(0)

    def _send(self, key: str, run_id: str, epochs: list, finals: list, tags: list) -> None:
        """Log a run's metrics (epochs in step order), its due params and changed tags in as
        few calls as MLflow's batch limits allow.

        Each call stays within the limits itself (MLflow's client would split it and store the
        tags before the last metrics), and its logged-step tag names only steps whose every
        metric is in MLflow so far: a driver killed between two calls leaves a mark that its
        successor can trust, so the steps after it are sent again (MLflow drops exact repeats)
        rather than skipped forever.
        """
        from mlflow.entities import Metric, Param, RunTag

        metrics = epochs + finals
        params = [Param(k, v) for k, v in self._params_due.get(key, {}).items()]
        sent, first = 0, True
        while first or sent < len(metrics) or params or tags:
            first = False
            call_params, params = params[:MAX_PARAMS_TAGS_PER_BATCH], params[MAX_PARAMS_TAGS_PER_BATCH:]
            call_tags, tags = tags[: MAX_PARAMS_TAGS_PER_BATCH - 2], tags[MAX_PARAMS_TAGS_PER_BATCH - 2 :]
            room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(call_params) - len(call_tags) - 2)
            chunk = metrics[sent : sent + room]
            sent += len(chunk)
            done = self._logged_step.get(key, 0)
            if sent >= len(epochs) and epochs:
                done = max(done, epochs[-1][3])
            elif 0 < sent < len(epochs):
                done = max(done, epochs[sent][3] - 1 if epochs[sent][3] == epochs[sent - 1][3] else epochs[sent - 1][3])
            marks = [RunTag(LOGGED_STEP_TAG, str(done))]  # the 2 tags each call keeps room for
            if finals and sent == len(metrics):
                marks.append(RunTag(FINAL_LOGGED_TAG, "1"))
            self._client.log_batch(run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in chunk],
                                   params=call_params, tags=call_tags + marks)
            self._logged_step[key] = done
            if not params:
                self._params_due.pop(key, None)
        if finals:
            self._final_logged.add(key)

    def _backfill(self, key: str, ev: _RunEvents) -> None:
        """Put reports this process never saw (made before a driver died) ahead of the live ones.

        Ray's result.json holds every report up to the restored checkpoint; whatever of it is
        already in MLflow is skipped by step, so the run's history ends up complete, once.
        """
        rows: list[dict[str, Any]] = []
        dirs, member = self._trial_dirs.get(key, ([], None))
        for trial_dir in dirs:
            rows = read_result_rows(trial_dir, member)
            if rows:
                break
        earlier = _RunEvents()
        for row in rows:
            self._merge_into(earlier, _result_events(row))
        seen = {(m[0], m[3]) for m in earlier.metrics}
        ev.metrics = earlier.metrics + [m for m in ev.metrics if (m[0], m[3]) not in seen]
        ev.tags = {**earlier.tags, **ev.tags}
        self._backfilled.add(key)

    @staticmethod
    def _merge_into(target: _RunEvents, ev: _RunEvents) -> None:
        target.params.update(ev.params)
        target.tags.update(ev.tags)
        target.metrics.extend(ev.metrics)
        target.end_status = ev.end_status or target.end_status

    def sync_from_storage(self, experiment_dir: str) -> dict[str, int]:
        """Re-log every trial of a sweep from its stored results, synchronously and idempotently.

        For runs a tracking-server outage left incomplete, or a sweep run with --no-mlflow:
        missing runs are created, missing steps added, statuses set; nothing is duplicated.
        """
        from .results import list_trial_dirs, read_result_rows, read_trial_error, read_trial_params

        pending: dict[str, _RunEvents] = {}
        order: list[str] = []
        counts = {"trials": 0, "finished": 0, "failed": 0, "unfinished": 0}
        for trial_dir in list_trial_dirs(experiment_dir):
            params = read_trial_params(trial_dir)
            if params is None:
                continue
            trial_id = trial_dir.rstrip("/").rsplit("/", 1)[-1].removeprefix("trial_")
            identities = self._run_identities(params, trial_id, [trial_dir])
            finals = {r.get(MEMBER_KEY) or 0 for r in read_result_rows(trial_dir) if r.get(FINAL_KEY)}
            error = None if len(finals) == len(identities) else read_trial_error(trial_dir)
            for member, (key, events) in enumerate(identities):
                counts["trials"] += 1
                if member in finals:
                    events.end_status = "FINISHED"
                    counts["finished"] += 1
                elif error:
                    events.end_status = "FAILED"
                    events.tags.update({"status": "error", "error": error.strip()[-4000:]})
                    counts["failed"] += 1
                else:
                    counts["unfinished"] += 1
                self._merge(pending, order, key, events)
        self._end_parent = counts["unfinished"] == 0
        self._flush(pending, order)  # back-fills each run from its result.json on first touch
        self._finish_parent()
        return counts

    def _finish_parent(self) -> None:
        if self._client is not None and getattr(self, "_end_parent", False):
            self._client.set_terminated(self._parent_run_id, "FINISHED")

    def _run_name(self, values: dict[str, Any]) -> str:
        parts = [f"{a}={values[a]}" for a in self.axes if a in values] + [f"seed={values.get('seed', 0)}"]
        return " ".join(parts)
