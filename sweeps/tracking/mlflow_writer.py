"""A sweep's MLflow runs, written synchronously: one experiment per sweep, one parent run, one
child run per trial, found again by the trial's deterministic key.

A run found from an earlier driver (or a sync) continues: metrics at steps it already holds are
skipped, reports this process never saw are back-filled from the trial's result.json, and its
params go out with its first metrics. A run carries its trial's own start and end times; a
run found again keeps the start it was created with.

Calls per run are what MLflow's API allows at least: `create_run` with every tag known then
and the start, one `log_batch` per ~1000 metrics with the params, `set_terminated` with the
end. The SQL store takes no batch across runs and `log_batch` is per run over REST too.

A run sent over several flushes carries marks (the last step whose metrics are all stored, and
whether its final metrics are), so a successor continues it without gaps or repeats. A run
sent whole in one call needs none: found unfinished, it is sent again whole (MLflow drops the
repeats); found FINISHED with its final metrics, it is complete (`is_complete`).
"""

from __future__ import annotations

from typing import Any, Callable

from trainables.metrics import FINAL_METRICS

from . import mlflow_batches
from .mlflow_events import RunEvents, RunIdentities, earliest, result_events
from .mlflow_runs import PART_TAG, is_complete, parent_run, quick_client, trial_runs
from ..cluster.mlflow_auth import claim_experiment
from ..storage.results import read_result_rows

LOGGED_STEP_TAG = "minima.logged_step"
FINAL_LOGGED_TAG = "minima.final_logged"
# The MLflow UI opens an experiment without this tag in its GenAI view (traces, prompts).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class ExperimentNotOurs(RuntimeError):
    """The sweep's experiment exists and an account that did not start the sweep may change it."""


