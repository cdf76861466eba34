"""`minima phase` on a trials table: its columns checked, boundaries per (y, by), the 2-D
surface and the per-cell table. The labels and the fit itself are sweeps.phase_fit's.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from sweeps.phase_fit import BASELINE_AXIS, PHASES, AxisScale, Boundary, fit_boundary, fmt, is_null
from trainables.config import TrialConfig

REQUIRED = ("status", "reached_global_min", "test_acc", "seed", BASELINE_AXIS)


def sorted_values(values) -> list:
    """Axis values in order; a null (e.g. clip_norm = none) first, as None."""
    unique = list(pd.unique(pd.Series(list(values), dtype=object)))
    rest = sorted(v for v in unique if not is_null(v))
    return ([None] if len(rest) < len(unique) else []) + rest


def position(values: list, value) -> int:
    """The index of `value` in `values`, a null finding the null."""
    return next(i for i, v in enumerate(values) if (is_null(v) and is_null(value)) or v == value)


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
    rng = np.random.default_rng(seed)
    out = []
    for group_key, group in labelled.groupby(by or (lambda _: 0), dropna=False):
        by_values = dict(zip(by, group_key if isinstance(group_key, tuple) else (group_key,))) if by else {}
        for y_value, rows in group.groupby(y, dropna=False):
            out.append(fit_boundary(rows, x, scale, y_value, by_values, rng))
    return out


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
    """Per (by, y, x) cell: n, mean and std of test accuracy and of the drop, and phase counts."""
    keys = [*by, y, x]
    n = labelled.groupby(keys, dropna=False)["phase"].size().rename("n")
    finished = labelled[labelled["status"] == "ok"]  # a diverged run's accuracy is no minimum's
    table = finished.groupby(keys, dropna=False).agg(
        n_ok=("test_acc", "size"), test_acc_mean=("test_acc", "mean"), test_acc_std=("test_acc", "std"),
        drop_mean=("acc_drop", "mean"), drop_std=("acc_drop", "std"))
    table = pd.concat([n, table], axis=1)
    counts = labelled.groupby(keys, dropna=False)["phase"].value_counts().unstack(fill_value=0)
    table = table.join(counts.reindex(columns=list(PHASES), fill_value=0))
    table["phase"] = table[list(PHASES)].idxmax(axis=1)
    return table.reset_index()
