"""Deterministic names for trials and cells, shared by the MLflow logging, its audit and the
exports: the same config always gets the same key, across restarts and machines."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable

from trainables.config import TrialConfig, make_config


def _digest(values: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrialKeys:
    trial: str  # `trial_key`
    cell: str  # `cell_key`


def trial_key(values: dict[str, Any]) -> str:
    """Key of the full, resolved trial config (seed included)."""
    return keys_of(values).trial


def cell_key(values: dict[str, Any]) -> str:
    """Key of the config without its seed: the trials that differ only by seed share it."""
    return keys_of(values).cell


def keys_of(values: dict[str, Any]) -> TrialKeys:
    """A trial's key and its cell's, from one config built."""
    return config_keys(make_config(values))


def config_keys(cfg: TrialConfig) -> TrialKeys:
    resolved = cfg.to_dict()
    trial = _digest(resolved)
    resolved.pop("seed")
    return TrialKeys(trial, _digest(resolved))


class KnownKeys:
    """The keys of trials made once (a grid's plan), found again by their values without building
    their configs; values it does not hold get theirs made."""

    def __init__(self, known: Iterable[tuple[dict[str, Any], TrialKeys]] = ()):
        self._known = {_canonical(values): keys for values, keys in known}

    def of(self, values: dict[str, Any]) -> TrialKeys:
        return self._known.get(_canonical(values)) or keys_of(values)


def _canonical(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def member_trial_id(ray_trial_id: str, member: int, pack_size: int) -> str:
    """A trial's id in the exports and MLflow: Ray's id, plus the member index when packed."""
    return ray_trial_id if pack_size == 1 else f"{ray_trial_id}-{member:02d}"
