"""What a trial measures, by name, and the thresholds that read them: no torch here, so a
logger or an export can import the names without loading a training stack."""

from __future__ import annotations

import math

GLOBAL_MIN_TRAIN_ACC = 0.999  # "reached a global minimum": at most 0.1% of train rows wrong
MU_POINTS = 10  # mu_linear at every 10% of the clean phase's epoch cap, and where it ends

# Numeric per-epoch metrics and the summary's own, as loggers and exports name them.
EPOCH_METRICS = ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "pretrain_acc", "step_loss",
                 "grad_norm", "clipped_frac", "weight_norm", "dist_from_init", "l1_path_norm", "l2_path_norm",
                 "mu_linear", "epoch_time_s")
FINAL_METRICS = ("reached_global_min", "epochs_to_fit", "train_epochs", "pretrain_final_acc",
                 "local_energy_1pct", "local_energy_5pct", "local_energy_10pct", "wall_time_s")


def mu_due(epoch: int, epochs: int) -> bool:
    """Whether epoch index `epoch` (0-based) ends one of the MU_POINTS tenths of `epochs`."""
    return epoch + 1 in {math.ceil(k * epochs / MU_POINTS) for k in range(1, MU_POINTS + 1)}
