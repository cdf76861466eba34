"""Grid trials handed to Ray Tune as their shared pretraining snapshots are saved.

A trial that needs a snapshot must not start before it exists (it would pretrain by itself,
repeating the shared work), nor wait inside Ray holding a slot. So Tune gets a sharing grid
sweep's trials from this `Searcher`. Each shared pretraining runs inside the first trial that
needs it, its *owner*, handed out first: the owner's config names the pretrainings it runs
(`_pretrain`) before starting from its own snapshots, in the process and slot it already has
(a separate Ray task would import torch again and leave the slot idle until it ended). Other
trials are handed out as soon as all their snapshots are saved, or as soon as their
pretraining's owner has ended or given up without them (they then pretrain by themselves).
Tune saves and restores this state with the experiment, so a resumed sweep hands out only the
rest.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from ray.tune.search import Searcher

from trainables.tune_trainable import PRETRAIN_KEY

from ..design.plan import Need

POLL_S = 1.0  # at most this often the storage is asked about snapshots not yet seen


class SnapshotGate(Searcher):
    def __init__(self, configs: list[dict[str, Any]], needs: list[list[Need]], store: str,
                 jobs: dict[str, list], packable: set[str] = frozenset()):
        """`configs`: the Ray trials' configs, in grid order; `needs[i]`: the snapshots configs[i]
        starts from; `jobs`: the shared pretraining of each key as a Tune config carries it
        (`PretrainJob.to_tune`); `packable`: the keys an owner may pretrain together as one pack
        (those of one trial share an architecture)."""
        super().__init__()
        order = sorted(range(len(configs)), key=lambda i: max((d for _, d in needs[i]), default=0))
        self.configs = [configs[i] for i in order]  # shortest pretraining first: its snapshot comes first
        self.needs = [sorted({tuple(n) for n in needs[i]}) for i in order]
        self.store = store
        self.jobs = {key: (dict(values), list(durations)) for key, (values, durations) in jobs.items()}
        self.packable = set(packable)
        self.issued: list[int] = []
        self.owners: dict[str, int] = {}  # pretraining key -> the config that runs it
        self.ended: set[str] = set()  # keys whose owner ended or gave up: their trials stop waiting
        self.owner_trials: dict[str, int] = {}  # an owner's Tune trial id -> its config index
        self._saved: set[Need] = set()
        self._checked_at = -math.inf

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the trials are the grid's; the param space only holds constants

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        issued = set(self.issued)
        waiting = [i for i in range(len(self.configs)) if i not in issued]
        if not waiting:
            return Searcher.FINISHED
        self._look_for_snapshots(waiting)
        choice = self._next_owner(waiting)
        if choice is not None:
            i, keys = choice
            self.owners.update({key: i for key in keys})
            packed = [k for k in keys if k in self.packable]
            groups = ([packed] if packed else []) + [[k] for k in keys if k not in self.packable]
            return self._issue(trial_id, i, {PRETRAIN_KEY: [[list(self.jobs[k]) for k in g] for g in groups]})
        for i in waiting:
            if all(self._ready(n) for n in self.needs[i]):
                return self._issue(trial_id, i)
        return None  # every waiting trial needs a snapshot still being made: Tune asks again

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """An owner that ended (after Tune's retries) releases the trials still waiting on it."""
        if trial_id in self.owner_trials:
            self.ended |= {key for key, owner in self.owners.items() if owner == self.owner_trials[trial_id]}

    def _next_owner(self, waiting: list[int]) -> tuple[int, list[str]] | None:
        """The first waiting trial that can run the pretrainings nobody runs yet, with their keys:
        one whose every other snapshot is ready (an owner must never wait once it has a slot)."""
        for i in waiting:
            unclaimed = sorted({k for k, d in self.needs[i] if not self._ready((k, d)) and k not in self.owners})
            if unclaimed and all(self._ready(n) or n[0] in unclaimed for n in self.needs[i]):
                return i, unclaimed
        return None

    def _ready(self, need: Need) -> bool:
        return need in self._saved or need[0] in self.ended

    def _issue(self, trial_id: str, i: int, owns: dict[str, Any] | None = None) -> dict[str, Any]:
        self.issued.append(i)
        if owns:
            self.owner_trials[trial_id] = i
        return {**self.configs[i], **(owns or {})}

    def _look_for_snapshots(self, waiting: list[int]) -> None:
        """Snapshots saved since the last look, and owners that failed to pretrain (`SnapshotStore.failure`)."""
        if time.monotonic() - self._checked_at < POLL_S:
            return
        from trainables.pretraining import SnapshotStore

        self._checked_at = time.monotonic()
        store = SnapshotStore(self.store)
        for need in {n for i in waiting for n in self.needs[i]} - self._saved:
            if store.has(*need):
                self._saved.add(need)
        self.ended |= {key for key in set(self.owners) - self.ended if store.failure(key)}

    # --- saved with the experiment -------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        """JSON, not pickle: which trials were handed out, and who pretrains what."""
        with open(checkpoint_path, "w") as f:
            json.dump({"issued": self.issued, "owners": self.owners, "ended": sorted(self.ended),
                       "owner_trials": self.owner_trials}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.issued = list(state["issued"])
        self.owners = dict(state.get("owners", {}))  # a stored state without "owners": none
        self.ended = set(state.get("ended", []))
        # a stored state without "owner_trials" has every trial's id under "trials": keep the owners'
        owning = set(self.owners.values())
        self.owner_trials = dict(state.get("owner_trials") or
                                 {t: i for t, i in state.get("trials", {}).items() if i in owning})
