"""Local (or NFS) sweep storage that a driver killed at any moment leaves restorable.

Ray Tune copies its experiment state from the driver's staging folder into the storage in a
background thread, and deletes a trial's old checkpoints as soon as it registers a new one.
Two ways a SIGKILLed driver then loses trials, both provoked by `benchmarks/chaos.py`:

- **A half-written state file.** Ray rewrites `experiment_state-*.json` in place; killed during
  the copy, it is left empty and `Tuner.restore` starts the experiment over.
  Here each file is written under a hidden temporary name and renamed when closed, as an
  object store (s3://, gs://) never shows a half-written object.
- **A state that names a deleted checkpoint.** Ray forces a state copy every `num_to_keep`
  checkpoints of a trial, after it has deleted the checkpoint the previous copy names; killed
  during that copy, the storage keeps a state whose checkpoint is gone, and the trial fails
  on every retry. Here a checkpoint is deleted only once the state has
  been copied twice since Ray asked: the second copy began after the first had ended, so the
  state it stores was saved after the deletion and names a newer checkpoint.

The pending deletions live in the driver process (where Ray deletes checkpoints and copies the
state); ones a killed driver never carried out are swept by `prune_unreferenced_checkpoints`.
"""

from __future__ import annotations

import fnmatch
import io
import logging
import os
import shutil
import threading
import uuid
from collections import Counter
from pathlib import Path

import pyarrow
import pyarrow.fs

from trainables.uri import is_uri

log = logging.getLogger(__name__)

STATE_FILES = "experiment_state-*.json"  # Tune's experiment state, one file per driver session
STATE_COPIES_BEFORE_DELETE = 2


class _DeferredDeletes:
    """Checkpoint folders Ray deleted, kept until the state has been stored twice since."""

    def __init__(self):
        self._lock = threading.Lock()
        self._state_writes: dict[str, Counter[str]] = {}  # experiment folder -> state file name -> writes
        self._pending: list[tuple[str, str, str | None, int]] = []  # path, experiment, newest state, its writes

    def _newest(self, experiment: str) -> tuple[str | None, int]:
        writes = self._state_writes.get(experiment, Counter())
        name = max(writes, default=None)  # Tune restores the newest, by its timestamped name
        return name, writes[name] if name else 0

    def request(self, checkpoint: str) -> None:
        experiment = os.path.dirname(os.path.dirname(os.path.normpath(checkpoint)))  # <exp>/<trial>/checkpoint_*
        with self._lock:
            self._pending.append((checkpoint, experiment, *self._newest(experiment)))

    def state_written(self, state_file: str) -> None:
        experiment, name = os.path.split(os.path.normpath(state_file))
        with self._lock:
            self._state_writes.setdefault(experiment, Counter())[name] += 1
            newest, writes = self._newest(experiment)
            # writes of the newest state file since the request (all of them if it is newer)
            due = [p for p in self._pending if p[1] == experiment
                   and writes - (p[3] if p[2] == newest else 0) >= STATE_COPIES_BEFORE_DELETE]
            self._pending = [p for p in self._pending if p not in due]
        _remove(due)

    def flush(self, experiment: str) -> int:
        """Carry out an experiment's pending deletions (it has ended and its state is stored)."""
        experiment = os.path.normpath(experiment)
        with self._lock:
            due = [p for p in self._pending if p[1] == experiment]
            self._pending = [p for p in self._pending if p[1] != experiment]
        _remove(due)
        return len(due)


def _remove(deletions: list[tuple]) -> None:
    for folder, *_ in deletions:
        shutil.rmtree(folder, ignore_errors=True)


DEFERRED_DELETES = _DeferredDeletes()


class _RenameOnClose(io.FileIO):
    """Writes `.<name>.tmp-<id>` (pruned at the sweep's end) beside `path`; closing moves it onto `path` (atomic on POSIX)."""

    def __init__(self, path: str):
        folder, name = os.path.split(path)
        self.final = path
        self.tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        super().__init__(self.tmp, "wb")

    def close(self) -> None:
        if self.closed:
            return
        self.flush()  # no fsync: this guards against a killed process, not a lost machine
        super().close()
        os.replace(self.tmp, self.final)
        if fnmatch.fnmatch(os.path.basename(self.final), STATE_FILES):
            DEFERRED_DELETES.state_written(self.final)


def _is_checkpoint(path: str) -> bool:
    return os.path.basename(path.rstrip("/")).startswith("checkpoint_")


class SafeLocalHandler(pyarrow.fs.FileSystemHandler):
    """A pyarrow LocalFileSystem, except that written files appear only once complete and
    checkpoint folders are deleted only once no stored state can name them."""

    def __init__(self):
        self._local = pyarrow.fs.LocalFileSystem()

    def __eq__(self, other) -> bool:
        return isinstance(other, SafeLocalHandler)

    def __reduce__(self):  # sent to Ray workers with the run config
        return (SafeLocalHandler, ())

    def get_type_name(self) -> str:
        return "minima-safe-local"

    def normalize_path(self, path: str) -> str:
        return self._local.normalize_path(path)

    def get_file_info(self, paths):
        return self._local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        if _is_checkpoint(path):
            DEFERRED_DELETES.request(path)
        else:
            self._local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the root folder")

    def delete_file(self, path: str) -> None:
        self._local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self._local.open_input_stream(src) as source, self.open_output_stream(dest, None) as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)

    def open_input_stream(self, path: str):
        return self._local.open_input_stream(path)

    def open_input_file(self, path: str):
        return self._local.open_input_file(path)

    def open_output_stream(self, path: str, metadata):
        return pyarrow.PythonFile(_RenameOnClose(path), mode="w")

    def open_append_stream(self, path: str, metadata):
        return self._local.open_append_stream(path)


def storage_filesystem(storage: str) -> pyarrow.fs.FileSystem | None:
    """The filesystem Ray should write a sweep's storage with: ours for local paths, Ray's own
    choice (None) for object-store URIs."""
    if is_uri(storage):
        return None
    return pyarrow.fs.PyFileSystem(SafeLocalHandler())


def prune_unreferenced_checkpoints(experiment: str, results) -> int:
    """Delete the checkpoint folders Ray no longer keeps, once `Tuner.fit` has returned (its
    state is stored): deletions still pending, and ones a killed driver never carried out;
    and the temporary files of writers killed mid-file."""
    if is_uri(experiment):
        return 0
    DEFERRED_DELETES.flush(experiment)
    removed = 0
    for partial in Path(experiment).rglob(".*.tmp-*"):
        partial.unlink(missing_ok=True)
    for result in results:
        if result.path is None:
            continue
        kept = {os.path.normpath(c.path) for c, _ in (result.best_checkpoints or [])}
        if not kept:  # nothing to resume from otherwise: leave the folder as it is
            continue
        for folder in Path(result.path).glob("checkpoint_*"):
            if folder.is_dir() and os.path.normpath(str(folder)) not in kept:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    return removed
