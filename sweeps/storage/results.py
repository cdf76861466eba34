"""Reading what Ray Tune stored for a sweep: trial folders, their configs and result rows.

The sweep's storage is the source of truth (every report and checkpoint); MLflow is a view of
it that can be re-filled from here, and the Parquet exports are built from it.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from trainables.metrics import EPOCH_METRICS, FINAL_METRICS
from trainables.reports import FINAL_KEY, MEMBER_KEY, final_rows, member_values
from trainables.uri import filesystem, read_bytes, read_text

from .sweep_files import PART_PREFIX

# The columns of a result.json row we keep; Ray's own additions (config, pid, ...) are skipped.
RESULT_SCHEMA = pa.schema(
    [(MEMBER_KEY, pa.int64()), ("step", pa.int64()), ("epoch", pa.int64()), ("stage", pa.string()), (FINAL_KEY, pa.bool_()),
     ("status", pa.string()), ("diverged", pa.bool_())]
    + [(m, pa.float64()) for m in EPOCH_METRICS]
    + [("reached_global_min", pa.bool_()), ("epochs_to_fit", pa.int64()), ("train_epochs", pa.int64())]
    + [(m, pa.float64()) for m in FINAL_METRICS if m not in ("reached_global_min", "epochs_to_fit", "train_epochs")]
    + [("git_commit", pa.string()), ("package_version", pa.string()), ("device", pa.string()),
       ("accelerator_type", pa.string())]
    + [("timestamp", pa.int64()), ("time_total_s", pa.float64())]  # the report's: Ray's clock and Tune's trial time
)
REPORT_FIELDS = ("timestamp", "time_total_s")


def list_trial_dirs(experiment_dir: str, parts: bool = True) -> list[str]:
    """The trial folders of a sweep (`trial_*`, and `part-*/trial_*` for a sweep run in parts
    unless `parts` is False), sorted."""
    folders = _folders(experiment_dir)
    base = experiment_dir.rstrip("/")
    trials = [f"{base}/{name}" for name in folders if name.startswith("trial_")]
    for part in (name for name in folders if parts and name.startswith(PART_PREFIX)):
        trials += [f"{base}/{part}/{name}" for name in _folders(f"{base}/{part}") if name.startswith("trial_")]
    return sorted(trials)


def list_parts(experiment_dir: str) -> list[str]:
    """The part folders (`part-*`) of a sweep run in parts, sorted; [] for a sweep run as one experiment."""
    return sorted(name for name in _folders(experiment_dir) if name.startswith(PART_PREFIX))


def stored_experiments(experiment_dir: str) -> list[int | None]:
    """The sweep's Tune experiments in its storage: None for its own folder when it holds trial
    folders (a sweep run as one experiment), then k for each part folder `part-<k>`."""
    folders = _folders(experiment_dir)
    own = [None] if any(name.startswith("trial_") for name in folders) else []
    digits = (name.removeprefix(PART_PREFIX) for name in folders if name.startswith(PART_PREFIX))
    return own + sorted(int(d) for d in digits if d.isdigit())


def _folders(path: str) -> list[str]:
    import pyarrow.fs

    fs, inner = filesystem(path)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(inner))
    except (FileNotFoundError, OSError):
        return []
    return [i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory]


def read_trial_params(trial_dir: str) -> dict[str, Any] | None:
    """The Tune config of a trial (params.json), or None if it was never started."""
    text = read_text(f"{trial_dir.rstrip('/')}/params.json")
    return json.loads(text) if text else None


def read_trial_error(trial_dir: str) -> str | None:
    return read_text(f"{trial_dir.rstrip('/')}/error.txt")


def _python_rows(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))  # json accepts the NaN that diverged trials report
        except json.JSONDecodeError:  # a line cut short by a kill mid-write
            continue
    return rows


# A report may batch rows under `records` (packs: one report per epoch); each row takes the
# report's timestamp and Tune's time_total_s.
_ROW_SCHEMA = pa.schema([f for f in RESULT_SCHEMA if f.name not in REPORT_FIELDS])
_FILE_SCHEMA = RESULT_SCHEMA.append(pa.field("records", pa.list_(pa.struct(list(_ROW_SCHEMA)))))


def _explode(table: pa.Table) -> pa.Table:
    """Top-level rows and batched `records` rows, as one table in RESULT_SCHEMA."""
    import pyarrow.compute as pc

    records = table.column("records")
    batched = pc.invert(pc.is_null(records))
    if not pc.any(batched).as_py():
        return table.select(RESULT_SCHEMA.names)
    plain = table.filter(pc.invert(batched)).select(RESULT_SCHEMA.names)
    lists = records.combine_chunks()
    rows = pa.Table.from_struct_array(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists)
    for name in REPORT_FIELDS:
        rows = rows.append_column(name, pc.take(table.column(name), parents))
    rows = rows.select(RESULT_SCHEMA.names)
    return pa.concat_tables([plain, rows.cast(RESULT_SCHEMA)])


def read_result_table(trial_dir: str) -> pa.Table:
    """The trial's rows as a table in RESULT_SCHEMA, de-duplicated by (member, step, final)."""
    return result_table(read_bytes(f"{trial_dir.rstrip('/')}/result.json"))


