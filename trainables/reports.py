"""A trial's rows as Ray trials report them and storage holds them: written and read only here.

A Ray trial runs one trial or a pack of member trials (its Tune config's `_members`). It reports
one row per epoch and stage, then a final row per trial carrying its summary (`final: True`,
stage `final`); in a pack every row names its `member`. One Tune report carries a batch of rows
in `records`, and Tune's JSON logger stores each report as a line of the trial's `result.json`.
The trainable writes rows with `epoch_row` and `final_row`; the MLflow logger, progress line,
outcome, stored results and export read them with the rest. Keys of a Tune config that start
with `_` are sweep settings, not trial fields. No torch, no Ray.
"""

from __future__ import annotations

from typing import Any, Iterable

FINAL_KEY = "final"  # True on the row that carries a trial's summary
FINAL_STAGE = "final"  # the stage named in that row
MEMBER_KEY = "member"  # in each row of a packed trial: which member it belongs to
RECORDS_KEY = "records"  # a report's batch of rows
MEMBERS_KEY = "_members"  # a packed trial's config: the member trial configs, run as one stacked model
SEEDS_KEY = "_seeds"  # optuna sweeps: the seed list, indexed by Ray's Repeater
REPEAT_INDEX_KEY = "__trial_index__"  # set by ray.tune.search.Repeater


def epoch_row(record: dict[str, Any], member: int | None = None) -> dict[str, Any]:
    """An epoch's record as a reported row (of a pack's `member`, or of a lone trial)."""
    return {**record, FINAL_KEY: False} if member is None else {**record, MEMBER_KEY: member, FINAL_KEY: False}


def final_row(summary: dict[str, Any], epoch_rows: int, member: int | None = None) -> dict[str, Any]:
    """A trial's summary as its final row, whose `step` follows its `epoch_rows` epoch rows."""
    row = {**{k: v for k, v in summary.items() if k != "config"}, "stage": FINAL_STAGE, "step": epoch_rows, FINAL_KEY: True}
    return row if member is None else {**row, MEMBER_KEY: member}


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows in one Tune report: its `records`, or the report itself."""
    rows = report.get(RECORDS_KEY)
    return rows if rows is not None else [report]


def is_final(row: dict[str, Any]) -> bool:
    return bool(row.get(FINAL_KEY))


def member_of(row: dict[str, Any]) -> int:
    """The member a row belongs to: its index in the pack, 0 for a lone trial."""
    return row.get(MEMBER_KEY) or 0


def final_rows(rows: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each member's final row (the last one, where a restored trial reported it twice)."""
    return {member_of(r): r for r in rows if is_final(r)}


def tune_config_values(tune_config: dict[str, Any]) -> dict[str, Any]:
    """The trial config fields in a Ray Tune config: reserved `_` keys dropped, the seed resolved."""
    values = {k: v for k, v in tune_config.items() if not k.startswith("_")}
    if REPEAT_INDEX_KEY in tune_config and SEEDS_KEY in tune_config:
        values["seed"] = tune_config[SEEDS_KEY][tune_config[REPEAT_INDEX_KEY]]
    return values


def member_values(tune_config: dict[str, Any]) -> list[dict[str, Any]]:
    """The trial configs a Ray trial runs: its members when packed, else itself."""
    if MEMBERS_KEY in tune_config:
        return [tune_config_values(v) for v in tune_config[MEMBERS_KEY]]
    return [tune_config_values(tune_config)]
