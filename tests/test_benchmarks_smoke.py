"""Benchmarks that only a lent GPU can measure still run here, on CPU at toy sizes, so the
minutes a GPU is lent for go to measuring, not to fixing a benchmark that stopped running."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_sweep_benchmark_runs_both_modes_through_ray_on_cpu(tmp_path):
    out = tmp_path / "lines.jsonl"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_sweep_throughput.py"), "--gpu-per-trial", "0",
         "--width", "4", "--pack", "4", "--train-rows", "128", "--test-rows", "64", "--epochs", "1",
         "--durations", "0,1", "--weight-decays", "0,1e-4", "--augmentations", "none,flip_crop", "--seeds", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    alone, packed, summary = [json.loads(line) for line in out.read_text().splitlines()]
    assert (alone["mode"], alone["trials"], alone["pack"], alone["ray_trials"]) == ("alone", 8, 1, 8)
    assert (packed["mode"], packed["trials"], packed["pack"], packed["ray_trials"]) == ("packed", 8, 4, 2)
    assert summary["device"] == "cpu" and summary["runs"] == {"alone": alone, "packed": packed}
    # conv nets pack under vmap: equal per step to float tolerance; one epoch stays close
    assert summary["max_test_acc_difference"] <= 0.05


@pytest.mark.slow
def test_gpu_pack_benchmark_runs_every_case_on_cpu(tmp_path):
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_pack_throughput.py"), "--widths", "4", "--packs", "2",
         "--epochs", "1", "--train-rows", "128", "--test-rows", "64"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    cases = {case["case"]: case for case in report["results"]}
    assert set(cases) == {"w4_alone_fp32", "w4_alone_bf16_nhwc", "w4_shared_gpu_4", "w4_packed_2"}
    assert all(case.get("statuses") == ["ok"] for case in cases.values()), cases  # the distinct statuses
    assert (cases["w4_shared_gpu_4"]["processes"], cases["w4_packed_2"]["trials"]) == (4, 2)


@pytest.mark.slow
def test_sweep_scale_benchmark_runs_the_cli_end_to_end_at_toy_size(tmp_path):
    out = tmp_path / "records.jsonl"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "sweep_scale.py"), "--trials", "16", "--no-warmup",
         "--dir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "MINIMA_PART_RAY_TRIALS": "6"})  # pack: 1 runs in 3 Tune experiments, as a large sweep does
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    records = report["records"]
    assert [json.loads(line) for line in out.read_text().splitlines()] == records + [
        {k: v for k, v in report.items() if k != "records"}]
    modes = {(m, f) for m in ("packed", "unpacked") for f in (True, False)}
    assert {(r["mode"], r["mlflow"]) for r in records} == modes
    for r in records:
        assert r["trials"] == 16 and r["export_statuses"] == {"ok": 16}, r
        assert r["run_wall_s"] > 0 and r["trials_per_s"] > 0 and r["export_s"] > 0 and r["report_s"] > 0, r
        assert 0 < r["rss_start_mb"] <= r["rss_peak_mb"] and r["rss_end_mb"] > 0, r
        assert r["last_trial_end_to_return_s"] >= 0 and len(r["loadavg_before"]) == 3, r
        assert r["ray_trials"] == 16 if r["mode"] == "unpacked" else 1 <= r["ray_trials"] < 16, r
        assert r["tune_experiments"] == (3 if r["mode"] == "unpacked" else 1), r
        if r["mlflow"]:
            assert (r["mlflow_finished_runs"], r["mlflow_running_runs"]) == (16, 0), r
            assert r["mlflow_all_logged"] and r["unlogged_warning"] is None, r
    for mode in ("packed", "unpacked"):
        assert report["summary"][f"16_{mode}"]["mlflow_over_no_mlflow_mean"] > 0
    assert not list(tmp_path.glob("minima-scale-*")), "the work folder is removed unless --keep"


@pytest.mark.slow
def test_driver_memory_benchmark_diffs_a_toy_sweep(tmp_path):
    out = tmp_path / "report.jsonl"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "driver_memory.py"), "--trials", "12", "--at", "3", "8",
         "--mlflow", "off", "--dir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["rc"] == 0 and report["per_trial_bytes_by_site"] and report["snapshot_count"] >= 1, report
    assert report["finished_trial_parts"]["last_result_records"] < 100  # LeanResults dropped them
    assert not list(tmp_path.glob("minima-drivermem-*")), "the work folder is removed unless --keep"
