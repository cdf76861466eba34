"""Claim: the one driver above the epoch loop (`trainables.tune_trainable`) costs no more CPU than
the engines under it need: measured A/B against another checkout, a pack and a lone trial.

Runs `tune_trainable` in this process with Ray Tune's side faked (reports dropped, no
checkpoint to restore), as tests/test_tune_trainable.py does: a pack of 16 MLP-64 members x 30
clean epochs and a lone trial x 60, CPU seconds (`time.process_time`) of each, 3 times after a
warm-up. Prints one JSON line. A/B: run it alternately under each checkout,

    for r in 1 2 3; do for X in A B; do PYTHONPATH=$X python benchmarks/driver_cpu.py; done; done
"""

import json
import time

from ray import tune

from trainables import tune_trainable as trainable

BASE = {"dataset": "mnist1d", "model": "mlp", "width": 64, "depth": 2, "pretrain_epochs": 0, "epochs": 30,
        "stop_at_train_acc": None, "flatness_samples": 0, "device": "cpu", "torch_threads": 1}
PACK = {"_members": [dict(BASE, seed=s) for s in range(16)], "_checkpoint_every": 5}
LONE = {**dict(BASE, seed=0, epochs=60), "_checkpoint_every": 5}


def main() -> None:
    tune.report = lambda metrics, checkpoint=None: None
    tune.get_checkpoint = lambda: None
    trainable.REPORT_EVERY_S = 1e9  # rows go out with checkpoints and at the end, as in the tests
    trainable.tune_trainable(dict(LONE, epochs=2))  # warm-up: imports, the dataset
    out: dict[str, list[float]] = {"pack": [], "lone": []}
    for _ in range(3):
        for name, config in (("pack", PACK), ("lone", LONE)):
            started = time.process_time()
            trainable.tune_trainable(config)
            out[name].append(round(time.process_time() - started, 3))
    print(json.dumps({"benchmark": "driver_cpu", "cpu_s": out}))


if __name__ == "__main__":
    main()
