"""A sweep spec as Ray Tune's param space and search algorithm (grid, random, Optuna)."""

from __future__ import annotations

from typing import Any

from trainables.config import INT_FIELDS
from trainables.reports import MEMBERS_KEY, SEEDS_KEY

from ..design.plan import SweepPlan
from ..design.spec import RangeAxis, SweepSpec


def _distribution(name: str, axis: RangeAxis):
    from ray import tune

    if name in INT_FIELDS:
        low, high = int(round(axis.low)), int(round(axis.high))
        return tune.lograndint(low, high + 1) if axis.scale == "log" else tune.randint(low, high + 1)
    return tune.loguniform(axis.low, axis.high) if axis.scale == "log" else tune.uniform(axis.low, axis.high)


def build_search(spec: SweepSpec, plan: SweepPlan, snapshots: str | None = None,
                 stored: list[tuple[dict[str, Any], dict[str, Any]]] = ()) -> tuple[dict[str, Any], int, Any]:
    """(param_space, num_samples, search_alg or None) for `tune.Tuner`. `stored`: a boundary
    search's first round, from the grid it refines (`BoundarySearcher`).

    A grid whose plan packs some architectures runs each pack as one Ray trial whose config
    lists its members. A grid whose trials start from shared snapshots (in `snapshots`) gets
    them from a `SnapshotGate`: first the trials that run each pretraining, the others once
    their snapshots are saved.
    """
    from ray import tune

    space: dict[str, Any] = dict(spec.base)
    kind = spec.search.kind
    if kind == "grid":
        trials = [list(members) for members in plan.ray_trials]
        if snapshots and any(plan.needs):
            from .snapshot_gate import SnapshotGate

            configs = [{MEMBERS_KEY: members} if len(members) > 1 else members[0] for members in trials]
            packable = {key for keys in plan.packed_jobs.values() for key in keys}
            return {}, len(configs), SnapshotGate(configs, [list(n) for n in plan.needs], snapshots,
                                                  {j.key: j.to_tune() for j in plan.jobs}, packable)
        # some packed, or one part of a sweep in parts: a grid over member lists (lone trials: lists of one)
        if len(trials) < spec.num_trials():
            return {MEMBERS_KEY: tune.grid_search(trials)}, 1, None
    if kind == "boundary":
        from .boundary_searcher import BoundarySearcher
        from ..cluster.ray_cluster import trial_slots

        return space, spec.search.max_trials, BoundarySearcher(spec, slots=trial_slots(spec), stored=stored)
    if kind == "grid":
        for name in spec.axes:
            space[name] = tune.grid_search(spec.axis_values(name))
        space["seed"] = tune.grid_search(spec.seeds)
        return space, 1, None

    for name, axis in spec.axes.items():
        space[name] = tune.choice(axis) if isinstance(axis, list) else _distribution(name, axis)
    if kind == "random":
        from ray.tune.search import BasicVariantGenerator

        space["seed"] = tune.grid_search(spec.seeds)
        # random_state makes the draws, and so the trial keys, the same on every run of the file
        return space, spec.search.num_samples, BasicVariantGenerator(random_state=spec.search.seed)

    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    import optuna

    # Optuna proposes a config; the Repeater runs it once per seed and feeds back the mean.
    space[SEEDS_KEY] = list(spec.seeds)
    searcher = OptunaSearch(
        metric=spec.search.metric, mode=spec.search.mode, sampler=optuna.samplers.TPESampler(seed=spec.search.seed)
    )
    repeats = len(spec.seeds)
    return space, spec.search.num_samples * repeats, Repeater(searcher, repeat=repeats, set_index=True)
