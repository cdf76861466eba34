"""A sweep's shared pretrainings as Ray tasks that run beside its trials.

The tasks are submitted before Tune starts, so they get resources first; trials that need no
snapshot use the rest at once, and `SnapshotGate` hands out the others as their snapshots are
saved. Without this, every slot that no pretraining uses would idle until the longest
pretraining ends (on a cluster, most of its GPUs).
"""

from __future__ import annotations

from typing import Any, Callable

from .plan import PretrainJob, pretraining_jobs, pretraining_packs
from .spec import SweepSpec


def missing_jobs(spec: SweepSpec, store: str) -> list[PretrainJob]:
    """The sweep's shared pretrainings that still lack a snapshot (all on a fresh sweep)."""
    from trainables.pretraining import SnapshotStore

    snapshots = SnapshotStore(store)
    return [j for j in pretraining_jobs(spec) if not all(snapshots.has(j.key, d) for d in j.durations)]


class PretrainingPhase:
    """The pretraining tasks of one sweep run: submitted at construction, polled without blocking.

    A pretraining whose task fails is reported; its trials then pretrain by themselves.
    """

    def __init__(self, spec: SweepSpec, store: str, slots: int | None, on_notice: Callable[[str], None] = print,
                 beside_trials: bool = True):
        import ray

        from trainables.pretraining import run_shared_pretraining, run_shared_pretrainings

        self.on_notice = on_notice
        self.jobs = missing_jobs(spec, store)
        self.pending: dict[Any, list[PretrainJob]] = {}  # task ref -> the pretrainings it runs
        self.settled_keys: set[str] = set()
        self.failed = 0
        self.tasks = 0
        if not self.jobs:
            return
        longest = max(j.durations[-1] for j in self.jobs)
        on_notice(f"shared pretraining: {len(self.jobs)} runs (up to {longest} epochs) for "
                  f"{sum(j.trials for j in self.jobs)} trials"
                  + ("; each starts once its snapshot is saved" if beside_trials else ", before the trials resume"))
        options = dict(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu, max_retries=spec.max_failures)
        alone = ray.remote(run_shared_pretraining).options(**options)
        packed = ray.remote(run_shared_pretrainings).options(**options)
        for group in pretraining_packs(spec, self.jobs, slots):
            if len(group) == 1:
                self.pending[alone.remote(group[0].values, group[0].durations, store)] = group
            else:  # one stacked model, snapshots bit-equal to pretraining each alone
                self.pending[packed.remote([(j.values, j.durations) for j in group], store)] = group
        self.tasks = len(self.pending)

    def settled(self) -> set[str]:
        """Keys of the pretrainings whose task has ended, well or not (checks without waiting)."""
        if self.pending:
            import ray

            ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
            for ref in ready:
                self._settle(ref)
        return self.settled_keys

    def wait(self) -> None:
        """Block until every task has ended."""
        import ray

        for ref in list(self.pending):
            ray.wait([ref])
            self._settle(ref)

    def _settle(self, ref) -> None:
        import ray

        group = self.pending.pop(ref)
        self.settled_keys |= {j.key for j in group}
        try:
            ray.get(ref)
        except Exception as err:  # the trials of these pretrainings pretrain by themselves instead
            self.failed += len(group)
            self.on_notice(f"shared pretraining {', '.join(j.key for j in group)} failed ({type(err).__name__}: "
                           f"{str(err)[-300:]}); its {sum(j.trials for j in group)} trials will pretrain by themselves")
        if not self.pending:
            self.on_notice(f"shared pretraining: {len(self.jobs) - self.failed}/{len(self.jobs)} done in "
                           f"{self.tasks} Ray tasks")
