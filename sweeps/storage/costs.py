"""What a trial cost, from what storage already holds: the CPUs and GPUs its Ray trial asked of
Ray (the spec's `resources`), held for Tune's `time_total_s` of that Ray trial, a pack's share
split over its members by the epochs each ran. `export`, `status` and the report use these
rules; nothing is counted in the epoch loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HeldResources:
    """The CPUs and GPUs each Ray trial of a sweep held, by the run that made its Tune experiment:
    the sweep's first run (`first`), or an extension (per part folder, `part-<k>`, which
    extension made it and what its Ray trials held). See `sweep_files.held_resources`."""

    first: tuple[float, float]
    parts: dict[str, tuple[int, tuple[float, float]]] = field(default_factory=dict)

    def of_part(self, part: str) -> tuple[int, tuple[float, float]]:
        """(which extension made the part: 0 for the first run, the CPUs and GPUs it held)."""
        return self.parts.get(part, (0, self.first))

    def of_trial(self, trial_dir: str) -> tuple[float, float]:
        """What the Ray trial in `trial_dir` held (`<sweep>/trial_*` or `<sweep>/part-<k>/trial_*`)."""
        folders = trial_dir.rstrip("/").split("/")
        return self.of_part(folders[-2] if len(folders) > 1 else "")[1]


def epochs_run(final: dict[str, Any] | None, epoch_rows: int) -> int:
    """A trial's epochs: those its final row counts (`step`: its epoch rows, both stages), else
    the epoch rows stored so far (a trial still running or one that raised)."""
    if final is not None and final.get("step") is not None:
        return int(final["step"])
    return epoch_rows


def shares(epochs: list[int]) -> list[float]:
    """Each member's fraction of its Ray trial, by the epochs it ran (even while none has run one)."""
    total = sum(epochs)
    if total <= 0:
        return [1.0 / len(epochs)] * len(epochs) if epochs else []
    return [e / total for e in epochs]


def held_s(seconds: float | None, per_ray_trial: float, share: float = 1.0) -> float | None:
    """CPU- or GPU-seconds: `per_ray_trial` of them held by a Ray trial for `seconds`, or a
    member's `share` of that (None when the time is not known)."""
    return None if seconds is None else per_ray_trial * seconds * share
