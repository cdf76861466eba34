"""Deterministic names for trials and cells, shared by the MLflow logging, its audit and the
exports: the same config always gets the same key, across restarts and machines."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from trainables.config import TrialConfig, make_config


def _digest(values: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def trial_key(values: dict[str, Any]) -> str:
    """Key of the full, resolved trial config (seed included)."""
    return config_key(make_config(values))


def config_key(cfg: TrialConfig) -> str:
    """`trial_key` of a config already made."""
    return _digest(cfg.to_dict())


def cell_key(values: dict[str, Any]) -> str:
    """Key of the config without its seed: the trials that differ only by seed share it."""
    resolved = make_config(values).to_dict()
    resolved.pop("seed")
    return _digest(resolved)


def member_trial_id(ray_trial_id: str, member: int, pack_size: int) -> str:
    """A trial's id in the exports and MLflow: Ray's id, plus the member index when packed."""
    return ray_trial_id if pack_size == 1 else f"{ray_trial_id}-{member:02d}"
