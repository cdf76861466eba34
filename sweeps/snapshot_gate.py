"""Grid trials handed to Ray Tune as their shared pretraining snapshots are saved.

A trial that needs a snapshot must not start before it exists (it would pretrain by itself,
repeating the shared work), nor wait inside Ray holding a slot (the pretraining it waits for
might need that slot). So Tune gets a sharing grid sweep's trials from this `Searcher`: those
that need no snapshot at once, the others as soon as all their snapshots are saved, or as soon
as their pretraining's task has ended without them (they then pretrain by themselves). Tune
saves and restores its state with the experiment, so a resumed sweep hands out only the rest.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from ray.tune.search import Searcher

POLL_S = 1.0  # at most this often the storage is asked about snapshots not yet seen

Need = tuple[str, int]  # (pretraining key, epochs): one snapshot a trial starts from


class SnapshotGate(Searcher):
    def __init__(self, configs: list[dict[str, Any]], needs: list[list[Need]], store: str, phase=None):
        """`configs`: the Ray trials' configs, in grid order; `needs[i]`: the snapshots configs[i]
        starts from; `phase`: the running `PretrainingPhase` (None: nothing is pretraining now)."""
        super().__init__()
        order = sorted(range(len(configs)), key=lambda i: max((d for _, d in needs[i]), default=0))
        self.configs = [configs[i] for i in order]  # shortest pretraining first: its snapshot comes first
        self.needs = [sorted({tuple(n) for n in needs[i]}) for i in order]
        self.store = store
        self.phase = phase
        self.issued: list[int] = []
        self._saved: set[Need] = set()
        self._checked_at = -math.inf

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the trials are the grid's; the param space only holds constants

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        issued = set(self.issued)
        waiting = [i for i in range(len(self.configs)) if i not in issued]
        if not waiting:
            return Searcher.FINISHED
        ended = self.phase.settled() if self.phase is not None else None
        self._look_for_snapshots(waiting)
        for i in waiting:
            if all(n in self._saved or ended is None or n[0] in ended for n in self.needs[i]):
                self.issued.append(i)
                return dict(self.configs[i])
        return None  # every waiting trial needs a snapshot still being made: Tune asks again

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # a trial's outcome changes nothing: the grid is fixed

    def _look_for_snapshots(self, waiting: list[int]) -> None:
        if self.phase is None or time.monotonic() - self._checked_at < POLL_S:
            return
        from trainables.pretraining import SnapshotStore

        self._checked_at = time.monotonic()
        store = SnapshotStore(self.store)
        for need in {n for i in waiting for n in self.needs[i]} - self._saved:
            if store.has(*need):
                self._saved.add(need)

    # --- saved with the experiment -------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        """JSON, not pickle: which trials were handed out is all a resumed sweep needs."""
        with open(checkpoint_path, "w") as f:
            json.dump({"issued": self.issued}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.issued = list(json.load(f)["issued"])

    def __getstate__(self):  # Tune pickles the searcher with the Tuner: not the live Ray tasks
        return {**self.__dict__, "phase": None}
