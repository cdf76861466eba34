"""The Ray Tune trainable, the one driver above the loop: a Ray trial's members, reported in
batches, checkpointed every k epochs.

A Ray trial runs a pack of members (its Tune config's `_members`, or itself: one member). A pack
of one runs on the plain engine as a lone trial, a larger one on the stacked engine, and a
trial resumed from a pack's checkpoint as the pack it was (`run_pack`'s `engine`). Either way
one path resumes it from Tune's checkpoint, or runs the pretrainings it owns and starts its
members from shared snapshots, then batches its rows and keeps its checkpoint cadence. What
differs with the engine is stored format: a lone trial's rows name no member and its last
report carries its final row on top, where readers and Tune's searchers look; its checkpoint
is a `TrialState`, a pack's a `PackState`.

Ray imports stay inside the functions so `run_trial` works without Ray on the path. The rows it
reports, and the Tune config keys of packs and seeds, are `reports`'s format.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from typing import Any, Callable

from .config import make_config
from .reports import RECORDS_KEY, epoch_row, final_row, member_values

CHECKPOINT_EVERY_KEY = "_checkpoint_every"
SNAPSHOTS_KEY = "_snapshots"  # where the sweep's shared pretraining snapshots are
PRETRAIN_KEY = "_pretrain"  # an owner trial's shared pretrainings, run before it starts (SnapshotGate)
# One Tune report may carry many rows. Each report costs driver CPU and stalls the trial for a
# round trip to the driver (Tune's function trainables wait for it), so epochs are batched: a
# report at most every REPORT_EVERY_S, and always with a checkpoint.
REPORT_EVERY_S = 2.0
ACCELERATOR_LABEL = "ray.io/accelerator-type"  # the node label Ray sets from the GPU it finds there, e.g. "H100"


class _BatchedReports:
    """Rows for Tune, sent in one report per REPORT_EVERY_S, or at once with a checkpoint.

    A checkpoint goes out with every row made before it, so a restored trial misses none; rows
    after it are made again on restore. `latest_on_top`: the report also carries its latest
    row's fields at the top level, where Tune's searchers look for their metric.
    """

    def __init__(self, latest_on_top: bool):
        self.rows: list[dict[str, Any]] = []
        self.latest_on_top = latest_on_top
        self._sent_at = time.monotonic()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def send(self, checkpoint_dir: str | None = None, force: bool = False) -> None:
        from ray import tune

        due = force or time.monotonic() - self._sent_at >= REPORT_EVERY_S
        if checkpoint_dir is None and not (self.rows and due):
            return
        report = {**(self.rows[-1] if self.latest_on_top and self.rows else {}), RECORDS_KEY: list(self.rows)}
        self.rows.clear()
        self._sent_at = time.monotonic()
        if checkpoint_dir is None:
            tune.report(report)
        else:
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))

    def send_checkpoint(self, save: Callable[[str], None]) -> None:
        with tempfile.TemporaryDirectory() as d:
            save(d)
            self.send(checkpoint_dir=d)


def tune_trainable(config: dict[str, Any]) -> None:
    """Run one Ray trial's members under Ray Tune, resuming from Tune's checkpoint when there is
    one, else starting each member from a shared pretraining snapshot where there is one.

    A checkpoint follows every `_checkpoint_every` epochs of the trial's position (a lone
    trial's epochs of both stages, a pack's epochs together), and every epoch where a stage
    ended (`run_pack`'s `ended`), so a resumed trial checkpoints where an unbroken one does.
    """
    from ray import tune

    from .checkpoint import load_checkpoint, save_pack_state, save_state  # torch: in the worker, not the CLI
    from .packed import run_pack
    from .state import PackState

    cfgs = [make_config(v) for v in member_values(config)]
    every = int(config.get(CHECKPOINT_EVERY_KEY, 1))
    accelerator = held_accelerator_type()
    resume, starts = None, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_checkpoint(d, [c.to_dict() for c in cfgs])
    lone = len(cfgs) == 1 and not isinstance(resume, PackState)
    member = (lambda i: None) if lone else (lambda i: i)  # a lone trial's rows name no member
    reports = _BatchedReports(latest_on_top=lone)
    if checkpoint is None and config.get(SNAPSHOTS_KEY):
        _run_owned_pretrainings(config)
        starts = [_shared_start(c, config[SNAPSHOTS_KEY]) for c in cfgs]
        for i, start in enumerate(starts):
            for record in start.history if start is not None else []:  # the pretraining epochs it did not run
                reports.add(epoch_row(record, member(i)))
    epochs = [_epochs_done(resume, starts, lone)]
    save = save_state if lone else save_pack_state

    def on_epoch(i: int, record: dict[str, Any]) -> None:
        reports.add(epoch_row(record, member(i)))

    def on_done(i: int, result) -> None:
        reports.add(final_row({**result.summary, "accelerator_type": accelerator}, len(result.history), member(i)))

    def on_pack_epoch(state, ended: bool) -> None:
        if state is not None:
            epochs[0] += 1
        if state is not None and (ended or epochs[0] % every == 0):
            reports.send_checkpoint(lambda d: save(state(), d))
        else:
            reports.send()

    with _rows_kept_on_error(reports):
        run_pack(cfgs, engine="plain" if lone else "stacked", resume=resume, pretrained=starts, on_epoch=on_epoch,
                 on_done=on_done, on_pack_epoch=on_pack_epoch)
    reports.send(force=True)  # the last report; a lone trial's final row on top, where Tune's result is read


def _epochs_done(resume, starts, lone: bool) -> int:
    """Epochs of the trial's position before this run: a lone trial's in both stages, a pack's
    together (its members' pretrainings are their own)."""
    if resume is not None:
        return len(resume.history) if lone else resume.epoch
    if lone and starts and starts[0] is not None:
        return len(starts[0].history)
    return 0


def held_accelerator_type() -> str | None:
    """The type of the accelerator this Ray trial holds (its node's, as Ray reports it), recorded
    in its final rows for the cost columns; None when it holds none, or runs outside Ray."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if not any(context.get_accelerator_ids().values()):
        return None
    kind = context.get_node_labels().get(ACCELERATOR_LABEL)
    if kind is None:  # a node without the label: its `accelerator_type:<type>` resource says the same
        node = next((n for n in ray.nodes() if n["NodeID"] == context.get_node_id()), {})
        kind = next((r.split(":", 1)[1] for r in node.get("Resources", {}) if r.startswith("accelerator_type:")), None)
    return kind


@contextlib.contextmanager
def _rows_kept_on_error(reports: _BatchedReports):
    """A trial that raises still reports the rows it made (a killed one makes them again)."""
    try:
        yield
    except Exception:
        reports.send(force=True)
        raise


def _run_owned_pretrainings(config: dict[str, Any]) -> None:
    """The shared pretrainings this trial was handed as their owner (none for most trials)."""
    if config.get(PRETRAIN_KEY):
        from .pretraining import PretrainJob, run_owned_pretrainings

        groups = [[PretrainJob.from_tune(job) for job in group] for group in config[PRETRAIN_KEY]]
        run_owned_pretrainings(groups, config[SNAPSHOTS_KEY])


def _shared_start(cfg, store: str):
    """The member's `TrialState` at the end of its pretraining, from a shared snapshot; or None."""
    from .pretraining import resume_state_from_snapshot
    from .stages import resolve_device
    from .state import TrialState

    start = resume_state_from_snapshot(cfg, store, resolve_device(cfg.device).type)
    return TrialState.of(start) if start is not None else None
