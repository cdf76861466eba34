"""Phase labels and the good/bad boundary fit on a plain table of trials (no plotting, no I/O).

A trial's baseline is the mean test accuracy of the trials with the same config but
`pretrain_epochs = 0` (all seeds). A trial that reached a global minimum is in the *bad* phase
when its test accuracy is at least `delta` below that baseline, *good* otherwise; a trial that
never reached 100% train accuracy is *not_fit*; *diverged* and *error* keep their status.
`minima phase` (analysis.phase) and the boundary search (sweeps.boundary) both fit with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from trainables.config import TrialConfig

PHASES = ("good", "bad", "not_fit", "diverged", "error", "unfinished")
BASELINE_AXIS = "pretrain_epochs"
LOGISTIC_C = 100.0  # weak L2: finite slopes even when the phases separate perfectly
BOOTSTRAP = 200
INTERVAL = (5, 95)  # a 90% interval


def is_null(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def fmt(v) -> str:
    """A value as an axis label; null (no clipping, say) is 'none'."""
    if is_null(v):
        return "none"
    return f"{v:g}" if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v)


def slice_columns(df: pd.DataFrame) -> list[str]:
    """Config columns that define a trial's baseline: everything but the seed and pretraining."""
    return [c for c in TrialConfig.field_names() if c in df.columns and c not in (BASELINE_AXIS, "seed")]


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
