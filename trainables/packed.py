"""Pack trials into one process: `run_pack(configs)`; a lone trial is a pack of one on the plain engine.

Members share model, width, depth, dataset, batch size, device and threads, and differ in
anything else: seed, pretraining, lr, schedule, weight decay, momentum, clip threshold,
augmentation and its draws, stopping point. Each member keeps its own random streams, so its
batches and augmentations are those it draws alone; only the floating-point order of the
batched kernels differs, so a member's metrics equal its standalone run to float tolerance.
A member that fits, hits its epoch cap or diverges leaves the pack; the rest go on.

Pretraining is not packed with the clean phase: a member starts from its shared snapshot, or
pretrains alone first (`run_trial(..., pretrain_only=True)`), so the clean phase is all that is
packed. Shared pretrainings of one architecture pack by themselves (`run_pretraining_pack`).

On the plain engine a pack has one member, run by `run_trial`: both its stages in one loop on
one engine, so it keeps the speed options the stacked engine refuses, pays no stacking, and
can checkpoint while it pretrains. Either way the caller sees the same callbacks.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import torch

from .config import PACK_FIELDS, TrialConfig, can_pack, can_pack_pretraining, make_config, pack_signature
from .loop import Member, TrialResult, run_stage
from .stacked_engine import StackedEngine
from .stages import init_model, plan_stages, prepare
from .state import MemberState, PackState, TrialState
from .trial import run_trial

ENGINES = ("stacked", "plain")

OnMemberEpoch = Callable[[int, dict[str, Any]], None]
OnMemberDone = Callable[[int, TrialResult], None]
# after each epoch: (the resumable state's stored form, or None while there is none to save;
# whether a stage ended there: see `run_pack`); reports are made here, so a checkpoint covers
# every earlier report
OnPackEpoch = Callable[[Callable[[], dict[str, Any]] | None, bool], None]
OnPretrainEpoch = Callable[[int, dict[str, Any], Callable[[], dict[str, Any]]], None]


class Start(NamedTuple):
    """A member at the start of the pack: its model now, its weights at init, its SGD momentum."""

    model: torch.nn.Module
    init: list[torch.Tensor]
    momentum: list[torch.Tensor]


def run_pack(
    configs: list[TrialConfig | dict[str, Any]],
    *,
    engine: str = "stacked",
    resume: PackState | TrialState | dict[str, Any] | None = None,
    pretrained: list[TrialState | dict[str, Any] | None] | None = None,
    on_epoch: OnMemberEpoch | None = None,
    on_done: OnMemberDone | None = None,
    on_pack_epoch: OnPackEpoch | None = None,
) -> list[TrialResult]:
    """Train every member to its end; return their results in the order given.

    `engine`: "stacked" (K members of one architecture as one stacked model) or "plain" (one
    member: a lone trial). `resume` is the state a checkpoint holds, `state()` below: a
    `PackState` (stacked) or a `TrialState` (plain), typed or stored; `pretrained[i]` is member
    i's start from a shared snapshot (see `trainables.pretraining`). `on_epoch(i, record)` is
    called for each member's epoch once the whole pack finished it; `on_done(i, result)` when
    member i leaves the pack; then `on_pack_epoch(state, ended)`, where `state()` is the stored
    form of the resumable state of the whole pack (None while a stacked pack's members pretrain
    alone, before the pack exists) and `ended` says that a stage ended at this epoch: a member
    left a stacked pack (at any epoch), or a lone trial's stage ran to its last epoch. A pack
    state holds the summaries of members already done, which a resumed pack does not announce
    again: their reports came before it.
    """
    cfgs = [c if isinstance(c, TrialConfig) else make_config(c) for c in configs]
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "plain":
        if len(cfgs) != 1:
            raise ValueError(f"the plain engine runs a pack of one, not {len(cfgs)}")
        start = resume if resume is not None else (pretrained or [None])[0]
        return [_run_alone(cfgs[0], start, on_epoch, on_done, on_pack_epoch)]
    signatures = {pack_signature(c) for c in cfgs}
    if len(signatures) != 1:
        raise ValueError(f"a pack needs one value of each of {', '.join(PACK_FIELDS)}; "
                         f"got {len(signatures)} different combinations")
    first = cfgs[0]
    if not can_pack(first):
        raise ValueError(f"packed trials train in fp32, default layout, uncompiled; {first.speed_options} "
                         f"needs pack: 1")
    device, data = prepare(first)
    members = [Member(i, c) for i, c in enumerate(cfgs)]
    pack = PackState.of(resume) if resume is not None else None
    if pack is not None and [m.config for m in pack.members] != [c.to_dict() for c in cfgs]:
        raise ValueError("pack checkpoint belongs to different member configs; delete it or fix the sweep")

    started = time.perf_counter()
    starts = _start_members(members, data, device, pack, pretrained, on_epoch, on_pack_epoch)
    restored = {i for i, state in enumerate(pack.members) if state.summary is not None} if pack else set()
    for m in members:  # members that ended before the pack formed (pretraining diverged)
        if m.result is not None and m.index not in restored and on_done is not None:
            on_done(m.index, m.result)
    if on_pack_epoch is not None:
        on_pack_epoch(None, False)
    active = [m for m in members if m.result is None]
    if not active:
        return [m.result for m in members]  # type: ignore[misc]

    stacked = StackedEngine([m.cfg for m in active], [starts[m.index].model for m in active],
                           [starts[m.index].init for m in active], [m.stage for m in active],
                           [starts[m.index].momentum for m in active], data, device)

    def report(epoch, active, finished, state):
        for m in active:
            if on_epoch is not None:
                on_epoch(m.index, m.history[-1])
        for k in finished:
            if on_done is not None:
                on_done(active[k].index, active[k].result)
        if on_pack_epoch is not None:
            on_pack_epoch(lambda: _pack_state(members, active, state, epoch + 1, started).stored(), bool(finished))

    run_stage(stacked, active, data, pack.epoch if pack is not None else 0, last_stage=True, on_epoch_end=report)
    return [m.result for m in members]  # type: ignore[misc]


def _run_alone(cfg: TrialConfig, start, on_epoch, on_done, on_pack_epoch) -> TrialResult:
    """A pack of one on the plain engine: `run_trial`, with the callbacks of a pack."""
    lengths = {"pretrain": cfg.pretrain_epochs, "train": cfg.epochs}

    def each_epoch(record, state):
        if on_epoch is not None:
            on_epoch(0, record)
        if on_pack_epoch is not None:
            on_pack_epoch(state, record["epoch"] == lengths[record["stage"]])

    result = run_trial(cfg, resume=start, on_epoch=each_epoch if on_epoch or on_pack_epoch else None)
    if on_done is not None:
        on_done(0, result)
    return result


def run_pretraining_pack(configs: list[TrialConfig | dict[str, Any]], on_epoch: OnPretrainEpoch) -> list[list[dict]]:
    """Pretrain the members together, each to its `pretrain_epochs`; return their histories.

    How shared pretraining packs: members share the architecture (PACK_FIELDS) and pretrain on
    the train set's inputs (one copy, nothing zeroed), each with its own random labels, order,
    lr and momentum. `on_epoch(i, record, state)` follows each epoch of member i, where
    `state()` is `{"model", "history", "elapsed_s"}`; a member that diverges stops. Records
    and weights equal `run_trial(cfg, pretrain_only=True)` bit for bit (MLPs, tested).
    """
    cfgs = [c if isinstance(c, TrialConfig) else make_config(c) for c in configs]
    if len({pack_signature(c) for c in cfgs}) != 1 or not can_pack(cfgs[0]):
        raise ValueError("a pretraining pack needs one architecture, trained with the default speed options")
    if not all(can_pack_pretraining(c) and c.pretrain_epochs >= 1 for c in cfgs):
        raise ValueError("a pretraining pack needs pretrain_epochs > 0 on the train set's own inputs "
                         "(pretrain_copies 1, pretrain_zero_out 0)")
    device, data = prepare(cfgs[0])
    members = [Member(i, c) for i, c in enumerate(cfgs)]
    models, init = [], []
    for m in members:
        model = init_model(m.cfg, data, device)
        init.append([p.detach().clone() for p in model.parameters()])
        m.stage = plan_stages(m.cfg, data, device)[0]
        models.append(model)
    engine = StackedEngine(cfgs, models, init, [m.stage for m in members], None, data, device)

    def report(epoch, active, finished, state):
        for k, m in enumerate(active):
            on_epoch(m.index, m.history[-1], lambda k=k, m=m: {
                "model": engine.member_weights(k), "history": list(m.history), "elapsed_s": m.elapsed_s})

    run_stage(engine, members, data, 0, last_stage=False, on_epoch_end=report)
    return [m.history for m in members]


def _start_members(members: list[Member], data, device, pack: PackState | None, pretrained, on_epoch,
                   on_pack_epoch) -> dict[int, Start]:
    """Each member's start of its clean phase (pretrained, resumed or fresh) by member index; a
    member that has already ended gets its result instead."""
    starts: dict[int, Start] = {}
    saved = pack.members if pack is not None else [None] * len(members)
    given = pretrained or [None] * len(members)
    for m in members:
        model = init_model(m.cfg, data, device)
        init = [p.detach().clone() for p in model.parameters()]
        stages = plan_stages(m.cfg, data, device)
        m.stage = stages[-1]
        state = saved[m.index]
        if state is not None:
            m.history = list(state.history)
            m.elapsed_s = state.elapsed_s
            if state.summary is not None:
                m.result = TrialResult(dict(state.summary), m.history)
                continue
            model.load_state_dict(state.model)
            m.stage.gen.set_state(state.generator)
            starts[m.index] = Start(model, init, [b.to(device) for b in state.momentum])
            continue
        start = TrialState.of(given[m.index]) if given[m.index] is not None else None
        if m.cfg.pretrain_epochs > 0 and start is None:
            start = _pretrain_alone(m, on_epoch, on_pack_epoch)
        if start is not None:
            model.load_state_dict(start.model)
            m.history = list(start.history)
            m.elapsed_s = start.elapsed_s
            if start.position.stage >= len(stages):  # diverged while pretraining: no clean phase
                m.result = run_trial(m.cfg, resume=start)
                continue
        starts[m.index] = Start(model, init, [torch.zeros_like(p) for p in model.parameters()])
    return starts


def _pretrain_alone(m: Member, on_epoch, on_pack_epoch) -> TrialState:
    """A member without a shared snapshot pretrains by itself, reporting as it goes."""
    captured: dict[str, Any] = {}

    def keep_last(record, state):
        if on_epoch is not None:
            on_epoch(m.index, record)
        if on_pack_epoch is not None:
            on_pack_epoch(None, False)  # no pack to checkpoint yet
        if record["diverged"] or record["epoch"] == m.cfg.pretrain_epochs:
            now = state()
            captured.update({**now, "model": {k: v.clone() for k, v in now["model"].items()},
                             "history": list(now["history"])})

    run_trial(m.cfg, on_epoch=keep_last, pretrain_only=True)
    return TrialState.of(captured)


def _pack_state(members: list[Member], active: list[Member], state, epoch: int, started: float) -> PackState:
    """The whole pack's resumable state after `epoch` pack epochs: the state of each member still
    training (`state(k)` of its position in `active`), the summary of each one done."""
    slot = {m.index: k for k, m in enumerate(active) if m.result is None}
    states = []
    for m in members:
        k = slot.get(m.index)
        own = state(k) if k is not None else {}
        states.append(MemberState(m.cfg.to_dict(), list(m.history), m.elapsed_s,
                                  m.result.summary if m.result is not None else None,
                                  own.get("model"), own.get("momentum"), own.get("generator")))
    return PackState(epoch, states, time.perf_counter() - started)
