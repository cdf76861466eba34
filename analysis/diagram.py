"""`minima phase`: label phases, fit boundaries, write phase.json and the figures, and attach
them to the sweep's parent MLflow run."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from sweeps.mlflow_runs import parent_run
from sweeps.phase_fit import label_phases

from .phase import PhaseInputError, cell_table, check_columns, declared_scale, fit_boundaries
from .plots import measures_figure, curves_figure, phase_figure, save

log = logging.getLogger(__name__)


@dataclass
class PhaseResult:
    phase: dict[str, Any]
    files: list[Path]
    labelled: pd.DataFrame
    cells: pd.DataFrame
    logged_to_mlflow: bool


def read_trials(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    path = Path(path)
    if not path.exists():
        raise PhaseInputError(f"{path}: no such file; `minima export NAME --out DIR` writes DIR/trials.parquet")
    try:
        table = pq.read_table(path)
    except Exception as err:
        raise PhaseInputError(f"{path}: not a Parquet file ({err})") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k.startswith(b"minima.")}
    return table.to_pandas(), meta


def run_phase(trials_path: str | Path, x: str, y: str, by: list[str], delta: float, out_dir: str | Path,
              curves_path: str | Path | None = None, log_to_mlflow: bool = True) -> PhaseResult:
    df, meta = read_trials(trials_path)
    check_columns(df, x, y, by)
    if not 0 < delta < 1:
        raise PhaseInputError(f"--delta {delta}: a test-accuracy drop between 0 and 1 (0.05 = 5 points)")
    labelled = label_phases(df, delta)
    scale = declared_scale(meta, x, df[x].dropna().to_numpy(dtype=float))
    boundaries = fit_boundaries(labelled, x, y, by, scale=scale)
    cells = cell_table(labelled, x, y, by)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phase = {
        "sweep": meta.get("minima.sweep"), "x": x, "y": y, "by": by, "delta": delta,
        "n_trials": int(len(labelled)),
        "phase_counts": {k: int(v) for k, v in labelled["phase"].value_counts().items()},
        "boundary": [b.as_dict() for b in boundaries],
        "cells": json.loads(cells.to_json(orient="records")),
    }
    files = [out / "phase.json"]
    files[0].write_text(json.dumps(phase, indent=2))
    files += save(phase_figure(labelled, cells, boundaries, x, y, by, delta, scale), out / "phase")
    curves_path = Path(curves_path) if curves_path else Path(trials_path).with_name("curves.parquet")
    if curves_path.exists():
        curves = pd.read_parquet(curves_path)
        if not curves.empty:
            files += save(curves_figure(curves, df, x, y, by), out / "curves", formats=("png",))
            files += save(measures_figure(labelled, curves), out / "measures", formats=("png",))
    logged = bool(log_to_mlflow and meta.get("minima.tracking_uri")) and attach_to_parent_run(
        meta["minima.tracking_uri"], meta.get("minima.sweep", ""), files)
    return PhaseResult(phase, files, labelled, cells, logged)


def attach_to_parent_run(tracking_uri: str, sweep: str, files: list[Path]) -> bool:
    """Log the figures and phase.json as artifacts of the sweep's parent run; False if unreachable."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(sweep)
        if experiment is None:
            return False
        parent = parent_run(client, experiment.experiment_id, sweep)
        if parent is None:
            return False
        for path in files:
            client.log_artifact(parent.info.run_id, str(path), artifact_path="phase")
        return True
    except Exception as err:  # artifacts are a copy; the files on disk are what counts
        log.warning("could not attach the phase files to MLflow (%s)", err)
        return False
