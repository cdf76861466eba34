"""`minima report`: one self-contained HTML page per sweep (figures embedded), every figure with n."""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path

import pandas as pd

from sweeps.fit.phase_fit import BASELINE_AXIS, fmt, fmt_interval

from .diagram import run_phase
from .mlflow_links import LOCAL_UI, linked_image, mlflow_hrefs, ui_base
from .phase import PhaseInputError

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#f3f3f3;padding:1px 4px}
.muted{color:#666;font-size:13px}
"""


def default_axes(axes: list[str], x: str, y: str | None, by: list[str] | None) -> tuple[str, list[str]]:
    if x not in axes:
        raise PhaseInputError(f"--x {x}: the sweep's axes are {', '.join(axes)}; the phase diagram needs {x} as one")
    others = [a for a in axes if a != x]
    if y is None:
        if not others:
            raise PhaseInputError("the sweep varies only one axis: a phase diagram needs a second (--y)")
        y = others[0]
    return y, ([a for a in others if a != y] if by is None else by)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame, floats: str = "{:.4g}") -> str:
    return df.to_html(index=False, na_rep="", float_format=lambda v: floats.format(v), border=0, escape=True)


def _mean_std(series: pd.Series, scale: float = 1.0) -> str:
    s = series.dropna() * scale
    if s.empty:
        return ""
    return f"{s.mean():.3g} ± {s.std():.2g} (n={len(s)})" if len(s) > 1 else f"{s.mean():.3g} (n=1)"


def write_report(spec, export, out_dir, x: str = BASELINE_AXIS, y: str | None = None, by: list[str] | None = None,
                 delta: float = 0.05, log_to_mlflow: bool = True) -> Path:
    y, by = default_axes(list(spec.axes), x, y, by)
    result = run_phase(export.trials_path, x, y, by, delta, out_dir, export.curves_path, log_to_mlflow)
    labelled, phase = result.labelled, result.phase

    boundary = pd.DataFrame([{
        y: fmt(b["y"]), **{k: fmt(v) for k, v in b["by"].items()},
        f"critical {x}": "none" if b["x_critical"] is None else f"{b['x_critical']:.3g}",
        "90% interval": "" if b["x_critical"] is None else fmt_interval(b["ci_low"], b["ci_high"]),
        "trials (seeds)": f"{b['n_trials']} ({b['n_seeds']})",
        "joint model": _joint_text(b.get("joint")), "note": b.get("reason", ""),
    } for b in phase["boundary"]])
    cells = result.cells.copy()
    for col in (x, y, *by):
        cells[col] = cells[col].map(fmt)
    cells["test acc % (mean ± std)"] = [f"{100 * m:.1f} ± {100 * s:.1f}" if pd.notna(s) else f"{100 * m:.1f}"
                                        for m, s in zip(cells["test_acc_mean"], cells["test_acc_std"])]
    cells["drop, points"] = [f"{100 * m:.1f} ± {100 * s:.1f}" if pd.notna(s) else ("" if pd.isna(m) else f"{100 * m:.1f}")
                             for m, s in zip(cells["drop_mean"], cells["drop_std"])]
    for col, name in (("gpu_hours", "GPU-h"), ("cpu_hours", "CPU-h")):
        if col in cells:
            cells[name] = cells[col].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    shown = [*by, y, x, "n", "test acc % (mean ± std)", "drop, points", "phase",
             *[p for p in ("good", "bad", "not_fit", "diverged", "error") if p in cells], "GPU-h", "CPU-h"]
    curves = pd.read_parquet(export.curves_path, columns=["trial_id", "step", "mu_linear"])
    final_mu = curves.dropna(subset=["mu_linear"]).sort_values("step").groupby("trial_id")["mu_linear"].last()
    labelled = labelled.assign(final_mu=labelled["trial_id"].map(final_mu))
    flat = pd.DataFrame([{
        "phase": p, "trials": int((labelled["phase"] == p).sum()),
        "test acc %": _mean_std(labelled.loc[labelled["phase"] == p, "test_acc"], 100),
        "local energy (5% weight noise)": _mean_std(labelled.loc[labelled["phase"] == p, "local_energy_5pct"]),
        "epochs to fit": _mean_std(labelled.loc[labelled["phase"] == p, "epochs_to_fit"]),
        "mu_Y(F; L) at the end, nats": _mean_std(labelled.loc[labelled["phase"] == p, "final_mu"]),
    } for p in ("good", "bad", "not_fit") if (labelled["phase"] == p).any()])
    status = ", ".join(f"{v} {k}" for k, v in sorted(export.status_counts.items()))
    commits = sorted({c for c in labelled.get("git_commit", pd.Series(dtype=str)).dropna()})
    base = pd.DataFrame([{"field": k, "value": fmt(v)} for k, v in spec.base.items()])
    axes = pd.DataFrame([{"axis": a, "values": _axis_text(spec, a, labelled)} for a in spec.axes])
    out = Path(out_dir)
    curves_png = out / "curves.png"
    hrefs = mlflow_hrefs(spec.tracking_uri, spec.name) if log_to_mlflow else None
    phase_html = linked_image(out / "phase.png", result.areas, hrefs, x, y)
    ui = ui_base(spec.tracking_uri)
    link_note = "" if hrefs is None else (
        f'<p class="muted">Click a cell to open its runs in the MLflow UI at {html.escape(ui)}'
        + (f" (start it with <code>minima ui --tracking-uri {html.escape(spec.tracking_uri)}</code>)" if ui == LOCAL_UI else "")
        + ".</p>")
    dose_png = out / "dose_response.png"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Minima Atlas: {html.escape(spec.name)}</title>
<style>{STYLE}</style></head><body>
<h1>Sweep <code>{html.escape(spec.name)}</code></h1>
<p>{html.escape(spec.description)}</p>
<p class="muted">{export.trials} trials ({status}); seeds {spec.seeds}; code {', '.join(c[:10] for c in commits) or 'unknown'};
report written {dt.datetime.now().isoformat(timespec='seconds')}. Data: <code>{export.trials_path.name}</code>,
<code>{export.curves_path.name}</code>; MLflow: <code>minima ui --tracking-uri {html.escape(spec.tracking_uri)}</code>.</p>
<h2>Phase diagram</h2>
<p>A trial that reached 100% train accuracy sits in a <b>bad global minimum</b> when its test accuracy is at least
{100 * delta:g} points below the mean of the same configuration with {x} = 0 (all seeds); <b>good</b> otherwise;
<b>not fit</b> if it never reached 100% train accuracy. Each cell: majority phase and bad/n; colour: mean drop.</p>
{phase_html}
{link_note}
<p>{cost_sentence(labelled)}</p>
<h2>Critical {html.escape(x)}</h2>
<p>Per slice: where P(bad) crosses 0.5 along {html.escape(x)}, from the boundary model fitted to that slice's trials
alone, with its 90% posterior interval ('..': open past the swept range). <i>Joint model</i>: the same crossing from the
model of all trials at once (below); <b>departs</b> marks a slice whose crossing departs from the axes' additive
effects beyond its interval (an interaction), <b>disagrees</b> one whose interval and the joint model's do not overlap.</p>
{_table(boundary)}
{effects_section(phase, out)}
<h2>Dose-response</h2>
<p>Mean test-accuracy drop (points) against {html.escape(x)}, one line per level of each other axis, the other axes
held at their reference (smallest) level; band: ±1 std over seeds; n (seeds) in the legend; dashed: the
{100 * delta:g}-point threshold.</p>
{_img(dose_png) if dose_png.exists() else ''}
<h2>Cells</h2>
{_table(cells[[c for c in shown if c in cells]])}
<h2>Flatness and fitting time by phase</h2>
<p>Local energy: mean rise of train loss when every weight is multiplied by 1 + 0.05·N(0,1) (lower = flatter).</p>
{_table(flat)}
<p>mu_Y(F; L) = I(F; Y) − I(F; Y | L) (Nakkiran et al. 2019): how much of what the net's test predictions F
tell about the label Y a logistic regression's predictions L also tell; measured at every tenth of the clean
phase. Left: flatness per trial; right: mu over training, mean ± std per phase.</p>
{_img(out / 'measures.png') if (out / 'measures.png').exists() else ''}
<h2>Learning curves</h2>
<p>Test accuracy per epoch (pretraining epochs first), mean over seeds with ±1 std band; n per line in the legend.</p>
{_img(curves_png) if curves_png.exists() else '<p>no curves</p>'}
<h2>Sweep definition</h2>
{_table(axes)}{_table(base)}
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path


def cost_sentence(trials: pd.DataFrame) -> str:
    """What the diagram's trials held, from trials.parquet's cost columns (docs/outputs.md)."""
    if not {"cpu_s", "gpu_s"} <= set(trials) or trials["cpu_s"].isna().all():
        return "Its cost is not known: this trials.parquet has no CPU- and GPU-seconds (export the sweep again)."
    gpu, cpu = trials["gpu_s"].sum() / 3600, trials["cpu_s"].sum() / 3600
    kinds = sorted(trials["accelerator_type"].dropna().unique()) if "accelerator_type" in trials else []
    on = f" on {', '.join(kinds)}" if kinds else ""
    return (f"This diagram cost {gpu:.3g} GPU-hours ({cpu:.3g} CPU-hours){on}: the CPUs and GPUs each Ray trial asked "
            f"of Ray, for as long as Tune ran it, a pack's split over its trials by their epochs; per cell in the table "
            f"below.")


def _joint_text(joint: dict | None) -> str:
    if not joint:
        return ""
    text = "none" if joint["x_critical"] is None else f"{joint['x_critical']:.3g} {fmt_interval(*joint['ci'])}"
    return (text + (" — departs from the additive pattern" if joint.get("departs") else "")
            + (" — disagrees" if joint["disagrees"] else ""))


def effects_section(phase: dict, out: Path) -> str:
    """What moves the boundary: the joint model's crossing per level, its shift, the axes ranked."""
    x = html.escape(phase["x"])
    head = "<h2>What moves the boundary</h2>"
    if not phase.get("effects"):
        return head + f"<p>No effects: {html.escape(phase.get('effects_reason') or 'no model')}.</p>"
    joint = phase["joint"]
    rows = pd.DataFrame([{
        "axis": e["axis"], "level": fmt(e["value"]) + (" (reference)" if e.get("reference") else ""),
        f"critical {phase['x']}": "none" if e["x_critical"] is None else f"{e['x_critical']:.3g}",
        "90% interval": "" if e["x_critical"] is None else fmt_interval(*e["ci"]),
        "shift": "" if e["shift"] is None else f"{e['shift']:.2f}x",
        "shift 90% interval": fmt_interval(*e["shift_ci"]), "note": e.get("reason", ""),
    } for e in phase["effects"]])
    ref = ", ".join(f"{a} = {fmt(v)}" for a, v in joint["reference"]["levels"].items())
    ranking = ", ".join(f"{r['axis']} ({r['largest_move']:.2f})" for r in joint["ranking"])
    moved = ", ".join(f"{m['axis']} = {fmt(m['value'])} {fmt_interval(*m['shift_ci'])}" for m in joint["moved"]) or "none"
    return head + f"""<p>One model of P(bad) over every trial ({joint['n_trials']} that fit, {joint['n_seeds']} seeds):
{x} on its fit scale, each other axis as a factor, the seed as a random effect (docs/outputs.md). Each level's critical
{x} is with the other axes at their reference ({html.escape(ref)}); its <i>shift</i> is the ratio to the reference's,
with a 90% posterior interval ('..': open past the swept range).</p>
{_table(rows)}
{_img(out / "boundary_shift.png") if (out / "boundary_shift.png").exists() else ""}
{_img(out / "boundary_pairs.png") if (out / "boundary_pairs.png").exists() else ""}
<p>Axes by how far their levels move the threshold (largest posterior-median move, as a fraction of the swept range on
the fit scale): {html.escape(ranking)}.<br>Levels whose shift interval excludes 1: {html.escape(moved)}.</p>"""


def _axis_text(spec, axis: str, trials: pd.DataFrame) -> str:
    """An axis's values; for a boundary search's x, its range and the values the search ran."""
    if spec.search.kind == "boundary" and axis == spec.search.x:
        ran = ", ".join(fmt(v) for v in sorted(trials[axis].dropna().unique()))
        a = spec.axes[axis]
        return f"boundary search over {fmt(a.low)}..{fmt(a.high)} ({a.scale}); ran: {ran}"
    return ", ".join(fmt(v) for v in spec.axis_values(axis))
