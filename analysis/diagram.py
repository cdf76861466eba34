"""`minima phase`: label phases, fit boundaries, write phase.json and the figures, and attach
them to the sweep's parent MLflow run."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from sweeps.tracking.mlflow_runs import parent_run
from sweeps.fit.phase_fit import AxisScale, label_phases

from .phase import (PhaseInputError, cell_table, check_columns, check_results, compare_with_joint, declared_scale,
                    fit_boundaries, fit_effects, varying_axes)
from .dose_response import write_dose_response
from .effect_figures import pairs_figure, shift_figure
from .mlflow_links import CellArea, phase_areas
from .plots import measures_figure, curves_figure, phase_figure, save

log = logging.getLogger(__name__)


@dataclass
class PhaseResult:
    phase: dict[str, Any]
    files: list[Path]
    labelled: pd.DataFrame
    cells: pd.DataFrame
    logged_to_mlflow: bool
    areas: list[CellArea] = field(default_factory=list)  # phase.png's heatmap cells, for the report's links


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
    check_results(df)
    if not 0 < delta < 1:
        raise PhaseInputError(f"--delta {delta}: a test-accuracy drop between 0 and 1 (0.05 = 5 points)")
    labelled = label_phases(df, delta)
    values = df[x].dropna().to_numpy(dtype=float)
    scale = declared_scale(meta, x, values) or AxisScale.of(values)
    boundaries = fit_boundaries(labelled, x, y, by, scale=scale)
    joint, model = fit_effects(labelled, x, scale)
    slices = [b.as_dict() for b in boundaries]
    if model is not None:
        for entry, b in zip(slices, boundaries):
            compared = compare_with_joint(b, model, y)
            if compared is not None:
                entry["joint"] = compared
    cells = cell_table(labelled, x, y, by)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phase = {
        "sweep": meta.get("minima.sweep"), "x": x, "y": y, "by": by, "delta": delta,
        "n_trials": int(len(labelled)),
        "phase_counts": {k: int(v) for k, v in labelled["phase"].value_counts().items()},
        "boundary": slices,
        **joint,
        "cells": json.loads(cells.to_json(orient="records")),
    }
    files = [out / "phase.json"]
    files[0].write_text(json.dumps(phase, indent=2))
    fig = phase_figure(labelled, cells, boundaries, x, y, by, delta, scale)
    areas = phase_areas(fig, labelled, cells, x, y, by)  # before save, which closes the figure
    files += save(fig, out / "phase")
    files += write_dose_response(labelled, x, varying_axes(labelled, x), out, delta)
    if model is not None:
        files += save(shift_figure(model), out / "boundary_shift")
        pairs = pairs_figure(model)
        if pairs is not None:
            files += save(pairs, out / "boundary_pairs")
    curves_path = Path(curves_path) if curves_path else Path(trials_path).with_name("curves.parquet")
    if curves_path.exists():
        curves = pd.read_parquet(curves_path)
        if not curves.empty:
            files += save(curves_figure(curves, df, x, y, by), out / "curves", formats=("png",))
            files += save(measures_figure(labelled, curves), out / "measures", formats=("png",))
    logged = bool(log_to_mlflow and meta.get("minima.tracking_uri")) and attach_to_parent_run(
        meta["minima.tracking_uri"], meta.get("minima.sweep", ""), files)
    return PhaseResult(phase, files, labelled, cells, logged, areas)


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
