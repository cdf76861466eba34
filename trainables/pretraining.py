"""Shared label-noise pretraining: run each distinct pretraining once, snapshot every duration.

In a phase-diagram sweep every clean-phase setting with the same seed, model and pretraining
config starts from the same weights, and a shorter pretraining is an exact prefix of a longer
one (the pretraining and label streams do not depend on the clean phase, see
`trainables.seeding`). So one run to the longest duration, snapshotted at each duration the
sweep asks for, replaces one pretraining per trial. A trial started from a snapshot resumes
`run_trial` at the stage boundary, so its metrics are exactly those of pretraining by itself.

A shared pretraining is one `PretrainJob`, content-addressed by `pretrain_key`: the config
fields pretraining reads, not the device. The planner cannot know which device type a worker
resolves (`device: auto` on a node whose GPUs have no CUDA runs on CPU), so each snapshot
records the device type it was made on, and a trial loads only one made on its own (results
differ between CPU and GPU). A trial that finds no such snapshot simply pretrains by itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from dataclasses import dataclass, field
from typing import Any

from .config import TrialConfig, make_config
from .uri import filesystem

FORMAT = 2  # 2: keys leave the device out; each snapshot records its device type
FAILED_FILE = "failed.json"  # beside a pretraining's snapshots when its owner trial could not make them
# Everything the pretraining stage depends on; the clean-phase fields are deliberately absent.
PRETRAIN_FIELDS = ("dataset", "model", "width", "depth", "seed", "label_noise", "pretrain_copies",
                   "pretrain_zero_out", "pretrain_lr", "pretrain_momentum", "batch_size", "torch_threads")


def pretrain_fields(cfg: TrialConfig) -> dict[str, Any]:
    values = cfg.to_dict()
    return {**{name: values[name] for name in PRETRAIN_FIELDS}, **cfg.speed_options}


def pretrain_key(cfg: TrialConfig) -> str:
    """Content address of a pretraining: equal keys mean bit-identical runs on one device type."""
    identity = {**pretrain_fields(cfg), "format": FORMAT}
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PretrainJob:
    """One shared pretraining: any member trial's config values (the clean-phase fields are
    ignored), the durations it snapshots, and how many trials start from it (0: not counted)."""

    values: dict[str, Any]
    durations: tuple[int, ...]
    trials: int = 0
    config: TrialConfig = field(init=False, repr=False, compare=False)  # pretrains to the longest duration
    key: str = field(init=False)

    def __post_init__(self):
        durations = tuple(sorted({int(d) for d in self.durations if int(d) > 0}))
        config = make_config({**self.values, "pretrain_epochs": durations[-1]})
        object.__setattr__(self, "durations", durations)
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "key", pretrain_key(config))

    def to_tune(self) -> list:
        """As a Tune trial config carries it (primitives only): [values, durations]."""
        return [dict(self.values), list(self.durations)]

    @classmethod
    def from_tune(cls, item: list) -> "PretrainJob":
        values, durations = item
        return cls(values, tuple(durations))


class SnapshotStore:
    """Pretraining snapshots under one folder or URI: `<key>/epochs_<n>.pt`, written atomically."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self._fs, self._inner = filesystem(self.root)

    def _path(self, key: str, epochs: int) -> str:
        return f"{self._inner}/{key}/epochs_{epochs:05d}.pt"

    def has(self, key: str, epochs: int) -> bool:
        import pyarrow.fs

        return self._fs.get_file_info(self._path(key, epochs)).type == pyarrow.fs.FileType.File

    def missing(self, job: PretrainJob) -> list[int]:
        """The durations of `job` that have no snapshot yet (none: the job is done)."""
        return [d for d in job.durations if not self.has(job.key, d)]

    def save(self, key: str, epochs: int, snapshot: dict[str, Any], fields: dict[str, Any]) -> None:
        """`snapshot` holds the model, history, elapsed_s, diverged and the device type it was made on."""
        import torch

        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "key": key, "pretrain_epochs": epochs, **snapshot}, buffer)
        folder = f"{self._inner}/{key}"
        self._fs.create_dir(folder, recursive=True)
        with self._fs.open_output_stream(f"{folder}/pretraining.json") as f:  # what the key stands for
            f.write(json.dumps(fields, indent=2, sort_keys=True).encode())
        final = self._path(key, epochs)
        tmp = f"{final}.tmp"
        with self._fs.open_output_stream(tmp) as f:
            f.write(buffer.getvalue())
        self._fs.move(tmp, final)  # a reader never sees half a snapshot

    def record_failure(self, key: str, error: str) -> None:
        """An owner trial could not make this pretraining: its trials stop waiting for it."""
        folder = f"{self._inner}/{key}"
        self._fs.create_dir(folder, recursive=True)
        with self._fs.open_output_stream(f"{folder}/{FAILED_FILE}") as f:
            f.write(json.dumps({"error": error}).encode())

    def failure(self, key: str) -> str | None:
        """Why this pretraining failed, if an owner recorded that it did."""
        try:
            with self._fs.open_input_stream(f"{self._inner}/{key}/{FAILED_FILE}") as f:
                return json.loads(f.read())["error"]
        except (FileNotFoundError, OSError, ValueError, KeyError):
            return None

    def load(self, key: str, epochs: int, device_type: str) -> dict[str, Any] | None:
        """The snapshot made on `device_type`, or None when there is none (or it is unreadable, or
        made on another device type: the trial then pretrains)."""
        import torch

        try:
            with self._fs.open_input_stream(self._path(key, epochs)) as f:
                data = f.read()
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (FileNotFoundError, OSError, pickle.UnpicklingError, RuntimeError, EOFError, ValueError):
            return None
        if (state.get("format") != FORMAT or state.get("key") != key or state.get("pretrain_epochs") != epochs
                or state.get("device") != device_type):
            return None
        return state


