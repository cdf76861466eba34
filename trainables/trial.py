"""One trial: optional label-noise pretraining, then clean training; `run_trial(config)`.

A trial is a pure function of its frozen config (and machine/thread count). Each epoch is
reported through `on_epoch` with a callable that returns the resumable state (`TrialState`,
stored form); a trial given that state back finishes exactly as if it had never stopped.
"""

from __future__ import annotations

from typing import Any, Callable

from .config import TrialConfig, make_config
from .loop import Member, TrialResult, finish, measure_local_energy, run_stage
from .plain_engine import PlainEngine
from .stages import init_model, plan_stages, prepare
from .state import Position, TrialState

OnEpoch = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]


def run_trial(
    config: TrialConfig | dict[str, Any],
    *,
    resume: TrialState | dict[str, Any] | None = None,
    on_epoch: OnEpoch | None = None,
    pretrain_only: bool = False,
) -> TrialResult:
    """Run one trial to the end and return its summary and per-epoch history.

    `resume` is a `TrialState` (or its stored form) from a checkpoint (see `trainables.checkpoint`)
    or a shared pretraining snapshot (see `trainables.pretraining`); `on_epoch(record, state)`
    is called after every epoch, and `state()` returns the resumable state's stored form, what
    a checkpoint holds. `pretrain_only` stops after the pretraining stage, with an empty
    summary: how shared pretraining runs the same code.
    """
    cfg = config if isinstance(config, TrialConfig) else make_config(config)
    device, data = prepare(cfg)
    model = init_model(cfg, data, device)
    engine = PlainEngine(cfg, model, data, device)  # its distance from init is from this init
    stages = plan_stages(cfg, data, device)
    member = Member(0, cfg)
    position = Position(0, 0)
    start = TrialState.of(resume) if resume is not None else None
    if start is not None:
        model.load_state_dict(start.model)
        member.history = list(start.history)
        position = start.position
        member.elapsed_s = start.elapsed_s

    for s_index in range(position.stage, len(stages)):
        member.stage = stage = stages[s_index]
        resumes_here = start is not None and s_index == position.stage and start.mid_stage
        engine.start_stage(stage, start.optimizer if resumes_here else None)
        if resumes_here:
            stage.gen.set_state(start.generator)

        def report(epoch, active, finished, state, s_index=s_index):
            if on_epoch is None:
                return
            record = member.history[-1]
            next_position = (Position(len(stages) if record["diverged"] else s_index + 1, 0) if finished
                             else Position(s_index, epoch + 1))
            on_epoch(record, lambda: TrialState(config=cfg.to_dict(), position=next_position, state_stage=s_index,
                                                **state(0)).stored())

        last = s_index == len(stages) - 1 and not pretrain_only
        run_stage(engine, [member], data, position.epoch if s_index == position.stage else 0, last_stage=last,
                  on_epoch_end=report)
        if member.diverged or (pretrain_only and stage.name == "pretrain"):
            break

    if pretrain_only:
        return TrialResult({}, member.history)
    if member.result is None:  # no clean epoch left to run: resumed at its end, or diverged pretraining
        member.result = finish(member, device, measure_local_energy(engine, [member], [0]).get(0))
    return member.result
