import os
from pathlib import Path

import pytest

# Tests generate mnist1d into their own cache unless one is given (CI: a fresh folder per run).
os.environ.setdefault("MINIMA_DATA_DIR", str(Path(__file__).resolve().parent.parent / ".test-data"))


@pytest.fixture
def tiny() -> dict:
    """A trial config that runs in about a second: small MLP, few epochs, no flatness draws."""
    return {"width": 32, "depth": 2, "pretrain_epochs": 2, "epochs": 3, "flatness_samples": 0}
