"""What a sweep tells its user before and after it runs: how its trials are packed, what
pretraining it shares and how that went."""

from __future__ import annotations

from .spec import SweepSpec
from .sweep_files import snapshot_store


def describe_packing(spec: SweepSpec) -> str | None:
    """How a planned grid's trials are packed into Ray trials (None when none is packed)."""
    from .plan import largest_pack, ray_trials, unpacked_reasons

    largest = largest_pack(spec)
    if largest == 1:
        return None
    text = (f"{spec.num_trials()} trials as {len(ray_trials(spec))} Ray trials of up to {largest} "
            f"(one stacked model each; set pack: 1 to turn off)")
    alone = unpacked_reasons(spec)
    return text + "".join(f"; alone: {name} ({why})" for name, why in alone.items())


def announce_sharing(spec: SweepSpec, on_notice=print) -> None:
    """What the sweep shares before it runs: each pretraining runs once, in its first trial."""
    from .plan import pretraining_jobs

    jobs = pretraining_jobs(spec)
    if jobs:
        on_notice(f"shared pretraining: {len(jobs)} runs (up to {max(j.durations[-1] for j in jobs)} epochs) for "
                  f"{sum(j.trials for j in jobs)} trials; each runs in the first Ray trial that needs it, "
                  f"the others start once its snapshot is saved")


def report_sharing(spec: SweepSpec, on_notice=print) -> None:
    """How the shared pretrainings went: those that failed made their trials pretrain alone."""
    from trainables.pretraining import SnapshotStore

    from .plan import pretraining_jobs

    jobs, store = pretraining_jobs(spec), SnapshotStore(snapshot_store(spec))
    if not jobs:
        return
    for job in jobs:
        error = store.failure(job.key)
        if error and not all(store.has(job.key, d) for d in job.durations):
            on_notice(f"shared pretraining {job.key} failed ({error[-300:]}); its {job.trials} trials "
                      f"pretrained by themselves")
    done = sum(all(store.has(j.key, d) for d in j.durations) for j in jobs)
    on_notice(f"shared pretraining: {done}/{len(jobs)} done")
