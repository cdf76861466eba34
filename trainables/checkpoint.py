"""Trial checkpoints: enough state to resume a killed trial and finish with the same result."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

FILENAME = "trial_state.pt"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_state(state: dict[str, Any], directory: str | Path) -> Path:
    path = Path(directory) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    tmp.replace(path)  # a kill mid-write leaves the previous checkpoint intact
    return path


def load_state(directory: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """Load a checkpoint written by `save_state` for this same config.

    weights_only=True: a checkpoint holds tensors and primitives only, so a tampered file
    cannot run code; it is refused instead.
    """
    path = Path(directory) / FILENAME
    if not path.exists():
        raise CheckpointError(f"no trial checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"refusing checkpoint {path}: it is not a plain tensor/primitive checkpoint ({err}). "
            f"Delete it to restart the trial from scratch."
        ) from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format')}, expected {FORMAT}")
    if state.get("config") != config:
        raise CheckpointError(f"checkpoint {path} belongs to a different trial config; delete it or fix the config")
    return state
