"""What a sweep's run left: trials per status (pack members one by one), and whether MLflow
holds them all."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainables.reports import final_rows, is_final, member_values

from ..design.keys import KnownKeys
from ..design.spec import SweepSpec
from ..storage.results import read_result_rows
from ..storage.sweep_files import experiment_path

if TYPE_CHECKING:
    from ..tracking.mlflow_audit import MlflowAudit


@dataclass
class SweepOutcome:
    name: str
    path: str
    total: int
    counts: dict[str, int]  # ok / diverged / error / unfinished
    mlflow: MlflowAudit | None = None  # None when the sweep was not logged
    storage: str = ""
    tracking_uri: str = ""

    @property
    def all_finished(self) -> bool:
        return self.counts.get("unfinished", 0) == 0


def tally(grid, experiment_dir: str, known: KnownKeys) -> tuple[Counter, int, set[str]]:
    """One Tune experiment's counts per status, how many trials it holds (pack members one by
    one), and the keys of those that finished (`known`: the plan's)."""
    counts: Counter = Counter()
    seen = 0
    finished: set[str] = set()
    for result in grid:
        members = member_values(result.config or {})
        seen += len(members)
        if len(members) == 1:
            finals = {0: result.metrics} if is_final(result.metrics or {}) else {}
        else:
            trial_dir = f"{experiment_dir}/{result.path.rstrip('/').rsplit('/', 1)[-1]}"
            finals = final_rows(read_result_rows(trial_dir))
        for i in finals:
            counts[finals[i].get("status") or "ok"] += 1
            finished.add(known.of(members[i]).trial)
        counts["error" if result.error is not None else "unfinished"] += len(members) - len(finals)
    return counts, seen, finished


def sweep_outcome(spec: SweepSpec, counts: Counter, seen: int) -> SweepOutcome:
    """The sweep's outcome from its counts (of every part) and the trials its experiments hold:
    trials never started count as unfinished. Whether MLflow holds every finished trial is the
    caller's to add (`mlflow`), once its writer has stopped."""
    counts = Counter(counts)
    total = spec.num_trials()
    if spec.search.kind == "boundary":  # its budget is a cap, not a count of trials owed
        total = seen
    counts["unfinished"] += max(0, total - seen)
    return SweepOutcome(spec.name, experiment_path(spec), total, {k: v for k, v in counts.items() if v}, None,
                        spec.storage, spec.tracking_uri)
