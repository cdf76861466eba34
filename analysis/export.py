"""Parquet exports of a sweep, built from its own storage (no tracking server needed).

`trials.parquet`: one row per trial, every config field as a typed column, the final metrics.
`curves.parquet`: one row per trial, stage and epoch, with the per-epoch metrics.
"""

from __future__ import annotations

import json
from collections import Counter
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sweeps.design.keys import config_keys, member_trial_id
from sweeps.tracking.mlflow_runs import quick_client, trial_runs
from sweeps.storage.costs import HeldResources, epochs_run, held_s, shares
from sweeps.storage.results import (RESULT_SCHEMA, list_trial_dirs, member_table, read_trial_error, read_trial_params,
                                    result_table)
from sweeps.storage.trial_end import last_report
from trainables.config import TrialConfig, make_config
from trainables.uri import read_bytes
from trainables.metrics import EPOCH_METRICS, FINAL_METRICS
from trainables.reports import FINAL_KEY, member_values

# Final metrics as typed in the stored results: the last epoch's losses and accuracies, then the summary's own.
FINAL_COLUMNS = {name: RESULT_SCHEMA.field(name).type
                 for name in ("train_acc", "test_acc", "train_loss", "test_loss", *FINAL_METRICS)}


def _arrow_type(annotation) -> pa.DataType:
    """The Parquet column type of a TrialConfig field (Optional fields are nullable anyway)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return pa.string()
    return {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}[annotation]


CONFIG_COLUMNS = {name: _arrow_type(f.annotation) for name, f in TrialConfig.model_fields.items() if name != "seed"}
TRIALS_SCHEMA = pa.schema(
    [("sweep", pa.string()), ("trial_id", pa.string()), ("ray_trial_id", pa.string()), ("pack_size", pa.int64()),
     ("trial_key", pa.string()), ("mlflow_run_id", pa.string()),
     ("status", pa.string()), ("cell", pa.string()), ("seed", pa.int64())]
    + list(CONFIG_COLUMNS.items()) + list(FINAL_COLUMNS.items())
    + [("error", pa.string())]
    + [("ray_trial_time_s", pa.float64()), ("cost_share", pa.float64()), ("cpu_s", pa.float64()), ("gpu_s", pa.float64()),
       ("accelerator_type", pa.string())]  # sweeps/storage/costs.py
    + [("git_commit", pa.string()), ("package_version", pa.string())]
)
CURVES_SCHEMA = pa.schema(
    [("sweep", pa.string()), ("trial_id", pa.string()), ("stage", pa.string()), ("epoch", pa.int64()),
     ("step", pa.int64())] + [(m, pa.float64()) for m in EPOCH_METRICS]
)


@dataclass
class ExportResult:
    trials_path: Path
    curves_path: Path
    trials: int
    curve_rows: int
    status_counts: dict[str, int]


def _trial_records(sweep: str, trial_dir: str, held: HeldResources | None) -> list[tuple[dict[str, Any], pa.Table]]:
    """One (trials row, curves table) per trial run in this Ray trial's folder (its pack members)."""
    params = read_trial_params(trial_dir)
    if params is None:  # created but never started
        return []
    members = member_values(params)
    data = read_bytes(f"{trial_dir.rstrip('/')}/result.json")
    table = result_table(data)
    seconds = (last_report(data) or {}).get("time_total_s") if data else None
    ray_trial_id = trial_dir.rstrip("/").rsplit("/", 1)[-1].removeprefix("trial_")
    error_text: list[str | None] = []  # read once, only if some member has no final report

    def error() -> str | None:
        if not error_text:
            error_text.append(read_trial_error(trial_dir))
        return error_text[0]

    out = []
    epochs: list[int] = []  # per member, the epochs its share of the Ray trial's cost goes by
    for member, values in enumerate(members):
        results = member_table(table, member) if len(members) > 1 else table
        trial_id = member_trial_id(ray_trial_id, member, len(members))
        cfg = make_config(values)
        keys = config_keys(cfg)
        config = cfg.model_dump()  # every column, speed options included
        is_final = results.column(FINAL_KEY).fill_null(False)
        finals = results.filter(is_final)
        curves = results.filter(pc.invert(is_final))
        final = finals.slice(finals.num_rows - 1).to_pylist()[0] if finals.num_rows else None
        last = final or (curves.slice(curves.num_rows - 1).to_pylist()[0] if curves.num_rows else {})
        failure = None
        if final is not None:
            status = final["status"] or "ok"
        else:
            failure = error()
            status = "error" if failure else "unfinished"
        record: dict[str, Any] = {
            "sweep": sweep, "trial_id": trial_id, "ray_trial_id": ray_trial_id, "pack_size": len(members),
            "trial_key": keys.trial, "status": status, "cell": keys.cell, "seed": config["seed"],
            **{k: config[k] for k in CONFIG_COLUMNS},
            **{k: last.get(k) for k in FINAL_COLUMNS},
            "error": failure.strip()[-2000:] if failure else None,
            "ray_trial_time_s": seconds, "accelerator_type": (final or {}).get("accelerator_type"),
            "git_commit": (final or {}).get("git_commit"), "package_version": (final or {}).get("package_version"),
        }
        if final is None:
            record["reached_global_min"] = False
        epochs.append(epochs_run(final, curves.num_rows))
        curves = curves.select(["stage", "epoch", "step", *EPOCH_METRICS])
        curves = curves.add_column(0, "trial_id", pa.array([trial_id] * curves.num_rows, pa.string()))
        curves = curves.add_column(0, "sweep", pa.array([sweep] * curves.num_rows, pa.string()))
        out.append((record, curves))
    for (record, _), share in zip(out, shares(epochs)):
        record["cost_share"] = share
        if held is not None:
            cpu, gpu = held.of_trial(trial_dir)
            record["cpu_s"] = held_s(seconds, cpu, share)
            record["gpu_s"] = held_s(seconds, gpu, share)
    return out


