"""A sweep's folder in its storage: where it is, and the files we keep beside Ray's experiment
state (the resolved sweep, how it was started, which parts are done, the last MLflow check)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import stat
import time
import uuid
from pathlib import Path

from trainables.uri import filesystem, is_uri, read_text

from ..design.spec import SweepError, SweepSpec, parse_sweep
from .costs import HeldResources

SPEC_FILE = "minima_sweep.json"  # the resolved sweep, stored beside Ray's experiment state
RUN_FILE = "minima_run.json"  # how it was started (when, logged to MLflow or not, cut into parts or not)
MLFLOW_CHECK_FILE = "minima_mlflow.json"  # the last check of MLflow against this storage, and what it found
PART_PREFIX = "part-"  # a sweep in parts: part k's Tune experiment is the folder part-<k, 3 digits>
PART_DONE_FILE = "minima_part_done.json"  # in a part whose every trial ended without an error: its counts
OWN = "."  # the Tune experiment in the sweep's own folder (a sweep run as one experiment), among its parts


def storage_root(storage: str) -> str:
    """Absolute local path, or the URI unchanged (Ray needs absolute paths)."""
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def experiment_path(spec: SweepSpec) -> str:
    return f"{storage_root(spec.storage).rstrip('/')}/{spec.name}"


def part_name(index: int) -> str:
    """Part `index`'s Tune experiment name: its folder inside the sweep's."""
    return f"{PART_PREFIX}{index:03d}"


def part_of(trial_dir: str) -> int | None:
    """The part a Ray trial's folder is in (`<sweep>/part-<k>/trial_*`), or None outside parts."""
    folders = trial_dir.rstrip("/").split("/")
    parent = folders[-2] if len(folders) > 1 else ""
    digits = parent.removeprefix(PART_PREFIX)
    return int(digits) if digits != parent and digits.isdigit() else None


def part_path(spec: SweepSpec, index: int) -> str:
    """Part `index`'s Tune experiment, inside the sweep's folder (beside its spec and snapshots)."""
    return experiment_folder(experiment_path(spec), index)


def experiment_folder(experiment_dir: str, part: int | None) -> str:
    """The folder of a sweep's Tune experiment: part `part`'s, or (None) the sweep's own."""
    base = experiment_dir.rstrip("/")
    return base if part is None else f"{base}/{part_name(part)}"


def mark_part_done(part_dir: str, counts: dict[str, int]) -> None:
    """Written once a part's every trial ended without an error: a resume skips it."""
    fs, path = filesystem(f"{part_dir.rstrip('/')}/{PART_DONE_FILE}")
    with fs.open_output_stream(path) as f:
        f.write(json.dumps({"counts": counts}).encode())


def part_done(part_dir: str) -> dict[str, int] | None:
    """A finished part's counts per status, or None when it has not finished."""
    text = read_text(f"{part_dir.rstrip('/')}/{PART_DONE_FILE}")
    return json.loads(text)["counts"] if text else None


def snapshot_store(spec: SweepSpec) -> str:
    """Where a sweep's shared pretraining snapshots live: beside its trials, in its storage."""
    return f"{experiment_path(spec)}/pretrained"


def check_storage_writable(storage: str) -> None:
    """Fail now, not mid-sweep, when results could not be written."""
    if is_uri(storage):
        try:
            fs, path = filesystem(storage)
            fs.create_dir(path, recursive=True)
        except Exception as err:
            raise SweepError(f"storage: cannot write to {storage} ({err}); check the URI and credentials") from None
        return
    root = Path(storage_root(storage))
    probe = root / f".minima-write-test-{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0" * 1024 * 1024)  # a full disk fails here, not at the first checkpoint
    except OSError as err:
        raise SweepError(f"storage: cannot write to {root} ({err.strerror}); choose a writable folder with free space") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def check_only_yours(path: str) -> None:
    """Refuse to resume from a local sweep folder that anyone but this user could have written:
    Tune unpickles its stored state (tuner.pkl, the experiment state), so a planted file runs
    code as whoever resumes. An object store's folder is guarded by its bucket's access rules
    instead (docs/cluster.md)."""
    if is_uri(path):
        return
    me = os.getuid()
    every = itertools.chain([path], (os.path.join(folder, name) for folder, dirs, files in os.walk(path)
                                     for name in dirs + files))
    for where in every:  # each path once: a folder is an entry of its parent, the root alone is not
        info = os.lstat(where)
        who = ("another user owns it" if info.st_uid != me else
               "it links elsewhere" if stat.S_ISLNK(info.st_mode) else
               "others may write it" if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) else None)
        if who is not None:
            raise SweepError(
                f"storage: {where}: {who}, and resuming unpickles the sweep's stored state, which "
                f"would run whatever code was put there. Resume a copy only you can write "
                f"(cp -r, then chmod -R go-w on the copy) once you trust its contents")