class _JobRun:
    """One shared pretraining as it runs here: the durations still missing, and saving them."""

    def __init__(self, job: PretrainJob, store: SnapshotStore):
        from .stages import resolve_device

        self.job, self.store = job, store
        self.device = resolve_device(job.config.device).type
        self.missing = store.missing(job)
        self.saved: list[int] = []
        self.epochs_run = 0

    def at_epoch(self, record: dict[str, Any], state) -> None:
        epoch, done = record["epoch"], record["diverged"]
        due = [d for d in self.missing if d == epoch or (done and d > epoch)]  # a diverged run ends every longer one
        if not due:
            return
        now = state()
        shared = {"model": now["model"], "history": list(now["history"]), "elapsed_s": now["elapsed_s"],
                  "diverged": done, "device": self.device}
        fields = {**pretrain_fields(self.job.config), "device": self.device}
        for d in due:
            self.store.save(self.job.key, d, shared, fields)
            self.saved.append(d)

    def report(self) -> dict[str, Any]:
        return {"key": self.job.key, "saved": self.saved, "epochs_run": self.epochs_run}


def run_shared_pretraining(job: PretrainJob, store_root: str) -> dict[str, Any]:
    """Pretrain once to the longest of the job's durations, saving a snapshot at each; skip what
    exists. Returns what was done, for the sweep's log."""
    from .trial import run_trial

    run = _JobRun(job, SnapshotStore(store_root))
    if run.missing:
        run.epochs_run = len(run_trial(job.config, on_epoch=run.at_epoch, pretrain_only=True).history)
    return run.report()


def run_shared_pretrainings(jobs: list[PretrainJob], store_root: str) -> list[dict[str, Any]]:
    """Several shared pretrainings of one architecture, trained together as one pack; their
    snapshots equal those `run_shared_pretraining` saves, bit for bit (MLPs, tested)."""
    from .packed import run_pretraining_pack

    store = SnapshotStore(store_root)
    runs = [_JobRun(job, store) for job in jobs]
    todo = [r for r in runs if r.missing]
    if todo:
        histories = run_pretraining_pack([r.job.config for r in todo],
                                         lambda i, record, state: todo[i].at_epoch(record, state))
        for run, history in zip(todo, histories):
            run.epochs_run = len(history)
    return [r.report() for r in runs]


def run_owned_pretrainings(groups: list[list[PretrainJob]], store_root: str) -> list[str]:
    """An owner trial's shared pretrainings (see `sweeps.search.snapshot_gate`): each group of jobs as
    one pack (one job: alone). A group that raises is recorded as failed in the store, so the
    trials waiting for it pretrain by themselves, as the owner then does; returns the errors."""
    import traceback

    errors = []
    for group in groups:
        try:
            if len(group) == 1:
                run_shared_pretraining(group[0], store_root)
            else:
                run_shared_pretrainings(group, store_root)
        except Exception as err:
            text = f"{type(err).__name__}: {err}"
            traceback.print_exc()  # into the trial's log, beside its own output
            store = SnapshotStore(store_root)
            for job in group:
                store.record_failure(job.key, text)
            errors.append(text)
    return errors


def resume_state_from_snapshot(cfg: TrialConfig, store_root: str, device_type: str) -> dict[str, Any] | None:
    """This trial's start at the end of its pretraining, if a snapshot exists: a `TrialState` in
    its stored form, as `run_trial` and `run_pack` take it."""
    from .state import Position, TrialState

    if cfg.pretrain_epochs == 0:
        return None
    snap = SnapshotStore(store_root).load(pretrain_key(cfg), cfg.pretrain_epochs, device_type)
    if snap is None:
        return None
    # state_stage 0, no optimizer: the clean stage builds its own optimizer and stream
    return TrialState(cfg.to_dict(), Position.after_pretraining(snap["diverged"]), snap["model"], snap["history"],
                      snap["elapsed_s"]).stored()