def mlflow_run_ids(tracking_uri: str, sweep: str) -> dict[str, str]:
    """trial_key -> MLflow run id; {} when the tracking store cannot be reached quickly."""
    try:
        client = quick_client(tracking_uri, max_retries=0, timeout_s=10)
        experiment = client.get_experiment_by_name(sweep)
        if experiment is None:
            return {}
        return {key: run.info.run_id for key, run in trial_runs(client, experiment.experiment_id).items()}
    except Exception:  # the export must not depend on the tracking server
        return {}


def export_sweep(experiment_dir: str, out_dir: str | Path, sweep: str, tracking_uri: str | None = None,
                 metadata: dict[str, Any] | None = None, workers: int = 8,
                 held: HeldResources | None = None) -> ExportResult:
    """`held`: what each Ray trial asked of Ray (`sweep_files.held_resources`), for `cpu_s` and
    `gpu_s` (null without)."""
    trial_dirs = list_trial_dirs(experiment_dir)
    if not trial_dirs:
        raise FileNotFoundError(f"no trials under {experiment_dir}: is this the sweep's storage folder?")
    with ThreadPoolExecutor(workers) as pool:  # file reads and pyarrow parsing release the GIL
        parts = [p for trial in pool.map(lambda d: _trial_records(sweep, d, held), trial_dirs) for p in trial]
    run_ids = mlflow_run_ids(tracking_uri, sweep) if tracking_uri else {}
    records = [r for r, _ in parts]
    for r in records:
        r["mlflow_run_id"] = run_ids.get(r["trial_key"])
    trials = pa.Table.from_pylist(records, schema=TRIALS_SCHEMA)
    curves = pa.concat_tables([c for _, c in parts]).cast(CURVES_SCHEMA) if parts else CURVES_SCHEMA.empty_table()
    file_metadata = {"minima.sweep": sweep, "minima.storage": experiment_dir, **(metadata or {})}
    encoded = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in file_metadata.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "trials.parquet", out / "curves.parquet")
    for table, path in zip((trials, curves), paths):
        pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **encoded}), path)
    counts = dict(Counter(r["status"] for r in records))
    return ExportResult(paths[0], paths[1], trials.num_rows, curves.num_rows, counts)
