"""A run's metrics, params and tags cut into `log_batch` calls within MLflow's batch limits.

Each call stays within the limits itself (MLflow's client would split it and store the tags
before the last metrics), and its logged-step mark names only steps whose every metric is in
MLflow once it and the calls before it are stored: a driver killed between two calls leaves a
mark that its successor can trust, so the steps after it are sent again (MLflow drops exact
repeats) rather than skipped forever.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits (mlflow.utils.validation)
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000  # metrics, params and tags together
MARKS = 2  # room each call keeps for the logged-step and final-logged tags


@dataclass
class Call:
    metrics: list  # (name, value, ms, step)
    params: list
    tags: list
    logged_step: int  # every metric up to this step is stored once this call is
    final_logged: bool  # this call stores the last of the final metrics
    params_left: int  # params still to send after this call


def calls(epochs: list, finals: list, params: list, tags: list, logged_step: int) -> list[Call]:
    """The calls for per-epoch metrics (in step order), final metrics, params and tags; at
    least one, which carries the marks."""
    metrics = epochs + finals
    out: list[Call] = []
    sent, first, done = 0, True, logged_step
    while first or sent < len(metrics) or params or tags:
        first = False
        call_params, params = params[:MAX_PARAMS_TAGS_PER_BATCH], params[MAX_PARAMS_TAGS_PER_BATCH:]
        call_tags, tags = tags[: MAX_PARAMS_TAGS_PER_BATCH - MARKS], tags[MAX_PARAMS_TAGS_PER_BATCH - MARKS :]
        room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(call_params) - len(call_tags) - MARKS)
        chunk = metrics[sent : sent + room]
        sent += len(chunk)
        if sent >= len(epochs) and epochs:
            done = max(done, epochs[-1][3])
        elif 0 < sent < len(epochs):
            done = max(done, epochs[sent][3] - 1 if epochs[sent][3] == epochs[sent - 1][3] else epochs[sent - 1][3])
        out.append(Call(chunk, call_params, call_tags, done, bool(finals) and sent == len(metrics), len(params)))
    return out

