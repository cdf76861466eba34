"""`minima status` as text: one sweep's status as lines, or a table of every sweep in a storage
(the dicts `status.sweep_status` makes; `--json` prints those as they are)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from .status import OUTCOMES

SHOWN_FAILURES = 10  # failed Ray trials listed in the text; --json lists all


def status_lines(s: dict[str, Any]) -> list[str]:
    counts = ", ".join(f"{v} {k}" for k, v in s["counts"].items())
    of = f"{s['trials']} of at most {s['budget']}" if s["budget"] is not None else str(s["trials"])
    lines = [f"sweep {s['name']} ({s['search']} search) at {s['path']}",
             f"  trials    {of}: {counts}",
             f"  started   {_time(s['started'])}; last result {_time(s['last_result'])}{_ago(s['last_result'])}",
             f"  time      {_h(s['trial_hours'])} trial-hours over {s['ray_trials']} Ray trials (a pack counts once)",
             f"  cost      {cost_text(s['cost'])}",
             f"  MLflow    {s['mlflow']['state']}: {s['mlflow']['detail']}"]
    left = s["counts"]["running"] + s["counts"]["pending"]
    if s["eta_s"] is not None:
        lines.append(f"  ETA       {_clock(s['eta_s'])} for the {left} trials left, at the rate of the latest "
                     f"finished ones")
    elif left and s["budget"] is None and s["last_result"]:
        lines.append(f"  ETA       none: nothing has finished lately; a driver that stopped continues with "
                     f"`minima resume {s['name']}`")
    if s["parts"]:
        lines.append("  parts")
        for p in s["parts"]:
            state = "done" if p["done"] else (f"Tune's state saved {_time(p['state_saved'])}{_ago(p['state_saved'])}"
                                              if p["state_saved"] else "no Tune state stored")
            part_counts = ", ".join(f"{v} {k}" for k, v in sorted(p["counts"].items()))
            run = f" (extension {p['extension']})" if p["extension"] else ""
            lines.append(f"    {p['part']:<9} {sum(p['counts'].values())} trials ({part_counts or 'none'}){run}; "
                         f"{_h(p['trial_hours'])} trial-hours; {state}")
        if s["not_started"]:
            lines.append(f"    not started: {s['not_started']} trials")
    for i, t in enumerate(s["slowest"]):
        lines.append(f"  {'slowest' if i == 0 else '':<9} {t['trial']}  {_clock(t['hours'] * 3600)}  ({_members(t)})")
    for t in s["failed"][:SHOWN_FAILURES]:
        lines.append(f"  failed    {t['trial']} ({_members(t)}):")
        lines += [f"              {line}" for line in t["error"].splitlines()] or ["              (no error.txt)"]
    if len(s["failed"]) > SHOWN_FAILURES:
        lines.append(f"  ... and {len(s['failed']) - SHOWN_FAILURES} more failed Ray trials (--json lists them)")
    return lines


def cost_text(cost: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {_h(v)}" for k, v in cost["gpu_hours_by_accelerator"].items())
    text = (f"{_h(cost['gpu_hours'])} GPU-hours{f' ({kinds})' if kinds else ''}, {_h(cost['cpu_hours'])} CPU-hours "
            f"({cost['cpu_per_ray_trial']:g} CPU, {cost['gpu_per_ray_trial']:g} GPU per Ray trial)")
    if cost["cells"]:
        unit, mean, most = (("GPU", cost["cell_gpu_hours_mean"], cost["cell_gpu_hours_max"]) if cost["gpu_hours"] else
                            ("CPU", cost["cell_cpu_hours_mean"], cost["cell_cpu_hours_max"]))
        text += f"; per cell ({cost['cells']} cells): mean {_h(mean)} {unit}-hours, most {_h(most)}"
    return text


def table_lines(listed: dict[str, Any]) -> list[str]:
    """Every sweep of a storage (`status.storage_status`), a row each (one that could not be read: why)."""
    if not listed["sweeps"]:
        return [f"no sweeps under {listed['storage']}"]
    head = ["sweep", "trials", *OUTCOMES, "started", "last result", "trial-h", "CPU-h", "GPU-h", "MLflow"]
    rows = []
    for s in listed["sweeps"]:
        if "error" in s:
            rows.append([s["name"], f"unreadable: {s['error']}"])
            continue
        rows.append([s["name"], str(s["trials"]), *(str(s["counts"][k]) for k in OUTCOMES), _time(s["started"]),
                     _time(s["last_result"]), _h(s["trial_hours"]), _h(s["cost"]["cpu_hours"]),
                     _h(s["cost"]["gpu_hours"]), s["mlflow"]["state"]])
    widths = [max(len(r[i]) for r in [head] + rows if i < len(r) and len(r) > 2) for i in range(len(head))]
    lines = [f"storage {listed['storage']}"]
    for r in [head] + rows:
        lines.append("  ".join(c.ljust(w) if i == 0 or len(r) == 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return lines


def _members(t: dict[str, Any]) -> str:
    outcomes = ", ".join(f"{v} {k}" for k, v in t["outcomes"].items())
    return f"{t['members']} trial{'s' if t['members'] > 1 else ''}: {outcomes}"


def _h(hours: float | None) -> str:
    return "-" if hours is None else f"{hours:.3g}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _time(iso: str | None) -> str:
    return "-" if iso is None else dt.datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")


def _ago(iso: str | None) -> str:
    if iso is None:
        return ""
    return f" ({_clock(max(0.0, time.time() - dt.datetime.fromisoformat(iso).timestamp()))} ago)"
