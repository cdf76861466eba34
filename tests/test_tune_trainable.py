"""The trial as a Ray Tune trainable: on real local Ray, and its driver in this process against
Tune's side of a function trainable, with checkpoints an earlier version wrote."""

from pathlib import Path

import pytest
import torch

from sweeps.storage.results import read_result_rows
from trainables.checkpoint import load_state
from trainables.config import make_config
from trainables.reports import final_row
from trainables.trial import run_trial


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


ARCHIVE = Path(__file__).parent / "fixtures" / "checkpoints.tar.gz"  # packed: the repo keeps no loose weights
# The configs of the checkpoints in ARCHIVE, written by an earlier version's trainables as stored
# sweeps hold them (checkpoint format 1): a lone trial's `trial_state.pt` mid-pretraining, at the
# end of its pretraining and mid-training, and a pack's `pack_state.pt` after 3 pack epochs,
# member 1 done.
LONE = {"width": 8, "depth": 2, "pretrain_epochs": 2, "epochs": 3, "flatness_samples": 1, "stop_at_train_acc": None,
        "seed": 3, "device": "cpu"}
PACK = [dict(LONE, seed=s, epochs=e, pretrain_epochs=p) for s, e, p in ((0, 4, 0), (1, 2, 0), (2, 4, 2))]
TIMING = ("epoch_time_s", "wall_time_s")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """ARCHIVE unpacked: one folder per checkpoint, as Tune hands it to a restored trial."""
    import tarfile

    root = tmp_path_factory.mktemp("checkpoints")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    return root / "checkpoints"


def untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


def held(summary: dict) -> dict:
    """A trial's summary as its final row carries it: with the accelerator it held (none off Ray)."""
    return {**summary, "accelerator_type": None}


@pytest.fixture
def fake_tune(tmp_path, monkeypatch):
    """Ray Tune's side of a function trainable, in this process: the checkpoint it restores
    (`restore`), and each report with a copy of its checkpoint folder (`reports`)."""
    import shutil

    from ray import tune

    from trainables import tune_trainable as trainable

    class Fake:
        restore: str | None = None
        reports: list[tuple[dict, Path | None]] = []

    def report(metrics, checkpoint=None):
        kept = None
        if checkpoint is not None:
            kept = tmp_path / f"kept_{len(Fake.reports)}"
            shutil.copytree(checkpoint.path, kept)
        Fake.reports.append((metrics, kept))

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_checkpoint",
                        lambda: tune.Checkpoint.from_directory(Fake.restore) if Fake.restore else None)
    monkeypatch.setattr(trainable, "REPORT_EVERY_S", 1e9)  # reports go out with checkpoints and at the end
    Fake.reports = []
    return Fake


def test_a_lone_trial_reports_its_rows_as_a_lone_trial(fake_tune):
    """A pack of one on the plain engine reports as lone trials always have: no `member`, a
    checkpoint at each stage's end, and the final row alone in the last report, on top."""
    from trainables.tune_trainable import tune_trainable

    tune_trainable({**LONE, "_checkpoint_every": 10})
    alone = run_trial(LONE)
    reports = fake_tune.reports
    assert [[r["stage"] for r in report["records"]] for report, _ in reports] == [
        ["pretrain"] * 2, ["train"] * 3, ["final"]]
    rows = [r for report, _ in reports for r in report["records"]]
    assert not any("member" in r for r in rows)
    assert [untimed(r) for r in rows[:-1]] == [untimed({**r, "final": False}) for r in alone.history]
    assert untimed(rows[-1]) == untimed(final_row(held(alone.summary), len(alone.history)))
    for report, _ in reports:
        assert untimed(report) == untimed({**report["records"][-1], "records": report["records"]})  # latest on top
    assert [load_state(kept, make_config(LONE).to_dict())["position"] for _, kept in reports[:2]] == [[1, 0], [2, 0]]
    assert reports[2][1] is None


@pytest.mark.parametrize("name", ["lone_mid_pretrain", "lone_stage_end", "lone_mid_train"])
def test_a_lone_trials_checkpoint_of_an_earlier_version_resumes(fake_tune, tmp_path, name, fixtures):
    import shutil

    from trainables.tune_trainable import tune_trainable

    shutil.copytree(fixtures / name, tmp_path / name)
    fake_tune.restore = str(tmp_path / name)
    done = len(torch.load(fixtures / name / "trial_state.pt", weights_only=True)["history"])
    tune_trainable({"_members": [LONE], "_checkpoint_every": 10})  # a grid's lone trial: a list of one
    alone = run_trial(LONE)
    rows = [r for report, _ in fake_tune.reports for r in report["records"]]
    assert [untimed(r) for r in rows] == [untimed({**r, "final": False}) for r in alone.history[done:]] + [
        untimed(final_row(held(alone.summary), len(alone.history)))]


def test_a_packs_checkpoint_of_an_earlier_version_resumes(fake_tune, tmp_path, fixtures):
    import shutil

    from trainables.tune_trainable import tune_trainable

    shutil.copytree(fixtures / "pack_mid_train", tmp_path / "pack")
    fake_tune.restore = str(tmp_path / "pack")
    tune_trainable({"_members": PACK, "_checkpoint_every": 10})
    rows = [r for report, _ in fake_tune.reports for r in report["records"]]
    for i in (0, 2):  # member 1 ended before the checkpoint: reported then, not again
        alone = run_trial(PACK[i])
        mine = [untimed(r) for r in rows if r["member"] == i]
        assert mine == [untimed({**r, "member": i, "final": False}) for r in alone.history[-1:]] + [
            untimed(final_row(held(alone.summary), len(alone.history), i))]
    assert {r["member"] for r in rows} == {0, 2}
    assert "final" not in fake_tune.reports[-1][0]  # a pack's report carries no row on top


def test_a_lone_trial_listed_as_one_member_resumes_a_pack_checkpoint_as_a_pack(fake_tune, tmp_path, fixtures):
    """Tune's grid of member lists gives a lone trial as a list of one, run on the plain engine;
    a one-member pack checkpointed on the stacked engine resumes from its pack checkpoint as the
    pack it was (its file says which)."""
    from trainables.checkpoint import load_checkpoint, save_pack_state
    from trainables.packed import run_pack
    from trainables.state import PackState, TrialState
    from trainables.tune_trainable import tune_trainable

    member = dict(LONE, pretrain_epochs=0)
    states = []
    run_pack([member], on_pack_epoch=lambda state, ended: states.append(state() if state else None))
    save_pack_state([s for s in states if s is not None][0], tmp_path / "pack")
    assert isinstance(load_checkpoint(tmp_path / "pack", [make_config(member).to_dict()]), PackState)
    assert isinstance(load_checkpoint(fixtures / "lone_mid_train", [make_config(LONE).to_dict()]), TrialState)
    fake_tune.restore = str(tmp_path / "pack")
    tune_trainable({"_members": [member], "_checkpoint_every": 10})
    rows = [r for report, _ in fake_tune.reports for r in report["records"]]
    assert [r["member"] for r in rows] == [0, 0, 0] and rows[-1]["final"]
    assert all((kept / "pack_state.pt").exists() for _, kept in fake_tune.reports if kept is not None)
