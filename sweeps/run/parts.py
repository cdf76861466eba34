"""A large grid sweep cut into parts: several Tune experiments run one after another under one
sweep (one folder, one MLflow parent, one export).

Tune keeps every finished trial of an experiment in the driver until the experiment ends, so one
experiment's driver memory grows with the sweep (docs/performance.md, "Large sweeps"). A grid's
Ray trials are known before it starts: past `PART_RAY_TRIALS` of them they are cut, in plan
order, into even parts, and part k runs as its own Tune experiment in `<sweep>/part-<k>`. The
driver drops a part's trials when it ends. A sweep that fits in one part runs as one experiment
in the sweep's folder itself. No torch, no Ray here.
"""

from __future__ import annotations

import dataclasses
import math
import os

from trainables.uri import filesystem

from ..design.plan import SweepPlan
from ..design.spec import SweepError

# Ray trials per Tune experiment: what a part grows the driver by is mostly handed back to the
# next part, so smaller parts keep the driver flatter; each further part costs one Tune start
# and one actor start per slot (docs/performance.md, "Large sweeps").
PART_RAY_TRIALS = 1_000
PART_ENV = "MINIMA_PART_RAY_TRIALS"  # overrides PART_RAY_TRIALS for sweeps started with it set


def part_limit() -> int:
    """The most Ray trials a new sweep runs in one Tune experiment."""
    text = os.environ.get(PART_ENV) or str(PART_RAY_TRIALS)
    if not text.isdigit() or int(text) < 1:
        raise SweepError(f"{PART_ENV}={text!r}: must be a positive whole number of Ray trials")
    return int(text)


def ray_trials_per_part(plan: SweepPlan) -> int | None:
    """Ray trials per part for a new sweep (evenly cut), or None when it runs as one experiment:
    not a grid (its trials are drawn as it goes), or at most `part_limit()`."""
    limit = part_limit()
    count = len(plan.ray_trials)
    if plan.search != "grid" or count <= limit:
        return None
    return math.ceil(count / math.ceil(count / limit))


def part_count(plan: SweepPlan, per_part: int) -> int:
    return math.ceil(len(plan.ray_trials) / per_part)


def split_plan(plan: SweepPlan, per_part: int) -> list[SweepPlan]:
    """The plan's Ray trials in plan order, `per_part` to a part; each part keeps the shared
    pretrainings its trials need (those made by an earlier part are found saved)."""
    parts = []
    for start in range(0, len(plan.ray_trials), per_part):
        ray = plan.ray_trials[start:start + per_part]
        needs = plan.needs[start:start + per_part]
        keys = {key for need in needs for key, _ in need}
        parts.append(dataclasses.replace(
            plan, num_trials=sum(len(members) for members in ray), ray_trials=ray, needs=needs,
            jobs=tuple(j for j in plan.jobs if j.key in keys),
            packed_jobs={name: tuple(k for k in ks if k in keys) for name, ks in plan.packed_jobs.items()}))
    return parts


def clear_unsaved_part(part_dir: str) -> None:
    """Remove what a part left without a saved Tune state (a driver killed as it started), so
    starting it afresh does not leave its first trials twice in the sweep's folder."""
    import pyarrow.fs

    fs, path = filesystem(part_dir)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
        fs.delete_dir(path)
