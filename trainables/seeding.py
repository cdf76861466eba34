"""Independent random streams per purpose, all derived from the trial's one `seed`.

Separate streams keep results comparable across configs: the init and the pretraining stream
do not depend on clean-phase settings, so a pretraining of 50 epochs is the exact prefix of
one of 100, and the clean phase draws the same batches whatever came before it.
"""

from __future__ import annotations

import numpy as np
import torch

STREAMS = ("init", "labels", "pretrain", "train", "flatness")


def stream_seed(seed: int, stream: str) -> int:
    return int(np.random.SeedSequence([seed, STREAMS.index(stream)]).generate_state(1, np.uint64)[0] >> 1)


def generator(seed: int, stream: str, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(stream_seed(seed, stream))
    return g
