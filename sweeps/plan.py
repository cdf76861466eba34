"""What a grid sweep shares and packs, decided before anything runs (no torch, no Ray).

Shared pretraining: the grid's trials grouped by their pretraining (`pretrain_key`), each group
run once to its longest duration. Packing: trials that can share one stacked model (one
architecture, `pack_signature`) cut into packs of K; unless the sweep sets K, it is chosen per
architecture for the device (1: that architecture's trials run alone).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from trainables.config import TrialConfig, architecture, can_pack_pretraining, make_config
from trainables.pretraining import pretrain_key

from .spec import SweepSpec

# Members per pack when auto: past 16, a wide MLP gains nothing per member; a narrow one (small
# products, more per-call overhead to share) still does, up to 32.
PACK_CAP = 16
NARROW_PACK_CAP, NARROW_WIDTH = 32, 64
# auto packs only MLPs: their packs are bit-exact and pay on CPU. Conv nets run under vmap, and on
# a GPU a pack of them pays at small widths only and needs much memory: set `pack` by hand.
AUTO_PACKED_MODELS = ("mlp",)
# Nor wide MLPs on CPU: their stacked weights outgrow the caches and each step's passes over
# them turn memory-bound, so past this width a member trains faster alone.
WIDE_CPU_MLP = 512


@dataclass
class PretrainJob:
    """One shared pretraining: any member config, the durations to snapshot, trials served."""

    values: dict[str, Any]
    durations: list[int]
    trials: int
    key: str  # for the device type the sweep is expected to run on


def expected_device(spec: SweepSpec, values: dict[str, Any]) -> str:
    """The device type trials will resolve: `auto` means CUDA when the sweep asks for GPUs."""
    return _expected_device(spec, make_config(values))


def _expected_device(spec: SweepSpec, cfg: TrialConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if spec.resources.gpu > 0 else "cpu"
    return cfg.device


def pretraining_jobs(spec: SweepSpec) -> list[PretrainJob]:
    """The distinct pretrainings of a grid sweep (none for random/Optuna or when sharing is off)."""
    if spec.search.kind != "grid" or not spec.share_pretraining:
        return []
    groups: dict[str, PretrainJob] = {}
    durations: dict[str, set[int]] = defaultdict(set)
    for values in spec.trial_values():
        for key, epochs in snapshot_needs(spec, values):
            durations[key].add(epochs)
            job = groups.setdefault(key, PretrainJob(values, [], 0, key))
            job.trials += 1
    for key, job in groups.items():
        job.durations = sorted(durations[key])
    return list(groups.values())


def snapshot_needs(spec: SweepSpec, values: dict[str, Any]) -> list[tuple[str, int]]:
    """The shared snapshot a trial starts from, as (pretraining key, epochs); none without pretraining."""
    cfg = make_config(values)
    if cfg.pretrain_epochs == 0 or not spec.share_pretraining:
        return []
    return [(pretrain_key(cfg, expected_device(spec, values)), cfg.pretrain_epochs)]


def architectures(spec: SweepSpec) -> dict[str, list[tuple[dict[str, Any], TrialConfig]]]:
    """A grid's trials (values and config) by architecture, in grid order."""
    groups: dict[str, list[tuple[dict[str, Any], TrialConfig]]] = defaultdict(list)
    for values in spec.trial_values():
        cfg = make_config(values)
        groups[architecture(cfg)].append((values, cfg))
    return dict(groups)


def pack_plan(spec: SweepSpec, slots: int | None) -> dict[str, int]:
    """Members per pack for each architecture of a grid: the sweep's `pack` for all of them, or
    auto per architecture (`slots`: trials that run at once; None on a cluster). Empty when
    nothing is packed."""
    if spec.search.kind != "grid" or spec.pack == 1:
        return {}
    return _plan(spec, architectures(spec), slots)


def _plan(spec: SweepSpec, groups: dict[str, list], slots: int | None) -> dict[str, int]:
    if isinstance(spec.pack, int):
        return {name: spec.pack for name in groups}
    if spec.pack_plan is not None:  # its names are the grid's (checked by SweepSpec)
        return {name: spec.pack_plan.get(name, 1) for name in groups}
    return _auto_sizes(spec, {name: [cfg for _, cfg in trials] for name, trials in groups.items()}, slots)


