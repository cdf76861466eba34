"""The dose-response figure: how much test accuracy pretraining costs, per level of each other axis.

One panel per axis in `axes` (the varying axes other than x): the mean test-accuracy drop
against the same config without pretraining (points, status ok trials) against x, one line per
level of that axis, every other axis held at its reference level (its smallest value, `none`
first: the first of `sorted_values`). When no trial has that combination the panel pools over
the other axes and says so in its title. Band: ±1 std over seeds, each seed's value at an x
being the mean of its trials there (one trial, unless pooled); n in the legend is seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sweeps.fit.phase_fit import BASELINE_AXIS, AxisScale, fmt, is_null

from .phase import sorted_values
from .plots import plt, save


def _matches(column: pd.Series, value) -> pd.Series:
    """Rows whose value is `value`, a null matching a null."""
    return column.isna() if is_null(value) else column == value


def reference_levels(labelled: pd.DataFrame, axes: list[str]) -> dict[str, object]:
    """Each axis's reference level: the smallest of its values, a null (`none`) first."""
    return {a: sorted_values(labelled[a])[0] for a in axes}


def held_slice(ok: pd.DataFrame, axis: str, axes: list[str], reference: dict[str, object]) -> tuple[pd.DataFrame, str]:
    """The rows of `ok` with every axis but `axis` at its reference level, and the panel's
    note; all of `ok` (pooled) when no row has that combination."""
    others = [a for a in axes if a != axis]
    if not others:
        return ok, ""
    held = ok
    for a in others:
        held = held[_matches(held[a], reference[a])]
    at = ", ".join(f"{a}={fmt(reference[a])}" for a in others)
    if held.empty:
        return ok, f"pooled over {', '.join(others)} (no trial at {at})"
    return held, f"at {at}"


def seed_stats(rows: pd.DataFrame, x: str, seed: str = "seed") -> pd.DataFrame:
    """Per x: mean and std over seeds of each seed's mean drop (points), and the seed count."""
    per_seed = rows.groupby([x, seed])["drop_points"].mean()
    return per_seed.groupby(level=0).agg(["mean", "std", "size"]).rename(columns={"size": "n"})


def _n_label(stats: pd.DataFrame, seeds: int) -> str:
    low = int(stats["n"].min())
    return f"n={seeds}" if low == seeds else f"n={low}-{seeds}"


def dose_response_figure(labelled: pd.DataFrame, x: str, axes: list[str], delta: float | None = None):
    """The figure (see the module's docstring); `labelled` is `sweeps.fit.phase_fit.label_phases`'s
    table. Trials with a null x or no drop (no baseline, or not status ok) are left out; a
    `delta` draws the bad-phase threshold as a dashed line."""
    axes = [a for a in axes if a != x]
    ok = labelled[(labelled["status"] == "ok") & labelled["acc_drop"].notna() & labelled[x].notna()]
    ok = ok.assign(drop_points=100 * ok["acc_drop"].astype(float))
    x_values = [v for v in sorted_values(labelled[x]) if not is_null(v)]
    numeric = pd.api.types.is_numeric_dtype(labelled[x])
    scale = AxisScale.of(np.asarray(x_values, dtype=float)) if numeric and x_values else AxisScale(False)

    def coord(values) -> np.ndarray:
        if not numeric:  # a categorical x: its values in order, evenly spaced
            return np.asarray([[fmt(v) for v in x_values].index(fmt(v)) for v in values], dtype=float)
        v = np.asarray(values, dtype=float)
        return np.log1p(v) if scale.log else v

    reference = reference_levels(labelled, axes)
    panels = axes or [None]
    fig, grid = plt.subplots(1, len(panels), figsize=(max(6.0, 0.8 + 4.2 * len(panels)), 3.8), squeeze=False,
                             sharey=True)
    for ax, axis in zip(grid[0], panels):
        if axis is None:
            rows, note, levels = ok, "", [None]
        else:
            rows, note = held_slice(ok, axis, axes, reference)
            levels = sorted_values(labelled[axis])
        colors = plt.cm.viridis(np.linspace(0, 0.85, max(len(levels), 1)))
        drawn, missing = 0, []
        for color, level in zip(colors, levels):
            line = rows if axis is None else rows[_matches(rows[axis], level)]
            if line.empty:
                missing.append(fmt(level))
                continue
            stats = seed_stats(line, x)
            t = coord(stats.index)
            order = np.argsort(t)
            t, mean, std = t[order], stats["mean"].to_numpy()[order], stats["std"].fillna(0).to_numpy()[order]
            name = "all trials" if axis is None else f"{axis}={fmt(level)}"
            ax.plot(t, mean, "o-", color=color, ms=3.5, lw=1.4,
                    label=f"{name} ({_n_label(stats, line['seed'].nunique())})")
            ax.fill_between(t, mean - std, mean + std, color=color, alpha=0.18, lw=0)
            drawn += 1
        if delta is not None:
            ax.axhline(100 * delta, ls="--", color="0.35", lw=1, label=f"bad: drop >= {100 * delta:g} pts")
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        if drawn == 0:
            ax.text(0.5, 0.5, "no status-ok trial with a drop", transform=ax.transAxes, ha="center", va="center",
                    fontsize=8, color="0.4")
        shown = _spaced(x_values, coord)
        ax.set_xticks(coord(shown), [fmt(v) for v in shown])
        ax.set_xlabel(f"{x} (log(1 + x) axis)" if scale.log else x)
        if missing:
            note = "\n".join(filter(None, [note, f"no status-ok trial with a drop at {axis}={', '.join(missing)}"]))
        ax.set_title("\n".join(s for s in ("all trials" if axis is None else f"by {axis}", note) if s), fontsize=8)
        if ax is grid[0][0]:
            ax.set_ylabel(f"test-acc. drop vs. {BASELINE_AXIS}=0 (points)")
        if drawn or delta is not None:
            ax.legend(fontsize=6.5, loc="best")
    fig.suptitle(f"Dose-response: test-accuracy drop against {x}, mean over seeds\n"
                 f"(band: ±1 std over seeds; n: seeds; other axes at their reference level)", fontsize=9)
    fig.tight_layout()
    return fig


def write_dose_response(labelled: pd.DataFrame, x: str, axes: list[str], out_dir: str | Path,
                        delta: float | None = None) -> list[Path]:
    """`OUT/dose_response.png` and `.svg`."""
    return save(dose_response_figure(labelled, x, axes, delta), Path(out_dir) / "dose_response")


def _spaced(values: list, coord, most: int = 8) -> list:
    """At most `most` of the x values, none closer than 1/(most+2) of the axis to the last one
    kept, so a boundary search's crowded values keep readable labels."""
    if len(values) <= most:
        return list(values)
    t = np.asarray(coord(values), dtype=float)
    gap = (t.max() - t.min()) / (most + 2)
    kept = [0]
    for i in range(1, len(values)):
        if t[i] - t[kept[-1]] >= gap:
            kept.append(i)
    last = len(values) - 1  # the largest value is always labelled, in place of a neighbour too close
    if kept[-1] != last:
        if t[last] - t[kept[-1]] < gap and len(kept) > 1:
            kept.pop()
        kept.append(last)
    return [values[i] for i in kept]