def result_table(data: bytes | None) -> pa.Table:
    """The rows of a result.json's contents (see read_result_table).

    After a restore Ray appends the replayed reports, so the last row of each step wins.
    pyarrow's JSON reader does the common case fast; files with NaN or a torn last line go
    through Python's json.
    """
    import pyarrow.json as pj

    if not data:
        return RESULT_SCHEMA.empty_table()
    try:
        table = pj.read_json(
            pa.BufferReader(data),
            # one file is small: parse it on this thread; callers parallelise across files
            read_options=pj.ReadOptions(use_threads=False, block_size=len(data) + 1),
            parse_options=pj.ParseOptions(explicit_schema=_FILE_SCHEMA, unexpected_field_behavior="ignore"),
        )
        table = _explode(table)
    except pa.ArrowInvalid:
        def clean(row: dict[str, Any]) -> dict[str, Any]:
            return {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items() if k in RESULT_SCHEMA.names}

        rows = []
        for r in _python_rows(data.decode()):
            report = {name: r.get(name) for name in REPORT_FIELDS}
            rows += [clean({**report, **row}) for row in r["records"]] if r.get("records") else [clean(r)]
        table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    return _dedupe(table)


def _dedupe(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table
    keys = list(zip(table.column(MEMBER_KEY).to_pylist(), table.column("step").to_pylist(),
                    table.column(FINAL_KEY).to_pylist()))
    last = {k: i for i, k in enumerate(keys)}
    if len(last) == table.num_rows:
        return table
    keep = sorted(last.values(), key=lambda i: (keys[i][0] or 0, keys[i][1] or 0, bool(keys[i][2])))
    return table.take(pa.array(keep))


def member_table(table: pa.Table, member: int) -> pa.Table:
    """The rows of one pack member (an unpacked trial's rows are member 0)."""
    import pyarrow.compute as pc

    return table.filter(pc.equal(table.column(MEMBER_KEY).fill_null(0), member))


def read_result_rows(trial_dir: str, member: int | None = None) -> list[dict[str, Any]]:
    """The trial's reports as dicts (see read_result_table), of one member if given; [] if none yet."""
    table = read_result_table(trial_dir)
    return (table if member is None else member_table(table, member)).to_pylist()


def _started(experiment_dir: str, parts: bool = True):
    """(folder, member values, final rows by member) of every started Ray trial of a sweep."""
    for trial_dir in list_trial_dirs(experiment_dir, parts):
        params = read_trial_params(trial_dir)
        if params is not None:
            yield trial_dir, member_values(params), final_rows(read_result_rows(trial_dir))


def stored_trials(experiment_dir: str, parts: bool = True) -> list[dict[str, Any]]:
    """Every started trial of a sweep (pack members one by one; its parts' too unless `parts` is
    False): its folder, member index, config values and whether its final report is stored."""
    return [{"trial_dir": trial_dir, "member": m, "values": v, "finished": m in finals}
            for trial_dir, members, finals in _started(experiment_dir, parts) for m, v in enumerate(members)]


def stored_finals(experiment_dir: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every trial of a sweep whose final report is stored: its config values and that report."""
    return [(members[m], row) for _, members, finals in _started(experiment_dir) for m, row in finals.items()]