def _auto_sizes(spec: SweepSpec, groups: dict[str, list[TrialConfig]], slots: int | None) -> dict[str, int]:
    """Up to PACK_CAP members (NARROW_PACK_CAP up to NARROW_WIDTH wide) per architecture, none
    where `_unpacked_reason` says so; then the biggest packs are split until the packs fill
    whole rounds of the `slots` (no slot idles at the end while the last pack runs)."""
    sizes = {name: 1 for name, configs in groups.items() if _unpacked_reason(spec, configs)}
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


def largest_pack(spec: SweepSpec, slots: int | None = None) -> int:
    """The most members any of the grid's packs has (1: nothing is packed)."""
    return max(pack_plan(spec, slots).values(), default=1)


def unpacked_reasons(spec: SweepSpec) -> dict[str, str]:
    """Per architecture that `pack: auto` trains trial by trial, why (none for a set `pack`)."""
    if spec.pack != "auto" or spec.search.kind != "grid":
        return {}
    reasons = {name: _unpacked_reason(spec, [cfg for _, cfg in trials]) for name, trials in architectures(spec).items()}
    return {name: why for name, why in reasons.items() if why}


def _unpacked_reason(spec: SweepSpec, configs: list[TrialConfig]) -> str | None:
    models = sorted({c.model for c in configs} - set(AUTO_PACKED_MODELS))
    if models:
        return f"{', '.join(models)} trains alone unless you set pack (pays on a GPU at small widths only)"
    if any(c.speed_options for c in configs):
        return "packs train fp32, default layout, uncompiled"  # see trainables.packed
    if any(c.width > WIDE_CPU_MLP and _expected_device(spec, c) == "cpu" for c in configs):
        return f"MLPs wider than {WIDE_CPU_MLP} train faster alone on CPU"
    return None


def ray_trials(spec: SweepSpec, slots: int | None = None) -> list[list[dict[str, Any]]]:
    """The grid's Ray trials as lists of member configs: each architecture cut into even packs of
    at most its `pack_plan` size (72 in 16s -> 5 x 15, not 4 x 16 + 8), one config per trial
    where it is 1. A Ray trial of one config runs as a plain trial."""
    if spec.search.kind != "grid" or spec.pack == 1:
        return [[values] for values in spec.trial_values()]
    groups = architectures(spec)
    sizes = _plan(spec, groups, slots)
    out: list[list[dict[str, Any]]] = []
    for name, trials in groups.items():
        members = [values for values, _ in trials]
        count = math.ceil(len(members) / sizes.get(name, 1))
        per = math.ceil(len(members) / count)
        out += [members[i : i + per] for i in range(0, len(members), per)]
    return out


def packs_pretraining(job: PretrainJob) -> bool:
    """Whether this pretraining may run in a pack with others of its architecture (MLPs only,
    see `trainables.packed.run_pretraining_pack`)."""
    cfg = make_config({**job.values, "pretrain_epochs": job.durations[-1]})
    return cfg.model in AUTO_PACKED_MODELS and can_pack_pretraining(cfg)


def pretrains_in_a_pack(job: PretrainJob, sizes: dict[str, int]) -> bool:
    """Whether a shared pretraining runs packed with others of its architecture, under the
    plan's `sizes` (`pack_plan`): only where that architecture's trials are packed."""
    return sizes.get(architecture(make_config(job.values)), 1) > 1 and packs_pretraining(job)


def pretraining_packs(spec: SweepSpec, jobs: list[PretrainJob], slots: int | None) -> list[list[PretrainJob]]:
    """The shared pretrainings grouped for one Ray task each: those of one MLP architecture
    trained together as a pack (at most its `pack_plan` size, spread over the `slots` that run at once),
    the rest one by one. A resolved `pack: 1` packs nothing."""
    sizes = pack_plan(spec, slots)
    groups: dict[str, list[PretrainJob]] = defaultdict(list)
    alone: list[list[PretrainJob]] = []
    for job in jobs:
        if pretrains_in_a_pack(job, sizes):
            groups[architecture(make_config(job.values))].append(job)
        else:
            alone.append([job])
    packs = []
    for name, members in groups.items():
        count = math.ceil(len(members) / sizes[name])
        if slots:
            count = max(count, min(slots, len(members)))  # one pack per slot before packs grow
        per = math.ceil(len(members) / count)
        packs += [members[i : i + per] for i in range(0, len(members), per)]
    return packs + alone
