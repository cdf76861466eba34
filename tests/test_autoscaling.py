"""A sweep of fractional-GPU trials on Ray's fake autoscaling cluster (benchmarks/fake_gpu_cluster.py):
the autoscaler adds GPU worker nodes for the sweep's demand, every trial finishes (on CPU: the
fake GPUs have no CUDA), and the idle workers are removed."""

import json

import pytest

from benchmarks.fake_gpu_cluster import autoscaling_run

pytestmark = pytest.mark.slow


def test_sweep_scales_gpu_workers_up_and_down(tmp_path, capsys):
    result = autoscaling_run(tmp_path, idle_timeout_s=15)
    with capsys.disabled():  # the timeline, for the note
        print("\nautoscaling timeline (s):", json.dumps(result["timeline"]),
              f"workers seen {result['worker_nodes_seen']}, most GPUs at once {result['max_worker_gpus']:g}")
    out = result["output"]
    assert result["returncode"] == 0, out[-3000:]
    assert "8 trials: 8 ok" in out, out[-3000:]
    assert "shared pretraining: 2/2 done" in out, out[-3000:]  # across nodes, through the shared storage
    assert result["workers_before_sweep"] == 0, "a worker node was up before any demand (min_workers > 0?)"
    assert result["worker_nodes_seen"] >= 1 and "first_worker_added" in result["timeline"]
    # 8 trials x 0.25 GPU: the whole demand is 2 GPUs, and the autoscaler saw it at once.
    assert result["max_worker_gpus"] >= 2, f"the workers never held the sweep's 2 GPUs: {result}"
    assert result["removed"] and result["workers_after"] == 0, "idle GPU workers were not removed"
