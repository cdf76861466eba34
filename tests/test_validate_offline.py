"""`minima validate` checks a sweep file without its cluster's network: a cluster sweep such as
sweeps/phase_cifar10.yaml validates on a laptop, and says where it can run. `--online` does what
`minima run` does before any trial: a write to the storage, a request to the tracking server.

The S3 endpoint (pyarrow reads AWS_ENDPOINT_URL) and the tracking server are a TCP listener in
this test that counts the connections it is offered: offline, none may come.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PHASE = str(ROOT / "sweeps" / "phase_cifar10.yaml")
SMOKE = str(ROOT / "sweeps" / "smoke.yaml")


@pytest.fixture
def listener():
    """A port that accepts connections and closes them at once, counting them."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    hits = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            hits.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}", hits
    srv.close()


def validate(*args: str, endpoint: str) -> subprocess.CompletedProcess:
    """`minima validate` with no AWS credentials and every S3 request sent to `endpoint`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING_"))}
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_EC2_METADATA_DISABLED="true", RAY_ADDRESS="")
    return subprocess.run([sys.executable, "-m", "minima.cli", "validate", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


def test_a_cluster_sweep_validates_offline_and_says_it_needs_a_gpu_cluster(listener):
    endpoint, hits = listener
    out = validate(PHASE, "--set", f"tracking_uri={endpoint}", endpoint=endpoint)
    assert out.returncode == 0, out.stderr
    assert hits == []  # neither the bucket nor the tracking server was contacted
    assert "trials    3240" in out.stdout
    assert "target    a Ray cluster with GPU workers (0.25 GPU per trial): storage is an object store" in out.stdout
    from sweeps.cluster.ray_cluster import local_resources

    gpus = local_resources().get("GPU", 0)
    assert (f"target    not this machine as it is: 0.25 GPU per trial, {gpus:g} here" in out.stdout) == (gpus < 0.25)
    assert "note      storage: shipped placeholders; set yours with --set storage=..." in out.stdout
    assert "checked   the file only (offline)" in out.stdout


def test_the_shipped_file_as_it_is_names_both_placeholders(listener):
    endpoint, hits = listener
    out = validate(PHASE, endpoint=endpoint)
    assert out.returncode == 0 and hits == [], out.stderr
    assert "note      storage, tracking_uri: shipped placeholders" in out.stdout


def test_online_writes_to_the_storage_first_and_fails_on_one_line(listener):
    endpoint, hits = listener
    out = validate(PHASE, "--online", endpoint=endpoint)
    assert out.returncode == 2 and hits, out.stdout
    line, = out.stderr.strip().splitlines()
    assert line.startswith(f"minima validate: {PHASE}: storage: cannot write to s3://CHANGE-ME-minima-results (")
    assert "check the URI and credentials" in line and out.stdout == ""


def test_online_asks_the_tracking_server_and_names_it_when_it_does_not_answer(listener, tmp_path):
    endpoint, hits = listener
    out = validate(SMOKE, "--online", "--set", f"storage={tmp_path}", "--set", f"tracking_uri={endpoint}",
                   endpoint=endpoint)
    assert out.returncode == 2 and hits, out.stdout
    line, = out.stderr.strip().splitlines()
    assert f"tracking_uri: no answer from the MLflow server at {endpoint}" in line and "Traceback" not in line
    before = len(hits)
    offline = validate(SMOKE, "--set", f"storage={tmp_path / 'new'}", "--set", f"tracking_uri={endpoint}",
                       endpoint=endpoint)
    assert offline.returncode == 0 and len(hits) == before
    assert not (tmp_path / "new").exists()  # validate makes no storage folder


def test_online_passes_where_storage_takes_a_write_and_says_so(tmp_path):
    out = validate(SMOKE, "--online", "--set", f"storage={tmp_path / 'results'}",
                   "--set", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", endpoint="http://unused.invalid")
    assert out.returncode == 0, out.stderr
    assert "target    this machine, or a cluster whose nodes all mount" in out.stdout
    assert "checked   the file, a write to the storage, the tracking server's answer" in out.stdout
    assert not list((tmp_path / "results").iterdir())  # the probe file is gone


def test_a_relative_storage_suits_this_machine_only():
    out = validate(SMOKE, endpoint="http://unused.invalid")
    assert out.returncode == 0, out.stderr
    assert "target    this machine: storage is a folder relative to where `minima run` starts" in out.stdout


def test_a_bad_field_exits_2_with_one_line_naming_it(listener):
    endpoint, hits = listener
    out = validate(PHASE, "--set", "resources.gpu=lots", endpoint=endpoint)
    assert out.returncode == 2 and hits == []
    line, = out.stderr.strip().splitlines()
    assert "resources.gpu=lots" in line and "gpu takes a number (got 'lots')" in line
