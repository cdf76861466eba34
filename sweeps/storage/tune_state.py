"""Tune's experiment state as stored (`experiment_state-<start>.json`, the newest as Tune picks
it): each Ray trial's status and how many trials it runs. Read as JSON; nothing in it is
unpickled, so reading a state someone else wrote runs none of their code."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass

from trainables.reports import member_values
from trainables.uri import filesystem, read_text

STATE_FILES = "experiment_state-*.json"  # Tune's name; the newest by name is the one it restores


@dataclass
class TuneState:
    statuses: dict[str, str]  # Ray trial id -> PENDING, RUNNING, PAUSED, TERMINATED or ERROR
    sizes: dict[str, int]  # Ray trial id -> trials it runs (a pack's members)
    saved: float | None  # when Tune stored it (the file's modification time, seconds since the epoch)


def read_tune_state(experiment_dir: str) -> TuneState | None:
    """The experiment's newest stored state, or None when Tune has stored none."""
    import pyarrow.fs

    fs, base = filesystem(experiment_dir.rstrip("/"))
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(base))
    except (FileNotFoundError, OSError):
        return None
    found = sorted((i for i in infos if i.type == pyarrow.fs.FileType.File and fnmatch.fnmatch(i.base_name, STATE_FILES)),
                   key=lambda i: i.base_name)
    if not found:
        return None
    newest = found[-1]
    text = read_text(f"{experiment_dir.rstrip('/')}/{newest.base_name}")
    try:
        trials = json.loads(text)["trial_data"] if text else None
    except (json.JSONDecodeError, KeyError):  # an object store mid-upload, or a foreign file
        trials = None
    if trials is None:
        return None
    statuses, sizes = {}, {}
    for trial_json, _run_metadata in trials:
        trial = json.loads(trial_json)
        statuses[trial["trial_id"]] = trial["status"]
        sizes[trial["trial_id"]] = len(member_values(trial.get("config") or {}))
    saved = newest.mtime.timestamp() if newest.mtime is not None else None
    return TuneState(statuses, sizes, saved)
