"""Checkpoint files: enough state to resume a killed trial or pack and finish with the same result.

A lone trial's checkpoint is `trial_state.pt` (a `TrialState`), a pack's `pack_state.pt` (a
`PackState`); each holds its state's stored form, and the file present says which one a
checkpoint folder resumes.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .state import PACK_FORMAT, PackState, TrialState

FILENAME = "trial_state.pt"
FORMAT = 1
PACK_FILE = "pack_state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_state(state: TrialState | dict[str, Any], directory: str | Path) -> Path:
    """A lone trial's state, typed or stored."""
    stored = state.stored() if isinstance(state, TrialState) else state
    return _save({"format": FORMAT, **stored}, Path(directory) / FILENAME)


def save_pack_state(state: PackState | dict[str, Any], directory: str | Path) -> Path:
    """A pack's state, typed or stored (the stored form carries its format)."""
    return _save(state.stored() if isinstance(state, PackState) else state, Path(directory) / PACK_FILE)


def load_state(directory: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """Load a checkpoint written by `save_state` for this same config (a `TrialState`'s stored form)."""
    path = Path(directory) / FILENAME
    if not path.exists():
        raise CheckpointError(f"no trial checkpoint at {path}")
    state = _load(path)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format')}, expected {FORMAT}")
    if state.get("config") != config:
        raise CheckpointError(f"checkpoint {path} belongs to a different trial config; delete it or fix the config")
    return state


def load_pack_state(directory: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_pack_state` (a `PackState`'s stored form); `run_pack`
    checks that it holds its members."""
    path = Path(directory) / PACK_FILE
    state = _load(path)
    if state.get("format") != PACK_FORMAT:
        raise CheckpointError(f"pack checkpoint {path} has format {state.get('format')}, expected {PACK_FORMAT}")
    return state


def load_checkpoint(directory: str | Path, configs: list[dict[str, Any]]) -> TrialState | PackState:
    """The state in a checkpoint folder of a Ray trial whose members have these configs: a
    pack's where its file is there (a pack of one included), else a lone trial's."""
    if (Path(directory) / PACK_FILE).exists():
        return PackState.of(load_pack_state(directory))
    if len(configs) != 1:
        raise CheckpointError(f"no pack checkpoint at {Path(directory) / PACK_FILE} for {len(configs)} members")
    return TrialState.of(load_state(directory, configs[0]))


def _save(stored: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(stored, tmp)
    tmp.replace(path)  # a kill mid-write leaves the previous checkpoint intact
    return path


def _load(path: Path) -> dict[str, Any]:
    """weights_only=True: a checkpoint holds tensors and primitives only, so a tampered file
    cannot run code; it is refused instead."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"refusing checkpoint {path}: it is not a plain tensor/primitive checkpoint ({err}). "
            f"Delete it to restart the trial from scratch."
        ) from None
