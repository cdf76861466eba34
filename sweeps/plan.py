"""What a grid sweep shares and packs, decided before anything runs (no torch, no Ray).

Shared pretraining: the grid's trials grouped by their pretraining (`pretrain_key`), each group
run once to its longest duration. Packing: trials that can share one stacked model
(`pack_signature`) cut into packs of K, K chosen per device and model unless the sweep says.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from trainables.config import TrialConfig, make_config, pack_signature
from trainables.pretraining import can_pack_pretraining, pretrain_key

from .spec import SweepSpec

# Members per pack when auto. Measured on CPU (2 cores, 30 epochs of mnist1d, 16/32/48 members):
# an MLP 256x2 costs 1.21-1.36 s per member at 16 and 1.38-1.45 at 32 or 48; a narrow one,
# whose small products leave more per-call overhead to share, 0.29 s at 16 and 0.26-0.27 at 32.
PACK_CAP = 16
NARROW_PACK_CAP, NARROW_WIDTH = 32, 64
# auto packs only what was measured to pay: MLPs (bit-exact, 3x on CPU). Conv nets run under
# vmap: 1.2x on CPU; on an H100 (benchmarks/gpu_pack_throughput.py, ResNet-18, 16 members)
# 2.3x at width 16 and 1.5x at 32 but 0.7x at 64, with 13-26 GiB per pack: set `pack` by hand.
AUTO_PACKED_MODELS = ("mlp",)
# Nor wide MLPs on CPU: their stacked weights outgrow the caches and each step's passes over
# them turn memory-bound. Time alone / packed per member (mnist1d, 8 members unless noted,
# second of two runs): width 256 1.68x, 512 1.23x (16 members: 1.13x), 768 0.93x, 1024 0.77x.
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


def pack_size(spec: SweepSpec, slots: int | None) -> int:
    """Members per pack: the sweep's `pack`, or auto (up to PACK_CAP; NARROW_PACK_CAP when every
    MLP is at most NARROW_WIDTH wide; none with a conv net, or an MLP wider than WIDE_CPU_MLP
    on CPU), spread so every slot gets the same number of packs (`slots`: trials that run at
    once; None on a cluster)."""
    if spec.search.kind != "grid":
        return 1
    if isinstance(spec.pack, int):
        return spec.pack
    configs = [make_config(v) for v in spec.trial_values()]
    if _unpacked_reason(spec, configs):
        return 1
    n = spec.num_trials()
    cap = NARROW_PACK_CAP if all(c.width <= NARROW_WIDTH for c in configs) else PACK_CAP
    packs = math.ceil(n / cap)
    if slots:
        packs = math.ceil(packs / slots) * slots  # whole rounds: no slot idles at the end
    return max(1, math.ceil(n / packs))


def auto_unpacked_reason(spec: SweepSpec) -> str | None:
    """Why `pack: auto` trains a grid's trials one by one (None: it packs them). One pack size
    serves the whole sweep, so one trial that should not be packed keeps every trial alone."""
    return _unpacked_reason(spec, [make_config(v) for v in spec.trial_values()])


def _unpacked_reason(spec: SweepSpec, configs: list[TrialConfig]) -> str | None:
    models = sorted({c.model for c in configs} - set(AUTO_PACKED_MODELS))
    if models:
        return f"{', '.join(models)} trains alone unless you set pack (pays on a GPU at small widths only)"
    if any(c.speed_options for c in configs):
        return "packs train fp32, default layout, uncompiled"  # see trainables.packed
    if any(c.width > WIDE_CPU_MLP and _expected_device(spec, c) == "cpu" for c in configs):
        return f"MLPs wider than {WIDE_CPU_MLP} train faster alone on CPU"
    return None


def make_packs(spec: SweepSpec, size: int) -> list[list[dict[str, Any]]]:
    """The grid's trial configs cut into packs of at most `size` trials that can share a model."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for values in spec.trial_values():
        groups[pack_signature(make_config(values))].append(values)
    packs = []
    for members in groups.values():
        count = math.ceil(len(members) / size)
        per = math.ceil(len(members) / count)  # even packs: 72 in 16s -> 5 x 15 (not 4 x 16 + 8)
        packs += [members[i : i + per] for i in range(0, len(members), per)]
    return packs


def ray_trials(spec: SweepSpec, size: int) -> list[list[dict[str, Any]]]:
    """The grid's Ray trials as lists of member configs: packs of `size`, or one config each."""
    return make_packs(spec, size) if size > 1 else [[values] for values in spec.trial_values()]


def packs_pretraining(job: PretrainJob) -> bool:
    """Whether this pretraining may run in a pack with others of its architecture (MLPs only,
    see `trainables.packed.run_pretraining_pack`)."""
    cfg = make_config({**job.values, "pretrain_epochs": job.durations[-1]})
    return cfg.model in AUTO_PACKED_MODELS and can_pack_pretraining(cfg)


def pretraining_packs(spec: SweepSpec, jobs: list[PretrainJob], slots: int | None) -> list[list[PretrainJob]]:
    """The shared pretrainings grouped for one Ray task each: those of one MLP architecture
    trained together as a pack (at most `spec.pack`, spread over the `slots` that run at once),
    the rest one by one. A resolved `pack: 1` packs nothing."""
    size = spec.pack if isinstance(spec.pack, int) else pack_size(spec, slots)
    groups: dict[tuple, list[PretrainJob]] = defaultdict(list)
    alone: list[list[PretrainJob]] = []
    for job in jobs:
        if size > 1 and packs_pretraining(job):
            groups[pack_signature(make_config(job.values))].append(job)
        else:
            alone.append([job])
    packs = []
    for members in groups.values():
        count = math.ceil(len(members) / size)
        if slots:
            count = max(count, min(slots, len(members)))  # one pack per slot before packs grow
        per = math.ceil(len(members) / count)
        packs += [members[i : i + per] for i in range(0, len(members), per)]
    return packs + alone
