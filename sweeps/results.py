"""Reading what Ray Tune stored for a trial: its result.json rows, one per report.

The sweep's storage is the source of truth (it holds every report and checkpoint); MLflow is
a view of it that can be re-filled from here.
"""

from __future__ import annotations

import json
from typing import Any


def read_result_rows(trial_dir: str) -> list[dict[str, Any]]:
    """Rows of `trial_dir/result.json` (a local folder or a URI); [] when there is none yet.

    After a restore Ray appends replayed reports, so rows are de-duplicated by `step`, keeping
    the last of each (a final report has its own entry).
    """
    path = f"{trial_dir.rstrip('/')}/result.json"
    try:
        if "://" in path:
            import pyarrow.fs

            fs, inner = pyarrow.fs.FileSystem.from_uri(path)
            with fs.open_input_stream(inner) as f:
                text = f.read().decode()
        else:
            with open(path) as f:
                text = f.read()
    except (FileNotFoundError, OSError):
        return []
    rows: dict[tuple[int, bool], dict[str, Any]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
        rows[(int(row.get("step") or 0), bool(row.get("final")))] = row
    return [rows[k] for k in sorted(rows)]
