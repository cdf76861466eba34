import os
import socket
from pathlib import Path

import pytest

# Tests generate mnist1d into their own cache unless one is given (CI: a fresh folder per run).
os.environ.setdefault("MINIMA_DATA_DIR", str(Path(__file__).resolve().parent.parent / ".test-data"))
# Token authentication, as for Ray's local default, also for the clusters tests start in this
# process (Ray reads the mode once, when first imported). test_locked_doors runs without it set.
os.environ.setdefault("RAY_AUTH_MODE", "token")


@pytest.fixture
def offline(monkeypatch):
    """No connection leaves this process: a test that must stay offline fails loudly instead."""
    def refuse(*args, **kwargs):
        raise RuntimeError("this test must stay offline: it tried to open a connection")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection")):
        monkeypatch.setattr(owner, name, refuse)
    return refuse


@pytest.fixture
def tiny() -> dict:
    """A trial config that runs in about a second: small MLP, few epochs, no flatness draws."""
    return {"width": 32, "depth": 2, "pretrain_epochs": 2, "epochs": 3, "flatness_samples": 0}
