"""A resumed sweep's missing shared pretrainings, run as Ray tasks before its trials resume.

On a fresh sweep each shared pretraining runs inside its owner trial (see `SnapshotGate`). A
driver killed mid-sweep may leave some unmade (an owner that never got far, or one that
failed); a resume makes them first, over every slot, so no restored trial waits or repeats
one by itself.
"""

from __future__ import annotations

from typing import Callable

from trainables.pretraining import PretrainJob

from ..design.plan import SweepPlan, pretraining_packs
from ..design.spec import SweepSpec


def missing_jobs(plan: SweepPlan, store: str) -> list[PretrainJob]:
    """The plan's shared pretrainings that still lack a snapshot (all on a fresh sweep)."""
    from trainables.pretraining import SnapshotStore

    snapshots = SnapshotStore(store)
    return [j for j in plan.jobs if snapshots.missing(j)]


def run_missing_pretrainings(spec: SweepSpec, plan: SweepPlan, store: str, slots: int | None,
                             on_notice: Callable[[str], None] = print) -> None:
    """Make every missing snapshot as Ray tasks (packed per architecture over `slots`) and wait.

    A pretraining whose task fails is reported; its trials then pretrain by themselves.
    """
    import ray

    from trainables.pretraining import run_shared_pretraining, run_shared_pretrainings

    jobs = missing_jobs(plan, store)
    if not jobs:
        return
    on_notice(f"shared pretraining: {len(jobs)} runs (up to {max(j.durations[-1] for j in jobs)} epochs) for "
              f"{sum(j.trials for j in jobs)} trials, before the trials resume")
    options = dict(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu, max_retries=spec.max_failures)
    alone = ray.remote(run_shared_pretraining).options(**options)
    packed = ray.remote(run_shared_pretrainings).options(**options)
    pending = {}
    for group in pretraining_packs(plan, jobs, slots):
        if len(group) == 1:
            pending[alone.remote(group[0], store)] = group
        else:  # one stacked model, snapshots bit-equal to pretraining each alone
            pending[packed.remote(group, store)] = group
    failed = 0
    for ref, group in pending.items():
        try:
            ray.get(ref)
        except Exception as err:  # the trials of these pretrainings pretrain by themselves instead
            failed += len(group)
            on_notice(f"shared pretraining {', '.join(j.key for j in group)} failed ({type(err).__name__}: "
                      f"{str(err)[-300:]}); its {sum(j.trials for j in group)} trials will pretrain by themselves")
    on_notice(f"shared pretraining: {len(jobs) - failed}/{len(jobs)} done in {len(pending)} Ray tasks")
