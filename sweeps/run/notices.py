"""What a sweep tells its user: its plan (the same lines from `validate` and `run`) and, after it
ran, how its shared pretraining went."""

from __future__ import annotations

from trainables.metrics import EPOCH_METRICS, FINAL_METRICS

from .parts import PART_ENV, part_count, part_limit, ray_trials_per_part
from ..design.plan import SweepPlan


def plan_lines(plan: SweepPlan) -> list[str]:
    """The plan as labelled lines: its size, what it shares, how it packs."""
    lines = [_size(plan)]
    jobs = plan.jobs
    if jobs:
        lines.append(f"shared    {len(jobs)} pretraining runs (up to {max(j.durations[-1] for j in jobs)} epochs) "
                     f"serve {sum(j.trials for j in jobs)} trials; each runs in the first Ray trial that needs it, "
                     f"the others start once its snapshot is saved")
    if plan.largest_pack > 1:
        lines.append(f"packed    {len(plan.ray_trials)} Ray trials of up to {plan.largest_pack} trials each "
                     f"(one stacked model each; set pack: 1 to turn off)")
        if len(plan.pack_plan) > 1:  # e.g. a width sweep: each architecture's plan
            for name, size in plan.pack_plan.items():
                what = f"up to {size} trials per Ray trial" if size > 1 else plan.alone.get(name, "pack_plan says 1")
                lines.append(f"{'pack' if size > 1 else 'alone':<9} {name}: {what}")
    elif plan.alone:
        lines.append(f"packed    no: {'; '.join(sorted(set(plan.alone.values())))}")
    per_part = ray_trials_per_part(plan)
    if per_part:
        lines.append(f"parts     {part_count(plan, per_part)} Tune experiments of up to {per_part} Ray trials, one after "
                     f"another (over {part_limit():,} in one, Tune's driver memory keeps growing; {PART_ENV} sets it)")
    return lines


def _size(plan: SweepPlan) -> str:
    """Trials, Ray trials and what MLflow will hold: a run per trial and the sweep's parent run;
    a grid's metric rows at most every epoch's metrics (to each stage's cap) and the finals."""
    if plan.search != "grid":
        most = "at most " if plan.search == "boundary" else ""
        return f"size      {most}{plan.num_trials} trials; MLflow: {most}{plan.num_trials + 1} runs (a trial each, and the parent)"
    epochs = sum(t.config.pretrain_epochs + t.config.epochs for t in plan.trials)
    rows = epochs * len(EPOCH_METRICS) + plan.num_trials * len(FINAL_METRICS)
    return (f"size      {plan.num_trials} trials in {len(plan.ray_trials)} Ray trials; MLflow: {plan.num_trials + 1} runs "
            f"(a trial each, and the parent), at most {rows:,} metric rows (fewer where trials stop early)")


def report_sharing(plan: SweepPlan, store: str, on_notice=print) -> None:
    """How the shared pretrainings went: those that failed made their trials pretrain alone."""
    if not plan.jobs:
        return
    from trainables.pretraining import SnapshotStore

    snapshots = SnapshotStore(store)
    for job in plan.jobs:
        error = snapshots.failure(job.key)
        if error and snapshots.missing(job):
            on_notice(f"shared pretraining {job.key} failed ({error[-300:]}); its {job.trials} trials "
                      f"pretrained by themselves")
    done = sum(not snapshots.missing(j) for j in plan.jobs)
    on_notice(f"shared pretraining: {done}/{len(plan.jobs)} done")
