"""The trial as a Ray Tune function trainable: reports its epochs in batches, checkpoints every k epochs.

Ray imports stay inside the function so `run_trial` works without Ray on the path. The rows it
reports, and the Tune config keys of packs and seeds, are `reports`'s format.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from typing import Any, Callable

from .config import make_config
from .reports import MEMBERS_KEY, RECORDS_KEY, epoch_row, final_row, member_values, tune_config_values

CHECKPOINT_EVERY_KEY = "_checkpoint_every"
PACK_FILE = "pack_state.pt"
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
    """Run one trial (or one pack of trials) under Ray Tune, resuming from Tune's checkpoint
    when there is one, else starting from a shared pretraining snapshot when there is one."""
    if MEMBERS_KEY in config:
        if len(config[MEMBERS_KEY]) > 1 or resumes_a_pack():
            return _run_packed(config)
        # a grid's lone trial among its packs (Tune's grid lists both as member lists)
        config = {**{k: v for k, v in config.items() if k != MEMBERS_KEY}, **config[MEMBERS_KEY][0]}
    from ray import tune

    from .checkpoint import load_state, save_state  # torch: imported in the worker, not by the CLI
    from .trial import run_trial

    cfg = make_config(tune_config_values(config))
    every = int(config.get(CHECKPOINT_EVERY_KEY, 1))
    accelerator = held_accelerator_type()
    reports = _BatchedReports(latest_on_top=True)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_state(d, cfg.to_dict())
    elif config.get(SNAPSHOTS_KEY):
        _run_owned_pretrainings(config)
        resume = _shared_start(cfg, config[SNAPSHOTS_KEY])
        for record in (resume or {}).get("history", []):  # the pretraining epochs it did not run itself
            reports.add(epoch_row(record))

    def report_epoch(record: dict[str, Any], state) -> None:
        reports.add(epoch_row(record))
        stage_end = record["epoch"] == (cfg.pretrain_epochs if record["stage"] == "pretrain" else cfg.epochs)
        if record["step"] % every and not stage_end:
            reports.send()
        else:
            reports.send_checkpoint(lambda d: save_state(state(), d))

    with _rows_kept_on_error(reports):
        result = run_trial(cfg, resume=resume, on_epoch=report_epoch)
    reports.add(final_row({**result.summary, "accelerator_type": accelerator}, len(result.history)))
    reports.send(force=True)  # the last report: the final row on top, where Tune's result is read


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


def resumes_a_pack() -> bool:
    """Whether Tune restores this trial from a pack's checkpoint (a checkpoint of a pack of one
    member resumes as a pack, not as a plain trial)."""
    import pyarrow.fs
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    info = checkpoint.filesystem.get_file_info(f"{checkpoint.path.rstrip('/')}/{PACK_FILE}")  # no download
    return info.type == pyarrow.fs.FileType.File


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


def _shared_start(cfg, store: str) -> dict[str, Any] | None:
    from .pretraining import resume_state_from_snapshot
    from .stages import resolve_device

    return resume_state_from_snapshot(cfg, store, resolve_device(cfg.device).type)


def _run_packed(config: dict[str, Any]) -> None:
    """A pack: every member's epochs and final summary as rows with its `member` index.

    Rows go out in batches (`_BatchedReports`), each checkpoint with every row made before it,
    so a restored pack never misses a row it made before its checkpoint.
    """
    import torch
    from ray import tune

    from .packed import PACK_FORMAT, run_pack

    cfgs = [make_config(v) for v in member_values(config)]
    every = int(config.get(CHECKPOINT_EVERY_KEY, 1))
    accelerator = held_accelerator_type()
    resume, pretrained = None, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(f"{d}/{PACK_FILE}", map_location="cpu", weights_only=True)
        if resume.get("format") != PACK_FORMAT:
            raise RuntimeError(f"pack checkpoint has format {resume.get('format')}, expected {PACK_FORMAT}")
    elif config.get(SNAPSHOTS_KEY):
        _run_owned_pretrainings(config)
        pretrained = [_shared_start(c, config[SNAPSHOTS_KEY]) for c in cfgs]
    reports = _BatchedReports(latest_on_top=False)
    for i, start in enumerate(pretrained or []):
        for r in (start or {}).get("history", []):
            reports.add(epoch_row(r, i))
    epochs = [0]

    def on_epoch(i: int, record: dict[str, Any]) -> None:
        reports.add(epoch_row(record, i))

    def on_done(i: int, result) -> None:
        reports.add(final_row({**result.summary, "accelerator_type": accelerator}, len(result.history), i))

    def on_pack_epoch(state, finished: bool) -> None:
        if state is not None:
            epochs[0] += 1
        if state is not None and (finished or epochs[0] % every == 0):
            reports.send_checkpoint(lambda d: torch.save(state(), f"{d}/{PACK_FILE}"))
        else:
            reports.send()

    with _rows_kept_on_error(reports):
        run_pack(cfgs, resume=resume, pretrained=pretrained, on_epoch=on_epoch, on_done=on_done,
                 on_pack_epoch=on_pack_epoch)
    reports.send(force=True)
