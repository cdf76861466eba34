"""Phase labels and the good/bad boundary, with bootstrap intervals over seeds.

A trial's baseline is the mean test accuracy of the trials with the same config but
`pretrain_epochs = 0` (all seeds). A trial that reached a global minimum is in the *bad* phase
when its test accuracy is at least `delta` below that baseline, *good* otherwise; a trial that
never reached 100% train accuracy is *not_fit*; *diverged* and *error* keep their status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from .export import CONFIG_COLUMNS

PHASES = ("good", "bad", "not_fit", "diverged", "error", "unfinished")
BASELINE_AXIS = "pretrain_epochs"
REQUIRED = ("status", "reached_global_min", "test_acc", "seed", BASELINE_AXIS)
LOGISTIC_C = 100.0  # weak L2: finite slopes even when the phases separate perfectly
BOOTSTRAP = 200
INTERVAL = (5, 95)  # a 90% interval


def is_null(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def sorted_values(values) -> list:
    """Axis values in order; a null (e.g. clip_norm = none) first, as None."""
    unique = list(pd.unique(pd.Series(list(values), dtype=object)))
    rest = sorted(v for v in unique if not is_null(v))
    return ([None] if len(rest) < len(unique) else []) + rest


def position(values: list, value) -> int:
    """The index of `value` in `values`, a null finding the null."""
    return next(i for i, v in enumerate(values) if (is_null(v) and is_null(value)) or v == value)


def fmt(v) -> str:
    """A value as an axis label; null (no clipping, say) is 'none'."""
    if is_null(v):
        return "none"
    return f"{v:g}" if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v)


class PhaseInputError(ValueError):
    """Bad input to the phase fit; the message names the column and the fix."""


def check_columns(df: pd.DataFrame, x: str, y: str, by: list[str]) -> None:
    if df.empty:
        raise PhaseInputError("the trials file has no rows: export a sweep with finished trials first")
    for column in (*REQUIRED, x, y, *by):
        if column not in df.columns:
            known = ", ".join(c for c in CONFIG_COLUMNS if c in df.columns)
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


def slice_columns(df: pd.DataFrame) -> list[str]:
    """Config columns that define a trial's baseline: everything but the seed and pretraining."""
    return [c for c in CONFIG_COLUMNS if c in df.columns and c not in (BASELINE_AXIS, "seed")]


def label_phases(df: pd.DataFrame, delta: float) -> pd.DataFrame:
    """Add `baseline_acc`, `acc_drop` (baseline - test_acc) and `phase` columns."""
    df = df.copy()
    keys = slice_columns(df)
    key_frame = df[keys].astype(str)  # NaN-safe group keys (clip_norm null = no clipping)
    df["_slice"] = pd.util.hash_pandas_object(key_frame, index=False).to_numpy()
    base = df[(df[BASELINE_AXIS] == 0) & (df["status"] == "ok")].groupby("_slice")["test_acc"].mean()
    df["baseline_acc"] = df["_slice"].map(base)
    df["acc_drop"] = df["baseline_acc"] - df["test_acc"]
    reached = df["reached_global_min"].fillna(False).astype(bool)
    phase = np.where(reached & (df["acc_drop"] >= delta), "bad", "good")
    phase = np.where(reached & df["baseline_acc"].isna(), "unfinished", phase)  # no baseline to compare with
    phase = np.where(~reached & (df["status"] == "ok"), "not_fit", phase)
    for status in ("diverged", "error", "unfinished"):
        phase = np.where(df["status"] == status, status, phase)
    df["phase"] = phase
    return df.drop(columns="_slice")


def is_log_spaced(values) -> bool:
    """Positive values more evenly spaced in log than in linear scale (a zero is allowed)."""
    v = np.unique(np.asarray(values, dtype=float))
    v = v[v > 0]
    if len(v) < 3:
        return False
    lin, log = np.diff(v), np.diff(np.log(v))
    return float(np.std(log) / np.mean(log)) < float(np.std(lin) / np.mean(lin))


