"""Phase labels, axis values in order and the fit coordinate of an axis, on a plain table of trials
(no plotting, no I/O).

A trial's baseline is the mean test accuracy of the trials with the same config but
`pretrain_epochs = 0` (all seeds). A trial that reached a global minimum is in the *bad* phase
when its test accuracy is at least `delta` below that baseline, *good* otherwise; a trial that
never reached 100% train accuracy is *not_fit*; *diverged* and *error* keep their status.
The boundary fits on these labels are sweeps.fit.boundary_model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from trainables.config import TrialConfig

PHASES = ("good", "bad", "not_fit", "diverged", "error", "unfinished")
BASELINE_AXIS = "pretrain_epochs"


def is_null(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def fmt(v) -> str:
    """A value as an axis label; null (no clipping, say) is 'none'."""
    if is_null(v):
        return "none"
    return f"{v:g}" if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v)


def fmt_interval(low: float | None, high: float | None) -> str:
    """[low, high], a side the data leave open as '..'."""
    side = lambda v: ".." if v is None else f"{v:.3g}"  # noqa: E731
    return f"[{side(low)}, {side(high)}]"


def sorted_values(values) -> list:
    """Axis values in order; a null (e.g. clip_norm = none) first, as None."""
    unique = list(pd.unique(pd.Series(list(values), dtype=object)))
    rest = sorted(v for v in unique if not is_null(v))
    return ([None] if len(rest) < len(unique) else []) + rest


def position(values: list, value) -> int:
    """The index of `value` in `values`, a null finding the null."""
    return next(i for i, v in enumerate(values) if (is_null(v) and is_null(value)) or v == value)


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
