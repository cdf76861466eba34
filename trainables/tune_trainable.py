"""The trial as a Ray Tune function trainable: reports every epoch, checkpoints every k epochs.

Ray imports stay inside the function so `run_trial` works without Ray on the path. Keys of the
Tune config that start with `_` are sweep settings, not trial fields (see sweeps.keys).
"""

from __future__ import annotations

import tempfile
from typing import Any

from .config import make_config

FINAL_KEY = "final"  # the last report carries the trial's summary and final=True
CHECKPOINT_EVERY_KEY = "_checkpoint_every"
PACK_FILE = "pack_state.pt"
SEEDS_KEY = "_seeds"  # optuna sweeps: the seed list, indexed by Ray's Repeater
REPEAT_INDEX_KEY = "__trial_index__"  # set by ray.tune.search.Repeater
MEMBERS_KEY = "_members"  # packed trials: the member trial configs, run as one stacked model
SNAPSHOTS_KEY = "_snapshots"  # where the sweep's shared pretraining snapshots are
MEMBER_KEY = "member"  # in each report of a packed trial: which member it belongs to
# One Tune report may carry many rows: Ray spends ~10 ms of driver time per report (measured
# here), so a pack reports once per epoch, not once per member and epoch.
RECORDS_KEY = "records"


def report_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows in one Tune report: its `records`, or the report itself."""
    rows = result.get(RECORDS_KEY)
    return rows if rows is not None else [result]


def trial_values(tune_config: dict[str, Any]) -> dict[str, Any]:
    """The trial config fields in a Ray Tune config: reserved `_` keys dropped, the seed resolved."""
    values = {k: v for k, v in tune_config.items() if not k.startswith("_")}
    if REPEAT_INDEX_KEY in tune_config and SEEDS_KEY in tune_config:
        values["seed"] = tune_config[SEEDS_KEY][tune_config[REPEAT_INDEX_KEY]]
    return values


def member_values(tune_config: dict[str, Any]) -> list[dict[str, Any]]:
    """The trial configs a Ray trial runs: its members when packed, else itself."""
    if MEMBERS_KEY in tune_config:
        return [trial_values(v) for v in tune_config[MEMBERS_KEY]]
    return [trial_values(tune_config)]


def _final_report(summary: dict[str, Any], steps: int) -> dict[str, Any]:
    final = {k: v for k, v in summary.items() if k != "config"}
    return {**final, "stage": "final", "step": steps, FINAL_KEY: True}


def tune_trainable(config: dict[str, Any]) -> None:
    """Run one trial (or one pack of trials) under Ray Tune, resuming from Tune's checkpoint
    when there is one, else starting from a shared pretraining snapshot when there is one."""
    if MEMBERS_KEY in config:
        return _run_packed(config)
    from ray import tune

    from .checkpoint import load_state, save_state  # torch: imported in the worker, not by the CLI
    from .trial import run_trial

    cfg = make_config(trial_values(config))
    every = int(config.get(CHECKPOINT_EVERY_KEY, 1))
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_state(d, cfg.to_dict())
    elif config.get(SNAPSHOTS_KEY):
        resume = _shared_start(cfg, config[SNAPSHOTS_KEY])
        if resume is not None:  # the pretraining epochs it did not run itself, in one report
            tune.report({RECORDS_KEY: [{**r, FINAL_KEY: False} for r in resume["history"]]})

    def report_epoch(record: dict[str, Any], snapshot) -> None:
        stage_end = record["epoch"] == (cfg.pretrain_epochs if record["stage"] == "pretrain" else cfg.epochs)
        if record["step"] % every and not stage_end:
            tune.report({**record, FINAL_KEY: False})
            return
        with tempfile.TemporaryDirectory() as d:
            save_state(snapshot(), d)
            tune.report({**record, FINAL_KEY: False}, checkpoint=tune.Checkpoint.from_directory(d))

    result = run_trial(cfg, resume=resume, on_epoch=report_epoch)
    tune.report(_final_report(result.summary, len(result.history)))


def _shared_start(cfg, store: str) -> dict[str, Any] | None:
    from .pretraining import resume_state_from_snapshot
    from .trial import resolve_device

    return resume_state_from_snapshot(cfg, store, resolve_device(cfg.device).type)


def _run_packed(config: dict[str, Any]) -> None:
    """A pack: every member's epochs and final summary as rows with its `member` index.

    One report per pack epoch carries all its rows (and the pack checkpoint when one is due),
    so a restored pack never misses a row it made before its checkpoint.
    """
    import torch
    from ray import tune

    from .packed import PACK_FORMAT, run_pack

    cfgs = [make_config(v) for v in member_values(config)]
    every = int(config.get(CHECKPOINT_EVERY_KEY, 1))
    resume, pretrained = None, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(f"{d}/{PACK_FILE}", map_location="cpu", weights_only=True)
        if resume.get("format") != PACK_FORMAT:
            raise RuntimeError(f"pack checkpoint has format {resume.get('format')}, expected {PACK_FORMAT}")
    elif config.get(SNAPSHOTS_KEY):
        pretrained = [_shared_start(c, config[SNAPSHOTS_KEY]) for c in cfgs]
    pending: list[dict[str, Any]] = []
    for i, start in enumerate(pretrained or []):
        pending += [{**r, MEMBER_KEY: i, FINAL_KEY: False} for r in (start or {}).get("history", [])]
    epochs = [0]

    def on_epoch(i: int, record: dict[str, Any]) -> None:
        pending.append({**record, MEMBER_KEY: i, FINAL_KEY: False})

    def on_done(i: int, result) -> None:
        pending.append({**_final_report(result.summary, len(result.history)), MEMBER_KEY: i})

    def on_pack_epoch(snapshot, finished: bool) -> None:
        if snapshot is not None:
            epochs[0] += 1
        if not pending:
            return
        report = {RECORDS_KEY: list(pending)}
        pending.clear()
        if snapshot is not None and (finished or epochs[0] % every == 0):
            with tempfile.TemporaryDirectory() as d:
                torch.save(snapshot(), f"{d}/{PACK_FILE}")
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(report)

    run_pack(cfgs, resume=resume, pretrained=pretrained, on_epoch=on_epoch, on_done=on_done,
             on_pack_epoch=on_pack_epoch)
    on_pack_epoch(None, False)