class MLflowWriter:
    def __init__(self, tracking_uri: str, sweep: str, axes: list[str], tags: dict[str, str] | None = None):
        self.tracking_uri = tracking_uri
        self.sweep = sweep
        self.tags = dict(tags or {})
        self.identities = RunIdentities(sweep, tuple(axes), self.tags)
        self.client = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._runs: dict[str, str] = {}  # trial key -> run id
        self._logged_step: dict[str, int] = {}
        self._params_due: dict[str, dict[str, str]] = {}  # per key: params its run still lacks
        self._final_logged: set[str] = set()
        self._sent_tags: dict[str, dict[str, str]] = {}  # per key: tags this process has logged
        self._backfilled: set[str] = set()
        self._existing: dict[str, Any] = {}  # trial key -> its run from an earlier driver or sync
        # an experiment made before this writer connected: the parts (None: the whole sweep) whose runs it read
        self._earlier: set[int | None] | None = None
        self.complete: set[str] = set()  # keys of the runs the store took FINISHED with their final metrics
        self._start_ms: dict[str, int | None] = {}  # per key: its run's start, which its end must not precede

    def connect(self) -> None:
        if self.client is not None:
            return
        kind, value = EXPERIMENT_KIND
        problem = claim_experiment(self.tracking_uri, self.sweep, {kind: value})
        if problem:  # kept pending: nothing goes into an experiment that others may change
            raise ExperimentNotOurs(problem)
        client = quick_client(self.tracking_uri, max_retries=1, timeout_s=15)  # the caller retries instead
        experiment = client.get_experiment_by_name(self.sweep)
        if experiment is None:
            self.experiment_id = client.create_experiment(self.sweep, tags={kind: value})
        else:  # a resumed or synced sweep: its trials' runs are read as its parts are reached
            self.experiment_id = experiment.experiment_id
            if kind not in experiment.tags:  # a sweep logged before the tag was
                client.set_experiment_tag(self.experiment_id, kind, value)
            self._earlier = set()
        parent = parent_run(client, self.experiment_id, self.sweep)
        if parent is not None:
            self.parent_run_id = parent.info.run_id
            if parent.info.status != "RUNNING":
                client.update_run(self.parent_run_id, status="RUNNING")
        else:
            run = client.create_run(self.experiment_id, run_name=f"{self.sweep} (sweep)",
                                    tags={"minima.role": "parent", "sweep": self.sweep, **self.tags})
            self.parent_run_id = run.info.run_id
        self.client = client

    def _read_earlier_runs(self, ev: RunEvents) -> None:
        """Before the first run of a part (of a sweep in parts; else of the sweep) is sent: that
        part's runs from an earlier driver or sync, found in one search, not one each. A part's
        runs only: a writer that reaches part k does not hold every run of parts 0..k-1."""
        if self._earlier is None or None in self._earlier:
            return
        tagged = ev.tags.get(PART_TAG)
        part = int(tagged) if tagged is not None else None
        if part not in self._earlier:
            self._existing.update(trial_runs(self.client, self.experiment_id, part))
            self._earlier.add(part)

    def _run_for(self, key: str, ev: RunEvents) -> str:
        """The run of trial `key`: cached, found when the driver connected, or created with
        every tag pending then. Its params go out with its first metrics (`_params_due`), one
        call fewer per run; a run found without them (its driver died in between) gets them then."""
        if key in self._runs:
            return self._runs[key]
        client = self.client
        run = self._existing.pop(key, None)
        if run is not None:
            run_id = run.info.run_id
            self._logged_step[key] = int(run.data.tags.get(LOGGED_STEP_TAG, "0"))
            if run.data.tags.get(FINAL_LOGGED_TAG):
                self._final_logged.add(key)
            if is_complete(run):  # all of it is in MLflow: what the events repeat is not sent again
                self._final_logged.add(key)
                self._logged_step[key] = max([self._logged_step[key], *(m[3] for m in ev.metrics)])
            if run.info.status != "RUNNING" and ev.end_status is None:
                client.update_run(run_id, status="RUNNING")  # a trial resumed after an error
            missing = {k: v for k, v in ev.params.items() if k not in run.data.params}
            self._sent_tags[key] = dict(run.data.tags)
            self._start_ms[key] = run.info.start_time
        else:
            tags = {"mlflow.parentRunId": self.parent_run_id, **ev.tags}
            run_id = client.create_run(self.experiment_id, start_time=ev.start_ms, tags=tags).info.run_id
            self._logged_step[key] = 0
            missing = dict(ev.params)
            self._sent_tags[key] = tags
            self._start_ms[key] = ev.start_ms
        if missing:
            self._params_due[key] = missing
        self._runs[key] = run_id
        return run_id

    def flush(self, pending: dict[str, RunEvents], order: list[str], ready: Callable[[str, RunEvents], bool] | None = None,
              on_sent: Callable[[str], None] | None = None) -> None:
        """Send the pending runs' events, in order (only those `ready` accepts); a run leaves
        `pending` once all of it is sent, and `on_sent` hears of it."""
        if not pending:
            return
        self.connect()
        for key in list(order):
            ev = pending[key]
            if ready is not None and not ready(key, ev):
                continue
            self._send_run(key, ev)
            del pending[key]
            order.remove(key)
            if on_sent is not None:
                on_sent(key)

    def _send_run(self, key: str, ev: RunEvents) -> None:
        from mlflow.entities import RunTag

        if key not in self._runs:
            self._read_earlier_runs(ev)
        if key not in self._backfilled:  # first: a run made now starts when its earliest report says
            self._backfill(key, ev)
        made_now = key not in self._runs and key not in self._existing
        run_id = self._run_for(key, ev)
        floor = self._logged_step.get(key, 0)
        # metrics a previous driver (or sync) already logged are replays: per-epoch ones by
        # step, the final summary by its tag
        final_done = key in self._final_logged
        epochs = sorted((m for m in ev.metrics if m[0] not in FINAL_METRICS and m[3] > floor), key=lambda m: m[3])
        finals = [m for m in ev.metrics if m[0] in FINAL_METRICS and not final_done]
        # every report repeats its stage tag: an unchanged tag costs a SQL upsert for nothing
        sent = self._sent_tags.setdefault(key, {})
        tags = {k: v for k, v in ev.tags.items() if sent.get(k) != v}
        whole = made_now and ev.end_status is not None  # its whole life in this flush: no marks needed
        self._send(key, run_id, epochs, finals, [RunTag(k, v) for k, v in tags.items()], marks=not whole)
        sent.update(tags)
        if ev.end_status:
            start = self._start_ms.get(key)
            # Ray stamps reports in whole seconds: a trial shorter than that must not end before it starts
            end = max(ev.end_ms, start or 0) if ev.end_ms else None
            self.client.set_terminated(run_id, ev.end_status, end_time=end)
            if ev.end_status == "FINISHED" and key in self._final_logged:
                self.complete.add(key)
            # an ended run gets no more events: what only its sending needed goes (a sweep keeps thousands)
            for done in (self._sent_tags, self._start_ms):
                done.pop(key, None)

    def _send(self, key: str, run_id: str, epochs: list, finals: list, tags: list, marks: bool) -> None:
        """Log a run's metrics, due params and changed tags in as few calls as MLflow's batch
        limits allow (`mlflow_batches.calls`), the logged-step mark moving with each call
        (`marks`, or whenever it takes more than one call)."""
        from mlflow.entities import Metric, Param, RunTag

        params = [Param(k, v) for k, v in self._params_due.get(key, {}).items()]
        if not (epochs or finals or params or tags):
            return  # nothing new: the marks stand as they are
        calls = mlflow_batches.calls(epochs, finals, params, tags, self._logged_step.get(key, 0))
        for call in calls:
            call_marks = []
            if marks or len(calls) > 1:
                call_marks.append(RunTag(LOGGED_STEP_TAG, str(call.logged_step)))
                if call.final_logged:
                    call_marks.append(RunTag(FINAL_LOGGED_TAG, "1"))
            self.client.log_batch(run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in call.metrics],
                                  params=call.params, tags=call.tags + call_marks)
            self._logged_step[key] = call.logged_step
            if not call.params_left:
                self._params_due.pop(key, None)
        if finals:
            self._final_logged.add(key)

    def _backfill(self, key: str, ev: RunEvents) -> None:
        """Put reports this process never saw (made before a driver died) ahead of the live ones.

        Ray's result.json holds every report up to the restored checkpoint; whatever of it is
        already in MLflow is skipped by step, so the run's history ends up complete, once. A new
        run whose live reports begin at step 1 has nothing earlier: its file is not read. The
        file's first report bounds the trial's start, its last the end of a failed one.
        """
        self._backfilled.add(key)
        if key not in self._existing and any(m[3] <= 1 for m in ev.metrics):
            return
        rows: list[dict[str, Any]] = []
        dirs, member = ev.source or ((), None)
        for trial_dir in dirs:
            rows = read_result_rows(trial_dir, member)
            if rows:
                break
        earlier = RunEvents()
        for row in rows:
            earlier.absorb(result_events(row))
        seen = {(m[0], m[3]) for m in earlier.metrics}
        ev.metrics = earlier.metrics + [m for m in ev.metrics if (m[0], m[3]) not in seen]
        ev.tags = {**earlier.tags, **ev.tags}
        stamps = [int(r["timestamp"] * 1000) for r in rows if r.get("timestamp")]
        if stamps:
            ev.start_ms = earliest(ev.start_ms, min(stamps))
            ev.end_ms = ev.end_ms or earlier.end_ms or (max(stamps) if ev.end_status else None)

    def finish_parent(self) -> None:
        """Mark the sweep's parent run finished (a writer that sent no run connects for it)."""
        self.connect()
        self.client.set_terminated(self.parent_run_id, "FINISHED")
