"""Resumable states: where a trial or a pack stands and what it needs to go on, typed.

Code reads and makes states through these types; checkpoint files and snapshots hold their
stored form (`stored()`, read back with `of`): plain dicts of primitives and tensors, so a
checkpoint loads with `weights_only=True`. A lone trial's state (`TrialState`) is also what a
shared snapshot starts a trial from; a pack's (`PackState`) holds one `MemberState` per member.
No torch import: tensors pass through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

PACK_FORMAT = 1  # a pack state's stored form


class Position(NamedTuple):
    """Where a lone trial stands: the index of the stage it runs or resumes next (the number of
    stages once the trial has ended, by finishing or diverging) and the epochs done in it."""

    stage: int
    epoch: int

    @classmethod
    def after_pretraining(cls, diverged: bool) -> "Position":
        """A pretrained trial's position once pretraining ends: its train stage next, or ended."""
        return cls(2 if diverged else 1, 0)  # its stages: pretrain, train


@dataclass
class TrialState:
    """A lone trial's resumable state: its checkpoint, or its start at the end of its pretraining
    (from a shared snapshot, or a pack member's own pretraining). `optimizer` and `generator` are
    those of stage `state_stage`; they resume that stage only when it is the position's stage
    (mid-stage), else the next stage starts with its own."""

    config: dict[str, Any]
    position: Position
    model: dict[str, Any]
    history: list[dict[str, Any]]
    elapsed_s: float
    state_stage: int = 0
    optimizer: dict[str, Any] | None = None
    generator: Any = None

    @property
    def mid_stage(self) -> bool:
        return self.state_stage == self.position.stage

    def stored(self) -> dict[str, Any]:
        stored = {"config": self.config, "position": list(self.position), "state_stage": self.state_stage,
                  "model": self.model}
        if self.optimizer is not None:
            stored["optimizer"] = self.optimizer
        if self.generator is not None:
            stored["generator"] = self.generator
        return {**stored, "history": self.history, "elapsed_s": self.elapsed_s}

    @classmethod
    def of(cls, state: "TrialState | dict[str, Any]") -> "TrialState":
        if isinstance(state, TrialState):
            return state
        return cls(state["config"], Position(*state["position"]), state["model"], state["history"],
                   state["elapsed_s"], state["state_stage"], state.get("optimizer"), state.get("generator"))


@dataclass
class MemberState:
    """A pack member in its pack's state: mid clean stage (weights, momentum, random stream), or
    ended (its summary, no weights)."""

    config: dict[str, Any]
    history: list[dict[str, Any]]
    elapsed_s: float
    summary: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    momentum: list[Any] | None = None
    generator: Any = None

    def stored(self) -> dict[str, Any]:
        return {"config": self.config, "history": self.history, "elapsed_s": self.elapsed_s, "summary": self.summary,
                "model": self.model, "momentum": self.momentum, "generator": self.generator}


@dataclass
class PackState:
    """A pack's resumable state after `epoch` epochs of its clean stage, which its members run
    together; `elapsed_s` is the pack's own time."""

    epoch: int
    members: list[MemberState]
    elapsed_s: float

    def stored(self) -> dict[str, Any]:
        return {"format": PACK_FORMAT, "epoch": self.epoch, "members": [m.stored() for m in self.members],
                "elapsed_s": self.elapsed_s}

    @classmethod
    def of(cls, state: "PackState | dict[str, Any]") -> "PackState":
        if isinstance(state, PackState):
            return state
        members = [MemberState(m["config"], m["history"], m["elapsed_s"], m["summary"], m["model"], m["momentum"],
                               m["generator"]) for m in state["members"]]
        return cls(state["epoch"], members, state["elapsed_s"])
