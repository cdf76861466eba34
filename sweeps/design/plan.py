"""A sweep's plan: what it runs, shares and packs, derived once from its validated spec before
anything runs (no torch, no Ray).

Shared pretraining: a grid's trials grouped by their pretraining (`PretrainJob.key`), each
group run once to its longest duration. Packing: trials that can share one stacked model (one
architecture, `pack_signature`) cut into packs of K; unless the sweep sets K, it is chosen per
architecture for the device (1: that architecture's trials run alone). `planned` records how
`pack: auto` was resolved in the spec (its `pack_plan`, stored with the sweep), so the stored
spec gives the same plan again.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from trainables.config import TrialConfig, architecture, can_pack, can_pack_pretraining, make_config
from trainables.pretraining import PretrainJob, pretrain_key

from .keys import KnownKeys, TrialKeys, config_keys
from .spec import SweepSpec

# Members per pack when auto: past 16, a wide MLP gains nothing per member; a narrow one (small
# products, more per-call overhead to share) still does, up to 32.
PACK_CAP = 16
NARROW_PACK_CAP, NARROW_WIDTH = 32, 64
# auto packs only MLPs: their packs are bit-exact and pay on CPU. Conv nets run under vmap, and on
# a GPU a pack of them pays at small widths only and needs much memory: set `pack` by hand.
# Shared pretrainings pack only MLPs under any `pack` (their packed snapshots are tested bit-equal).
AUTO_PACKED_MODELS = ("mlp",)
# Nor wide MLPs on CPU: their stacked weights outgrow the caches and each step's passes over
# them turn memory-bound, so past this width a member trains faster alone.
WIDE_CPU_MLP = 512

Need = tuple[str, int]  # (pretraining key, epochs): one shared snapshot a trial starts from


@dataclass(frozen=True)
class PlannedTrial:
    values: dict[str, Any]  # as Tune hands them to the trainable
    config: TrialConfig
    keys: TrialKeys  # its trial and cell keys
    snapshot: Need | None  # the shared snapshot it starts from (None: it pretrains by itself, or not at all)


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep runs. A grid's trials, Ray trials and shared pretrainings are known before it
    starts; random, Optuna and boundary searches draw theirs as they go (empty here)."""

    search: str  # the spec's search kind
    num_trials: int  # trials the sweep runs (boundary: at most)
    trials: tuple[PlannedTrial, ...]  # a grid's, in grid order
    ray_trials: tuple[tuple[dict[str, Any], ...], ...]  # each Ray trial's member values; one member: a plain trial
    needs: tuple[tuple[Need, ...], ...]  # per Ray trial: the shared snapshots its members start from
    jobs: tuple[PretrainJob, ...]  # shared pretrainings (none when sharing is off)
    packed_jobs: dict[str, tuple[str, ...]]  # per architecture: keys of the jobs pretrained as one pack
    pack_plan: dict[str, int]  # per architecture: most members per pack (empty: nothing packed)
    alone: dict[str, str]  # per architecture that `pack: auto` trains trial by trial: why

    def known_keys(self) -> KnownKeys:
        """The planned trials' keys, to be found by their values (a grid's; none for a search)."""
        return KnownKeys((t.values, t.keys) for t in self.trials)

    @property
    def largest_pack(self) -> int:
        """The most members any pack has (1: nothing is packed)."""
        return max(self.pack_plan.values(), default=1)


def sweep_plan(spec: SweepSpec, slots: int | None = None, stored: frozenset[str] = frozenset()) -> SweepPlan:
    """The sweep's plan. `slots` (trials that run at once; None on a cluster) sizes `pack: auto`
    where the spec has no `pack_plan` yet. `stored`: keys of trials an extended sweep holds
    already, left out (the plan is the extension's)."""
    if spec.search.kind != "grid":
        return SweepPlan(spec.search.kind, spec.num_trials(), (), (), (), (), {}, {}, {})
    trials = tuple(t for t in (_planned_trial(values, spec.share_pretraining) for values in spec.trial_values())
                   if t.keys.trial not in stored)
    groups: dict[str, list[PlannedTrial]] = defaultdict(list)
    for trial in trials:
        groups[architecture(trial.config)].append(trial)
    alone = _unpacked_reasons(spec, groups) if spec.pack == "auto" else {}
    sizes = {} if spec.pack == 1 else _sizes(spec, groups, alone, slots)
    ray = _ray_trials(trials, groups, sizes)
    jobs = _jobs(trials)
    packed: dict[str, list[str]] = defaultdict(list)
    for job in jobs:
        name = architecture(job.config)
        if sizes.get(name, 1) > 1 and job.config.model in AUTO_PACKED_MODELS and can_pack_pretraining(job.config):
            packed[name].append(job.key)
    return SweepPlan(
        search="grid", num_trials=len(trials), trials=trials,
        ray_trials=tuple(tuple(t.values for t in members) for members in ray),
        needs=tuple(tuple(t.snapshot for t in members if t.snapshot) for members in ray),
        jobs=jobs, packed_jobs={name: tuple(keys) for name, keys in packed.items()}, pack_plan=sizes, alone=alone)


def planned(spec: SweepSpec, slots: int | None, stored: frozenset[str] = frozenset()) -> tuple[SweepSpec, SweepPlan]:
    """The sweep's plan for `slots` (without the `stored` trials), and the spec with `pack: auto`
    resolved per architecture as its `pack_plan` (a spec that has one keeps it)."""
    plan = sweep_plan(spec, slots, stored)
    if spec.pack != "auto" or spec.search.kind != "grid" or spec.pack_plan is not None:
        return spec, plan
    return spec.model_copy(update={"pack_plan": plan.pack_plan}), plan


