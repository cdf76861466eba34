"""A packed sweep of hundreds of tiny trials, end to end: `minima run` returns with every trial
logged to MLflow, each run carrying its trial's own start and end."""

import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.design.keys import trial_key
from sweeps.tracking.mlflow_writer import EXPERIMENT_KIND
from sweeps.storage.results import read_result_rows, read_trial_params
from trainables.reports import member_values

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.sweep_scale import sweep_yaml  # noqa: E402

pytestmark = pytest.mark.slow
TRIALS = 300  # enough members that the drain after the last pack is hundreds of runs


def trial_times(experiment_dir: Path) -> dict[str, tuple[int, int]]:
    """trial key -> (its first, its last report's timestamp), in whole seconds as Ray writes them."""
    out = {}
    for trial_dir in experiment_dir.glob("trial_*"):
        members = member_values(read_trial_params(str(trial_dir)))
        for member, values in enumerate(members):
            stamps = [r["timestamp"] for r in read_result_rows(str(trial_dir), member if len(members) > 1 else None)]
            out[trial_key(values)] = (min(stamps), max(stamps))
    return out


def test_a_packed_sweep_of_hundreds_of_trials_ends_fully_logged_with_the_trials_own_times(tmp_path):
    from mlflow.tracking import MlflowClient

    (tmp_path / "sweep.yaml").write_text(sweep_yaml("scale", TRIALS, "auto", tmp_path))
    out = subprocess.run([sys.executable, "-m", "minima.cli", "run", str(tmp_path / "sweep.yaml")],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{TRIALS} trials: {TRIALS} ok" in out.stdout, out.stdout[-2000:]
    assert "not fully logged" not in out.stderr, out.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("scale")
    assert experiment.tags.get(EXPERIMENT_KIND[0]) == EXPERIMENT_KIND[1]  # the UI opens on runs, not GenAI
    runs = client.search_runs([experiment.experiment_id], max_results=10_000)
    parents = [r for r in runs if r.data.tags.get("minima.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("minima.role") != "parent"]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == TRIALS and {r.info.status for r in children} == {"FINISHED"}
    assert all("train_epochs" in r.data.metrics for r in children)

    times = trial_times(tmp_path / "results" / "scale")
    assert len(times) == TRIALS
    for run in children:
        first, last = times[run.data.tags["trial_key"]]
        start, end = run.info.start_time, run.info.end_time
        assert end > start, (run.info.run_name, start, end)
        assert start < (first + 1) * 1000  # started no later than its first report (stamped in whole s)
        assert last * 1000 <= end <= (last + 2) * 1000, (run.info.run_name, start, end, first, last)
