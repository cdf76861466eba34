"""Figures: the phase diagram (heatmap of the accuracy drop, phases, boundary) and learning curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster heads or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sweeps.fit.boundary_model import Boundary  # noqa: E402
from sweeps.fit.phase_fit import AxisScale, fmt, is_null  # noqa: E402

from .phase import fit_surface, position, sorted_values  # noqa: E402

PHASE_MARK = {"good": "G", "bad": "B", "not_fit": "N", "diverged": "D", "error": "E", "unfinished": "?"}


def _groups(df: pd.DataFrame, by: list[str]):
    if not by:
        yield {}, df
        return
    for key, group in df.groupby(by, dropna=False):
        yield dict(zip(by, key if isinstance(key, tuple) else (key,))), group


def _index_of(x_value: float, x_values: list, scale: AxisScale) -> float:
    """Position of a value on the heatmap's column index, interpolated in fit coordinates
    between the columns of non-null values."""
    columns = [j for j, v in enumerate(x_values) if not is_null(v)]
    t = scale.to_fit(np.asarray([x_values[j] for j in columns], dtype=float))
    return float(np.interp(scale.to_fit(x_value), t, columns))


def phase_figure(labelled: pd.DataFrame, cells: pd.DataFrame, boundaries: list[Boundary], x: str, y: str,
                 by: list[str], delta: float, scale: AxisScale | None = None):
    x_values = sorted_values(labelled[x])
    y_values = sorted_values(labelled[y])
    y_labels = [fmt(v) for v in y_values]
    scale = scale or AxisScale.of(np.asarray([v for v in x_values if not is_null(v)], dtype=float))
    groups = list(_groups(labelled, by))
    fig, axes = plt.subplots(1, len(groups), figsize=(1.4 + 1.3 * len(x_values) * len(groups), 1.6 + 0.75 * len(y_values)),
                             squeeze=False)
    drops = 100 * cells["drop_mean"].to_numpy(dtype=float)
    vmax = max(5.0, float(np.nanmax(np.abs(drops))) if np.isfinite(drops).any() else 5.0)
    for ax, (by_values, group) in zip(axes[0], groups):
        grid = np.full((len(y_values), len(x_values)), np.nan)
        sub = cells
        for k, v in by_values.items():
            sub = sub[sub[k].map(fmt) == fmt(v)]
        for _, c in sub.iterrows():
            i, j = y_labels.index(fmt(c[y])), position(x_values, c[x])
            grid[i, j] = 100 * c["drop_mean"]
            bad, n = int(c.get("bad", 0)), int(c["n"])
            ax.text(j, i, f"{PHASE_MARK[c['phase']]}\n{bad}/{n} bad", ha="center", va="center", fontsize=7)
        image = ax.imshow(grid, origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        surface = fit_surface(group, x, y, x_values, y_labels)
        if surface is not None:
            ax.contour(*surface, levels=[0.5], colors="k", linewidths=1.5)
        for b in boundaries:
            if b.by != by_values or b.x_critical is None:
                continue
            row = y_labels.index(fmt(b.y))
            xc = _index_of(b.x_critical, x_values, scale)
            ends = [v for v in x_values if not is_null(v)]  # an open side is drawn to the range's edge
            lo = _index_of(ends[0] if b.ci_low is None else b.ci_low, x_values, scale)
            hi = _index_of(ends[-1] if b.ci_high is None else b.ci_high, x_values, scale)
            ax.errorbar([xc], [row], xerr=[[xc - lo], [hi - xc]], fmt="D", color="gold", mec="k", ms=6, capsize=3)
        ax.set_xticks(range(len(x_values)), [fmt(v) for v in x_values])
        ax.set_yticks(range(len(y_values)), y_labels)
        ax.set_xlabel(x)
        if ax is axes[0][0]:
            ax.set_ylabel(y)
        ax.set_title(", ".join(f"{k}={fmt(v)}" for k, v in by_values.items()) or "all trials", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), label="test-accuracy drop vs. pretrain_epochs=0 (points)")
    fig.suptitle(f"Phase diagram: B = bad global minimum (drop >= {100 * delta:g} pts), G = good, N = not fit; "
                 f"line: P(bad) = 0.5; diamonds: x_critical with 90% CI", fontsize=9, y=1.02)
    return fig


def curves_figure(curves: pd.DataFrame, trials: pd.DataFrame, x: str, y: str, by: list[str], metric: str = "test_acc"):
    """Mean per-epoch `metric` (band: +-1 std over seeds) per cell, one panel per (by, y)."""
    # only the curve's own columns: a per-epoch `lr` must not shadow the trial's `lr` axis
    merged = curves[["trial_id", "step", metric]].merge(trials[["trial_id", x, y, *by]], on="trial_id")
    y_values = sorted_values(trials[y])
    x_values = sorted_values(trials[x])
    groups = list(_groups(merged, by))
    fig, axes = plt.subplots(len(groups), len(y_values), figsize=(3.2 * len(y_values), 2.6 * len(groups)),
                             squeeze=False, sharey=True)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(x_values)))
    for r, (by_values, group) in enumerate(groups):
        for c, y_value in enumerate(y_values):
            ax = axes[r, c]
            panel = group[group[y].map(fmt) == fmt(y_value)]
            for color, x_value in zip(colors, x_values):
                cell = panel[panel[x].isna()] if is_null(x_value) else panel[panel[x] == x_value]
                if cell.empty:
                    continue
                stats = cell.groupby("step")[metric].agg(["mean", "std", "size"])
                ax.plot(stats.index, stats["mean"], color=color, lw=1.2, label=f"{x}={fmt(x_value)} (n={stats['size'].max()})")
                ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0), stats["mean"] + stats["std"].fillna(0),
                                color=color, alpha=0.15, lw=0)
            title = ", ".join([f"{y}={fmt(y_value)}"] + [f"{k}={fmt(v)}" for k, v in by_values.items()])
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("epoch (pretraining, then clean training)", fontsize=7)
            if c == 0:
                ax.set_ylabel(metric)
    axes[0, -1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


PHASE_COLORS = {"good": "#2a9d8f", "bad": "#e76f51"}


def measures_figure(labelled: pd.DataFrame, curves: pd.DataFrame):
    """Good vs bad global minima: local-energy flatness, and mu_Y(F; L) over the clean phase.

    Left: each trial's local energy at 5% weight noise, mean +- std per phase, n in the label.
    Right: mu (information the net shares with a linear classifier about the label) against the
    fraction of the clean phase done, mean +- std over the phase's trials at each tenth.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    phases = [p for p in PHASE_COLORS if (labelled["phase"] == p).any()]
    for i, phase in enumerate(phases):
        values = labelled.loc[labelled["phase"] == phase, "local_energy_5pct"].dropna()
        jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(values))
        left.scatter(i + jitter, values, s=10, color=PHASE_COLORS[phase], alpha=0.6)
        if len(values):
            left.errorbar(i + 0.3, values.mean(), yerr=values.std() if len(values) > 1 else 0, fmt="o",
                          color="black", capsize=3)
    left.set_xticks(range(len(phases)), [f"{p}\n(n={int((labelled['phase'] == p).sum())})" for p in phases])
    left.set_ylabel("local energy, 5% weight noise")
    left.set_title("flatness at the minimum (lower = flatter)", fontsize=9)
    clean = curves[(curves["stage"] == "train") & curves["mu_linear"].notna()] if "mu_linear" in curves else curves.iloc[:0]
    clean = clean.merge(labelled[["trial_id", "phase", "epochs"]], on="trial_id")
    clean = clean[clean["phase"].isin(phases)]
    if not clean.empty:
        clean = clean.assign(tenth=np.ceil(10 * clean["epoch"] / clean["epochs"]).clip(1, 10) / 10)
        for phase in phases:
            rows = clean[clean["phase"] == phase]
            if rows.empty:
                continue
            stats = rows.groupby("tenth")["mu_linear"].agg(["mean", "std", "size"])
            right.plot(stats.index, stats["mean"], "o-", color=PHASE_COLORS[phase], ms=3,
                       label=f"{phase} (n={rows['trial_id'].nunique()})")
            right.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0),
                               stats["mean"] + stats["std"].fillna(0), color=PHASE_COLORS[phase], alpha=0.15, lw=0)
        right.legend(fontsize=7)
    right.set_xlabel("fraction of the clean phase's epoch cap")
    right.set_ylabel("mu_Y(F; L), nats")
    right.set_title("performance correlation with a linear classifier", fontsize=9)
    fig.tight_layout()
    return fig


def save(fig, path_stem: Path, formats=("png", "svg")) -> list[Path]:
    paths = []
    for ext in formats:
        path = path_stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=130, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths
