"""The trial as a Ray Tune trainable, on real local Ray."""

import pytest

from sweeps.storage.results import read_result_rows
from trainables.checkpoint import load_state
from trainables.config import make_config


@pytest.mark.slow
def test_trial_runs_under_ray_tune_and_reports_every_epoch(tmp_path, tiny):
    """Every epoch is a row; epochs between checkpoints share a report (a round trip to the driver each)."""
    import ray
    from ray import tune

    from trainables.reports import tune_config_values
    from trainables.tune_trainable import tune_trainable

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a cluster found on the machine
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune_trainable, {"cpu": 1}),
            param_space={**tiny, "_checkpoint_every": 10, "seed": tune.grid_search([0, 1])},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="trainable", verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    assert grid.num_errors == 0 and len(grid) == 2
    for result in grid:
        rows = read_result_rows(result.path)
        assert [r["stage"] for r in rows] == ["pretrain"] * 2 + ["train"] * 3 + ["final"]
        assert len(result.metrics_dataframe) < len(rows)  # batched: fewer reports than rows
        final = result.metrics
        assert final["final"] and final["status"] == "ok" and 0 <= final["test_acc"] <= 1
        config = make_config(tune_config_values(result.config)).to_dict()
        with result.checkpoint.as_directory() as d:
            state = load_state(d, config)
        assert state["position"] == [2, 0] and len(state["history"]) == 5


def test_a_lone_trial_listed_as_one_member_resumes_a_pack_checkpoint_as_a_pack(tmp_path, monkeypatch):
    """Tune's grid of member lists gives a lone trial as a list of one, run as a plain trial;
    a one-member pack made before that resumes from its pack checkpoint as the pack it was."""
    from ray import tune

    from trainables import tune_trainable as trainable

    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    assert not trainable.resumes_a_pack()  # a fresh trial
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "state.pt").write_bytes(b"")
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(tmp_path / "plain")))
    assert not trainable.resumes_a_pack()
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / trainable.PACK_FILE).write_bytes(b"")
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(tmp_path / "pack")))
    assert trainable.resumes_a_pack()