def write_spec(spec: SweepSpec, log_to_mlflow: bool, parts: int = 1, ray_trials_per_part: int | None = None) -> None:
    """The resolved spec and the run file; a sweep cut into parts records how, so a resume cuts
    it the same way."""
    fs, root = filesystem(experiment_path(spec))
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{SPEC_FILE}") as f:
        f.write(json.dumps(spec.model_dump(), indent=2).encode())
    with fs.open_output_stream(f"{root}/{RUN_FILE}") as f:
        settings = {"log_to_mlflow": log_to_mlflow, "json_logger_only": True, "started": time.time()}
        if ray_trials_per_part:
            settings.update(parts=parts, ray_trials_per_part=ray_trials_per_part)
        f.write(json.dumps(settings).encode())


def list_sweeps(storage: str) -> list[str]:
    """The names of the sweeps stored under `storage` (folders holding a stored spec), sorted."""
    import pyarrow.fs

    root = storage_root(storage).rstrip("/")
    fs, inner = filesystem(root)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(inner))
        folders = [i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory]
        specs = fs.get_file_info([f"{inner}/{name}/{SPEC_FILE}" for name in folders])
    except FileNotFoundError:
        raise SweepError(f"storage: {root} does not exist; pass --storage where the sweeps ran") from None
    except OSError as err:
        raise SweepError(f"storage: cannot read {root} ({err}); check the path or URI and its credentials") from None
    return sorted(name for name, info in zip(folders, specs) if info.type == pyarrow.fs.FileType.File)


def add_extension(spec: SweepSpec, record: dict) -> None:
    """Record an extension of a stored sweep (`record`: what it extends and where its parts are),
    then store `spec`, the extended sweep. The record holds the spec too: a driver killed between
    the two writes leaves a record that `extended_spec` finds again."""
    fs, root = filesystem(experiment_path(spec))
    settings = run_settings(spec)
    settings["extensions"] = [*settings.get("extensions", []), {**record, "spec": spec.model_dump()}]
    with fs.open_output_stream(f"{root}/{RUN_FILE}") as f:
        f.write(json.dumps(settings).encode())
    with fs.open_output_stream(f"{root}/{SPEC_FILE}") as f:
        f.write(json.dumps(spec.model_dump(), indent=2).encode())


def extensions(spec: SweepSpec) -> list[dict]:
    """The stored sweep's extensions, oldest first (see `add_extension`)."""
    return run_settings(spec).get("extensions", [])


def held_resources(spec: SweepSpec) -> HeldResources:
    """What each Ray trial of the stored sweep held: its first run's resources, and each
    extension's for the parts it made."""
    def held(data: dict) -> tuple[float, float]:
        return float(data["resources"]["cpu"]), float(data["resources"]["gpu"])

    records = extensions(spec)
    first = held(records[0]["extends"]) if records else (spec.resources.cpu, spec.resources.gpu)
    parts = {part_name(index): (k, held(record["spec"])) for k, record in enumerate(records, start=1)
             for index in range(record["first_part"], record["first_part"] + record["parts"])}
    return HeldResources(first, parts)


def read_spec(name: str, storage: str) -> SweepSpec:
    path = f"{storage_root(storage).rstrip('/')}/{name}/{SPEC_FILE}"
    text = read_text(path)
    if text is None:
        raise SweepError(f"no sweep named {name!r} under {storage_root(storage)} (looked for {path}); "
                         f"pass --storage where it ran")
    # where it was found is its storage now: a storage moved or reached from another folder
    # resumes and exports from where it is, not from the path it was started with
    stored = json.loads(text)
    runs = read_text(f"{storage_root(storage).rstrip('/')}/{name}/{RUN_FILE}")
    latest = json.loads(runs).get("extensions", [{}])[-1].get("spec") if runs else None
    return parse_sweep({**(latest or stored), "storage": storage}, path)


def run_settings(spec: SweepSpec) -> dict:
    text = read_text(f"{experiment_path(spec)}/{RUN_FILE}")
    return json.loads(text) if text else {}


def logs_to_mlflow(spec: SweepSpec) -> bool:
    return bool(run_settings(spec).get("log_to_mlflow"))


def write_mlflow_check(experiment_dir: str, check: dict) -> None:
    """What the last check of MLflow against this storage found (`tracking.mlflow_audit`), kept
    beside the sweep so `minima status` can say it without the tracking server."""
    fs, path = filesystem(f"{experiment_dir.rstrip('/')}/{MLFLOW_CHECK_FILE}")
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(check).encode())


def read_mlflow_check(experiment_dir: str) -> dict | None:
    text = read_text(f"{experiment_dir.rstrip('/')}/{MLFLOW_CHECK_FILE}")
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:  # cut short by a kill: as if never checked
        return None
