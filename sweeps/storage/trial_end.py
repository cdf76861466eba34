"""Where a Ray trial stands, read from the end of its result.json: its members, each member's
final row, the epochs each ran and Tune's time of the Ray trial.

A finished trial's last report holds its final rows (a pack's members that stopped earlier
have theirs a few reports back), so only the file's tail is read until every member's final
row is found; a trial still running, or one that raised, is read whole for its members'
epochs. This is what lets `minima status` answer for 10,000 trials in seconds, where the
export parses every row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from trainables.reports import FINAL_KEY, is_final, member_of, member_values, report_rows
from trainables.uri import filesystem

from .costs import epochs_run
from .results import member_table, read_trial_params, result_table

TAIL_BYTES = 1 << 16  # the first read from the end: a tiny trial's whole file, a large one's last report
_FINAL_MARK = re.compile(rb'"final":\s*true')  # a report carrying a final row, found without parsing it


@dataclass
class TrialEnd:
    members: list[dict[str, Any]]  # the trial configs it runs (a pack's members; [] if never started)
    finals: dict[int, dict[str, Any]]  # member -> its last final row, with its report's `timestamp`
    epochs: list[int]  # member -> epochs it ran (`costs.epochs_run`)
    time_total_s: float | None  # Tune's time of the Ray trial at its last stored report
    timestamp: int | None  # when that report was made (Ray's clock, whole seconds)

    @property
    def finished(self) -> bool:
        return bool(self.members) and len(self.finals) == len(self.members)


def last_report(data: bytes) -> dict[str, Any] | None:
    """The last whole report in a result.json's contents (a line cut short by a kill is skipped)."""
    return next(_reports_from_end(data, whole=True, every=False), None)


def _reports_from_end(data: bytes, whole: bool, every: bool):
    """Reports from the last line back: the last whole one, then (`every`) only those carrying
    a final row. `whole`: `data` starts at the file's start (else its first line is partial)."""
    lines = data.split(b"\n")
    if not whole:
        lines = lines[1:]
    first = True
    for line in reversed(lines):
        if not line.strip() or not (first or _FINAL_MARK.search(line)):
            continue
        try:
            report = json.loads(line)  # json takes the NaN a diverged trial reports
        except json.JSONDecodeError:
            continue
        first = False
        yield report
        if not every:
            return


def read_trial_end(trial_dir: str) -> TrialEnd:
    """The Ray trial's end as its storage holds it now (see the module's docstring)."""
    fs, path = filesystem(f"{trial_dir.rstrip('/')}/result.json")
    try:
        f = fs.open_input_file(path)
    except (FileNotFoundError, OSError):  # started, nothing reported yet
        return _unreported(trial_dir)
    with f:
        size = f.size()
        want = TAIL_BYTES
        while True:
            start = max(0, size - want)
            data = f.read_at(size - start, start)
            end = _end_of(data, whole=start == 0, trial_dir=trial_dir)
            if end is not None:
                return end
            want *= 8


def _end_of(data: bytes, whole: bool, trial_dir: str) -> TrialEnd | None:
    """The trial's end from the file's last `data` bytes; None when more of the file is needed."""
    last, finals = None, {}
    for report in _reports_from_end(data, whole, every=True):
        last = last or report
        for row in report_rows(report):
            if is_final(row):
                finals.setdefault(member_of(row), {**row, "timestamp": report.get("timestamp")})
    if last is None and not whole:
        return None
    if last is None:
        return _unreported(trial_dir)
    config = last.get("config") or read_trial_params(trial_dir)
    members = member_values(config) if config else []
    if len(finals) == len(members):
        epochs = [epochs_run(finals[m], 0) for m in range(len(members))]
    elif not whole:
        return None
    else:
        epochs = _epochs_from_rows(result_table(data), finals, len(members))
    return TrialEnd(members, finals, epochs, last.get("time_total_s"), last.get("timestamp"))


def _epochs_from_rows(table: pa.Table, finals: dict[int, dict[str, Any]], size: int) -> list[int]:
    import pyarrow.compute as pc

    out = []
    for m in range(size):
        rows = member_table(table, m) if size > 1 else table
        epoch_rows = rows.filter(pc.invert(rows.column(FINAL_KEY).fill_null(False))).num_rows
        out.append(epochs_run(finals.get(m), epoch_rows))
    return out


def _unreported(trial_dir: str) -> TrialEnd:
    params = read_trial_params(trial_dir)
    members = member_values(params) if params is not None else []
    return TrialEnd(members, {}, [0] * len(members), None, None)