def _planned_trial(values: dict[str, Any], sharing: bool) -> PlannedTrial:
    cfg = make_config(values)
    snapshot = (pretrain_key(cfg), cfg.pretrain_epochs) if sharing and cfg.pretrain_epochs else None
    return PlannedTrial(values, cfg, config_keys(cfg), snapshot)


def _jobs(trials: tuple[PlannedTrial, ...]) -> tuple[PretrainJob, ...]:
    """One job per pretraining key: any member's values, every duration asked for, trials served."""
    first: dict[str, dict[str, Any]] = {}
    durations: dict[str, set[int]] = defaultdict(set)
    served: dict[str, int] = defaultdict(int)
    for trial in trials:
        if trial.snapshot:
            key, epochs = trial.snapshot
            first.setdefault(key, trial.values)
            durations[key].add(epochs)
            served[key] += 1
    return tuple(PretrainJob(values, tuple(durations[key]), served[key]) for key, values in first.items())


def _sizes(spec: SweepSpec, groups: dict[str, list[PlannedTrial]], alone: dict[str, str],
           slots: int | None) -> dict[str, int]:
    if isinstance(spec.pack, int):
        return {name: spec.pack for name in groups}
    if spec.pack_plan is not None:  # its names are the grid's (checked by SweepSpec)
        return {name: spec.pack_plan.get(name, 1) for name in groups}
    return _auto_sizes({name: [t.config for t in trials] for name, trials in groups.items()}, alone, slots)


def _auto_sizes(groups: dict[str, list[TrialConfig]], alone: dict[str, str], slots: int | None) -> dict[str, int]:
    """Up to PACK_CAP members (NARROW_PACK_CAP up to NARROW_WIDTH wide) per architecture, none
    where `alone` says why; then the biggest packs are split until the packs fill whole rounds
    of the `slots` (no slot idles at the end while the last pack runs)."""
    sizes = {name: 1 for name in groups if name in alone}
    packable = {name: len(configs) for name, configs in groups.items() if name not in sizes}
    packs = {name: math.ceil(n / (NARROW_PACK_CAP if groups[name][0].width <= NARROW_WIDTH else PACK_CAP))
             for name, n in packable.items()}
    if slots and packs:
        for _ in range(-sum(packs.values()) % slots):
            splittable = [name for name in packs if packs[name] < packable[name]]
            if not splittable:
                break
            biggest = max(splittable, key=lambda name: packable[name] / packs[name])
            packs[biggest] += 1
    return {**sizes, **{name: math.ceil(n / packs[name]) for name, n in packable.items()}}


def _unpacked_reasons(spec: SweepSpec, groups: dict[str, list[PlannedTrial]]) -> dict[str, str]:
    """Per architecture that `pack: auto` trains trial by trial, why."""
    reasons = {name: _unpacked_reason(spec, [t.config for t in trials]) for name, trials in groups.items()}
    return {name: why for name, why in reasons.items() if why}


def _unpacked_reason(spec: SweepSpec, configs: list[TrialConfig]) -> str | None:
    models = sorted({c.model for c in configs} - set(AUTO_PACKED_MODELS))
    if models:
        return f"{', '.join(models)} trains alone unless you set pack (pays on a GPU at small widths only)"
    if not all(can_pack(c) for c in configs):
        return "packs train fp32, default layout, uncompiled"
    if any(c.width > WIDE_CPU_MLP and _expected_device(spec, c) == "cpu" for c in configs):
        return f"MLPs wider than {WIDE_CPU_MLP} train faster alone on CPU"
    return None


def _expected_device(spec: SweepSpec, cfg: TrialConfig) -> str:
    """The device type trials will likely resolve: `auto` means CUDA when the sweep asks for
    GPUs. A guess, good enough to size packs; nothing that must match at run time uses it."""
    if cfg.device == "auto":
        return "cuda" if spec.resources.gpu > 0 else "cpu"
    return cfg.device


def _ray_trials(trials: tuple[PlannedTrial, ...], groups: dict[str, list[PlannedTrial]],
                sizes: dict[str, int]) -> list[list[PlannedTrial]]:
    """Each architecture cut into even packs of at most its size (72 in 16s -> 5 x 15, not
    4 x 16 + 8), one trial each where it is 1; every trial alone, in grid order, when nothing
    is packed."""
    if not sizes:
        return [[t] for t in trials]
    out: list[list[PlannedTrial]] = []
    for name, members in groups.items():
        count = math.ceil(len(members) / sizes.get(name, 1))
        per = math.ceil(len(members) / count)
        out += [members[i : i + per] for i in range(0, len(members), per)]
    return out


def pretraining_packs(plan: SweepPlan, jobs: list[PretrainJob], slots: int | None) -> list[list[PretrainJob]]:
    """Some of the plan's shared pretrainings grouped for one Ray task each: those its
    `packed_jobs` pack, per architecture (at most its pack size, spread over the `slots` that run
    at once), the rest one by one."""
    packed = {key: name for name, keys in plan.packed_jobs.items() for key in keys}
    groups: dict[str, list[PretrainJob]] = defaultdict(list)
    alone: list[list[PretrainJob]] = []
    for job in jobs:
        if job.key in packed:
            groups[packed[job.key]].append(job)
        else:
            alone.append([job])
    packs = []
    for name, members in groups.items():
        count = math.ceil(len(members) / plan.pack_plan[name])
        if slots:
            count = max(count, min(slots, len(members)))  # one pack per slot before packs grow
        per = math.ceil(len(members) / count)
        packs += [members[i : i + per] for i in range(0, len(members), per)]
    return packs + alone