@dataclass
class AxisScale:
    """Maps an axis to the coordinate the logistic fit uses: log1p/log when log-spaced."""

    log: bool
    offset: float = 0.0  # log(x + offset): 1 when the axis holds a 0, else 0

    @classmethod
    def of(cls, values) -> "AxisScale":
        if not is_log_spaced(values):
            return cls(False)
        return cls(True, 1.0 if np.min(values) <= 0 else 0.0)

    def to_fit(self, x):
        x = np.asarray(x, dtype=float)
        return np.log(x + self.offset) if self.log else x

    def from_fit(self, t: float) -> float:
        return float(np.exp(t) - self.offset) if self.log else float(t)


def _crossing(t: np.ndarray, bad: np.ndarray) -> float | None:
    """Where the fitted P(bad) crosses 0.5, in fit coordinates; None outside the data's range."""
    if bad.min() == bad.max():
        return None
    model = LogisticRegression(C=LOGISTIC_C, solver="newton-cholesky").fit(t.reshape(-1, 1), bad)  # exact; faster than lbfgs
    w, b = float(model.coef_[0, 0]), float(model.intercept_[0])
    if w == 0:
        return None
    t_star = -b / w
    return t_star if t.min() <= t_star <= t.max() else None


def _no_crossing_reason(t: np.ndarray, bad: np.ndarray) -> str:
    if len(bad) == 0:
        return "no trial in this slice reached a global minimum"
    if bad.min() == bad.max():
        return f"all {len(bad)} trials that fit are {'bad' if bad[0] else 'good'}: no boundary in this range"
    return "P(bad) does not cross 0.5 inside the swept range"


@dataclass
class Boundary:
    y: Any
    by: dict[str, Any]
    x_critical: float | None
    ci_low: float | None
    ci_high: float | None
    n_trials: int
    n_seeds: int
    reason: str | None = None
    bootstrap_crossings: float = 0.0  # fraction of bootstrap resamples that had a crossing

    def as_dict(self) -> dict[str, Any]:
        out = {"y": _plain(self.y), "by": {k: _plain(v) for k, v in self.by.items()},
               "x_critical": self.x_critical, "ci_low": self.ci_low, "ci_high": self.ci_high,
               "n_trials": self.n_trials, "n_seeds": self.n_seeds,
               "bootstrap_crossings": round(self.bootstrap_crossings, 3)}
        if self.reason:
            out["reason"] = self.reason
        return out


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):  # a groupby key of a null is a plain float NaN
        return None if np.isnan(v) else float(v)
    return v


def fit_boundary(trials: pd.DataFrame, x: str, scale: AxisScale, y_value, by: dict, rng: np.random.Generator,
                 n_boot: int = BOOTSTRAP) -> Boundary:
    """Logistic fit of P(bad) against x over the good/bad trials of one slice.

    The 90% interval is the seed bootstrap's, widened to at least the swept values on either
    side of the crossing. Trials whose x is null (clip_norm: none) have no place on the line and
    are left out.
    """
    fitted = trials[trials["phase"].isin(["good", "bad"]) & trials[x].notna()]
    t, bad = scale.to_fit(fitted[x].to_numpy()), (fitted["phase"] == "bad").to_numpy().astype(int)
    seeds = np.unique(fitted["seed"].to_numpy())
    t_star = _crossing(t, bad) if len(bad) else None
    if t_star is None:
        return Boundary(y_value, by, None, None, None, len(fitted), len(seeds), _no_crossing_reason(t, bad))
    by_seed = {s: np.flatnonzero(fitted["seed"].to_numpy() == s) for s in seeds}
    draws = []
    for _ in range(n_boot):
        rows = np.concatenate([by_seed[s] for s in rng.choice(seeds, size=len(seeds), replace=True)])
        found = _crossing(t[rows], bad[rows])
        if found is not None:
            draws.append(found)
    lo, hi = (np.percentile(draws, INTERVAL) if draws else (t_star, t_star))
    # The grid cannot place the crossing more finely than the two swept values around it: when
    # every resample agrees (phases separate perfectly) the interval is that bracket, not a point.
    below, above = t[t <= t_star], t[t >= t_star]
    lo = min(lo, below.max()) if below.size else lo
    hi = max(hi, above.min()) if above.size else hi
    return Boundary(y_value, by, scale.from_fit(t_star), scale.from_fit(lo), scale.from_fit(hi), len(fitted),
                    len(seeds), None, len(draws) / n_boot)


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
