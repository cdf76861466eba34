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
SEEDS_KEY = "_seeds"  # optuna sweeps: the seed list, indexed by Ray's Repeater
REPEAT_INDEX_KEY = "__trial_index__"  # set by ray.tune.search.Repeater


def trial_values(tune_config: dict[str, Any]) -> dict[str, Any]:
    """The trial config fields in a Ray Tune config: reserved `_` keys dropped, the seed resolved."""
    values = {k: v for k, v in tune_config.items() if not k.startswith("_")}
    if REPEAT_INDEX_KEY in tune_config and SEEDS_KEY in tune_config:
        values["seed"] = tune_config[SEEDS_KEY][tune_config[REPEAT_INDEX_KEY]]
    return values


def tune_trainable(config: dict[str, Any]) -> None:
    """Run one trial under Ray Tune, resuming from Tune's checkpoint when there is one."""
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

    def report_epoch(record: dict[str, Any], snapshot) -> None:
        stage_end = record["epoch"] == (cfg.pretrain_epochs if record["stage"] == "pretrain" else cfg.epochs)
        if record["step"] % every and not stage_end:
            tune.report({**record, FINAL_KEY: False})
            return
        with tempfile.TemporaryDirectory() as d:
            save_state(snapshot(), d)
            tune.report({**record, FINAL_KEY: False}, checkpoint=tune.Checkpoint.from_directory(d))

    result = run_trial(cfg, resume=resume, on_epoch=report_epoch)
    final = {k: v for k, v in result.summary.items() if k != "config"}
    tune.report({**final, "stage": "final", "step": len(result.history), FINAL_KEY: True})
