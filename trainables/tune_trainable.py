"""The trial as a Ray Tune function trainable: reports every epoch with a checkpoint.

Ray imports stay inside the function so `run_trial` works without Ray installed on the path.
"""

from __future__ import annotations

import tempfile
from typing import Any

from .checkpoint import load_state, save_state
from .config import make_config
from .trial import run_trial

FINAL_KEY = "final"  # the last report carries the trial's summary and final=True


def tune_trainable(config: dict[str, Any]) -> None:
    """Run one trial under Ray Tune, resuming from Tune's checkpoint when there is one."""
    from ray import tune

    cfg = make_config(config)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_state(d, cfg.to_dict())

    def report_epoch(record: dict[str, Any], snapshot) -> None:
        with tempfile.TemporaryDirectory() as d:
            save_state(snapshot(), d)
            tune.report({**record, FINAL_KEY: False}, checkpoint=tune.Checkpoint.from_directory(d))

    result = run_trial(cfg, resume=resume, on_epoch=report_epoch)
    final = {k: v for k, v in result.summary.items() if k != "config"}
    tune.report({**final, "stage": "final", FINAL_KEY: True})
