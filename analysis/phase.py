"""`minima phase` on a trials table: its columns checked, boundaries per (y, by), the 2-D
surface and the per-cell table. The labels and the fit itself are sweeps.fit.phase_fit's.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from sweeps.fit.boundary_model import Boundary, BoundaryModel, Crossing, ModelUnfit, effects, fit_boundary, fit_model
from sweeps.fit.phase_fit import BASELINE_AXIS, PHASES, AxisScale, fmt, is_null, position, sorted_values
from trainables.config import TrialConfig

REQUIRED = ("status", "reached_global_min", "test_acc", "seed", BASELINE_AXIS)


class PhaseInputError(ValueError):
    """Bad input to the phase fit; the message names the column and the fix."""


def check_columns(df: pd.DataFrame, x: str, y: str, by: list[str]) -> None:
    if df.empty:
        raise PhaseInputError("the trials file has no rows: export a sweep with finished trials first")
    for column in (*REQUIRED, x, y, *by):
        if column not in df.columns:
            known = ", ".join(c for c in TrialConfig.field_names() if c != "seed" and c in df.columns)
            raise PhaseInputError(f"column {column!r} is not in the trials file; axes can be: {known}")
    roles = [x, y, *by]
    repeated = sorted({c for c in roles if roles.count(c) > 1})
    if repeated:
        raise PhaseInputError(f"{', '.join(repeated)}: each axis takes one role of --x, --y and --by")
    for name, column in (("--x", x), ("--y", y)):
        if df[column].nunique(dropna=False) < 2:
            raise PhaseInputError(f"{name} {column}: it has a single value in this sweep; pick an axis the sweep varies")
    values = ", ".join(fmt(v) for v in sorted_values(df[x]))
    if not pd.api.types.is_numeric_dtype(df[x]):
        raise PhaseInputError(f"--x {x}: the boundary is fitted along a numeric axis, and {x} takes {values}; "
                              f"use it as --y or --by")
    if df[x].nunique() < 2:  # a null (clip_norm: none) has no place on the fitted line
        raise PhaseInputError(f"--x {x}: the fit needs two values other than none, and the sweep has {values}; "
                              f"use it as --y or --by")


def check_results(df: pd.DataFrame) -> None:
    """Trials marked ok carry the accuracies the phases are read from."""
    ok = df["status"] == "ok"
    for column in ("test_acc", "reached_global_min"):
        missing = int((ok & df[column].isna()).sum())
        if missing:
            raise PhaseInputError(f"column {column!r}: {missing} trials marked ok have no value; export the sweep "
                                  f"again (`minima export NAME --out DIR`), or drop those rows")


def declared_scale(meta: dict[str, str], x: str, values) -> AxisScale | None:
    """The x axis's scale as the sweep declared it (stored by `minima export` for boundary
    searches, whose unevenly spaced values would mislead AxisScale.of); None if not declared."""
    declared = json.loads(meta.get("minima.axis_scales", "{}")).get(x)
    if declared is None:
        return None
    return AxisScale(declared == "log", 1.0 if declared == "log" and np.min(values) <= 0 else 0.0)


def fit_boundaries(labelled: pd.DataFrame, x: str, y: str, by: list[str], seed: int = 0,
                   scale: AxisScale | None = None) -> list[Boundary]:
    scale = scale or AxisScale.of(labelled[x].dropna().to_numpy())
    out = []
    for group_key, group in labelled.groupby(by or (lambda _: 0), dropna=False):
        by_values = dict(zip(by, group_key if isinstance(group_key, tuple) else (group_key,))) if by else {}
        for y_value, rows in group.groupby(y, dropna=False):
            out.append(fit_boundary(rows, x, scale, y_value, by_values, seed))
    return out


def varying_axes(df: pd.DataFrame, x: str) -> list[str]:
    """Every trial-config column other than x and the seed that takes more than one value."""
    return [c for c in TrialConfig.field_names()
            if c in df.columns and c not in (x, "seed") and df[c].nunique(dropna=False) > 1]


def fit_effects(labelled: pd.DataFrame, x: str, scale: AxisScale, seed: int = 0) -> tuple[dict, BoundaryModel | None]:
    """The joint model over every varying axis: phase.json's `effects`, `effects_reason` and `joint`
    (reference crossing, ranking of the axes, the levels that move the boundary), and the model."""
    axes = varying_axes(labelled, x)
    try:
        model = fit_model(labelled, x, axes, scale, seed)
    except ModelUnfit as why:
        return {"effects": [], "effects_reason": str(why), "joint": None}, None
    summary = effects(model)
    entries = summary.pop("effects")
    for axis in axes:  # a level none of whose trials reached a minimum is not in the model: say so
        fitted = {fmt(v) for v in model.levels[axis]}
        entries += [{"axis": axis, "value": None if is_null(v) else v, "x_critical": None, "ci": None,
                     "p_in_range": None, "shift": None, "shift_ci": [None, None],
                     "reason": "no trial at this level reached a global minimum (not fit, diverged or failed)"}
                    for v in sorted_values(labelled[axis]) if fmt(v) not in fitted]
    reason = None if axes else f"the sweep varies no axis besides {x}: `joint` holds its one crossing"
    return {"effects": entries, "effects_reason": reason, "joint": {"axes": axes, **summary}}, model


def _apart(a_low, a_high, b_low, b_high) -> bool:
    """Two intervals (None: open on that side) that do not overlap."""
    inf = float("inf")
    a_low, b_low = (-inf if v is None else v for v in (a_low, b_low))
    a_high, b_high = (inf if v is None else v for v in (a_high, b_high))
    return a_high < b_low or b_high < a_low


def compare_with_joint(b: Boundary, model: BoundaryModel, y: str) -> dict | None:
    """The joint model's crossing for a slice that fixes every varying axis, whether the two fits
    disagree beyond their intervals, and whether the slice departs from the additive pattern
    (an interaction); None when the slice pools over an axis."""
    combo = {y: b.y, **b.by}
    if not set(model.levels) <= set(combo):
        return None
    joint: Crossing = model.crossing(combo)
    if b.x_critical is None or joint.x_critical is None:
        disagrees = (b.x_critical is None) != (joint.x_critical is None) and None not in (
            (joint.ci_low, joint.ci_high) if b.x_critical is None else (b.ci_low, b.ci_high))
    else:
        disagrees = _apart(b.ci_low, b.ci_high, joint.ci_low, joint.ci_high)
    return {"x_critical": joint.x_critical, "ci": [joint.ci_low, joint.ci_high], "disagrees": bool(disagrees),
            "departs": model.departs(combo)}


def fit_surface(group: pd.DataFrame, x: str, y: str, x_values: list, y_labels: list[str], resolution: int = 60):
    """A smooth 2-D logistic fit of P(bad) over the (x, y) grid, in cell-index coordinates.

    Index coordinates keep the surface on the heatmap's grid whatever the axes' spacing (and a
    weight decay of 0 needs no log). Quadratic features let the boundary bend. Returns (X, Y, P)
    for a contour plot, or None when the group has only one phase. A null x (first on the grid) is
    left out, as in the boundary fit.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    fitted = group[group["phase"].isin(["good", "bad"]) & group[x].notna()]
    bad = (fitted["phase"] == "bad").to_numpy().astype(int)
    if len(bad) < 4 or bad.min() == bad.max():
        return None
    xi = fitted[x].map(lambda v: position(x_values, v)).to_numpy(float)
    yi = fitted[y].map(fmt).map({label: i for i, label in enumerate(y_labels)}).to_numpy(float)
    model = make_pipeline(PolynomialFeatures(2), StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    model.fit(np.column_stack([xi, yi]), bad)
    first = 1 if is_null(x_values[0]) else 0
    gx, gy = np.meshgrid(np.linspace(first, len(x_values) - 1, resolution), np.linspace(0, len(y_labels) - 1, resolution))
    p = model.predict_proba(np.column_stack([gx.ravel(), gy.ravel()]))[:, 1].reshape(gx.shape)
    return gx, gy, p


def cell_table(labelled: pd.DataFrame, x: str, y: str, by: list[str]) -> pd.DataFrame:
    """Per (by, y, x) cell: n, mean and std of test accuracy and of the drop, phase counts, and
    the CPU- and GPU-hours its trials held (when trials.parquet has the cost columns)."""
    keys = [*by, y, x]
    n = labelled.groupby(keys, dropna=False)["phase"].size().rename("n")
    finished = labelled[labelled["status"] == "ok"]  # a diverged run's accuracy is no minimum's
    table = finished.groupby(keys, dropna=False).agg(
        n_ok=("test_acc", "size"), test_acc_mean=("test_acc", "mean"), test_acc_std=("test_acc", "std"),
        drop_mean=("acc_drop", "mean"), drop_std=("acc_drop", "std"))
    held = [labelled.groupby(keys, dropna=False)[col].sum(min_count=1).rename(name) / 3600
            for col, name in (("cpu_s", "cpu_hours"), ("gpu_s", "gpu_hours")) if col in labelled]
    table = pd.concat([n, table, *held], axis=1)
    counts = labelled.groupby(keys, dropna=False)["phase"].value_counts().unstack(fill_value=0)
    table = table.join(counts.reindex(columns=list(PHASES), fill_value=0))
    table["phase"] = table[list(PHASES)].idxmax(axis=1)
    return table.reset_index()
