"""What an extension of a stored grid sweep keeps, adds and refuses (no Ray, no training)."""

import pytest

from sweeps.design.extension import extension_of, trial_keys
from sweeps.design.plan import sweep_plan
from sweeps.design.spec import SweepError, parse_sweep


def sweep(**changes):
    data = {"name": "s", "base": {"dataset": "mnist1d", "model": "mlp", "width": 64, "epochs": 3},
            "axes": {"pretrain_epochs": [0, 5], "weight_decay": [0.0, 5.0e-4]}, "seeds": 2}
    for key, value in changes.items():
        if key == "base":
            data["base"] = {**data["base"], **value}
        elif key == "axes":
            data["axes"] = {**data["axes"], **value}
        else:
            data[key] = value
    data["base"] = {k: v for k, v in data["base"].items() if k not in data["axes"]}  # one place each
    return parse_sweep(data)


def test_added_seeds_values_and_axes_are_new_and_the_stored_trials_are_kept():
    stored = sweep()
    wider = sweep(seeds=3, axes={"pretrain_epochs": [0, 5, 8], "width": [64, 128]})
    ext = extension_of(stored, wider, "f.yaml")
    assert ext.kept == trial_keys(stored) and len(ext.kept) == 8
    assert {ext.known.of(values).trial for values in stored.trial_values()} == ext.kept  # found, not rebuilt
    assert ext.new == 3 * 3 * 2 * 2 - 8
    plan = sweep_plan(wider, 2, ext.kept)
    assert plan.num_trials == ext.new and not {t.keys.trial for t in plan.trials} & ext.kept
    # a field moved from base to an axis that keeps its value changes no stored trial
    assert extension_of(stored, sweep(axes={"width": [64, 32]}), "f.yaml").new == 8
    assert extension_of(stored, sweep(resources={"cpu": 2}, pack=1), "f.yaml").new == 0  # nothing a trial sees


@pytest.mark.parametrize("changes, named", [
    ({"base": {"lr": 0.2}}, "base.lr None -> 0.2"),
    ({"axes": {"weight_decay": [0.0, 1.0e-3]}}, "axes.weight_decay loses [0.0005]"),
    ({"seeds": [1, 2]}, "seeds lose [0]"),
    ({"axes": {"width": [32, 128]}}, "axes.width leaves out the value the stored trials have (64)"),
    ({"axes": {"clip_norm": [1.0, 2.0]}}, "axes.clip_norm leaves out the value the stored trials have (its default)"),
])
def test_a_file_that_would_change_stored_trials_is_a_new_sweep(changes, named):
    with pytest.raises(SweepError) as refused:
        extension_of(sweep(), sweep(**{"seeds": 3, **changes}), "f.yaml")
    assert named in str(refused.value) and "minima run f.yaml --name NEW_NAME" in str(refused.value)


def test_the_tracking_uri_and_the_search_kind_stay():
    with pytest.raises(SweepError, match="tracking_uri"):
        extension_of(sweep(), sweep(seeds=3, tracking_uri="sqlite:///other.db"), "f.yaml")
    with pytest.raises(SweepError, match="refined by a boundary search, not by a random search"):
        extension_of(sweep(), sweep(search={"kind": "random", "num_samples": 4},
                                    axes={"pretrain_epochs": {"low": 0, "high": 8}}), "f.yaml")


def test_a_boundary_search_over_the_same_sweep_refines_the_grid_and_takes_only_trials_it_could_run():
    from sweeps.design.boundary_grid import search_cell

    stored = sweep()
    search = sweep(axes={"pretrain_epochs": {"low": 0, "high": 8, "count": 3}},
                   search={"kind": "boundary", "max_trials": 40})
    ext = extension_of(stored, search, "f.yaml")
    assert ext.refines and ext.kept == trial_keys(stored) and ext.new == 40
    grid_trial = stored.trial_values()[-1]  # pretrain 5, weight decay 5e-4, seed 1
    assert search_cell(search, grid_trial) == {"pretrain_epochs": 5, "weight_decay": 5.0e-4}
    for other in ({"seed": 2}, {"pretrain_epochs": 9}, {"weight_decay": 1.0e-3}, {"lr": 0.2}):
        assert search_cell(search, {**grid_trial, **other}) is None, other
    with pytest.raises(SweepError, match="only a grid sweep is extended"):
        extension_of(search, stored, "f.yaml")


def test_each_part_is_costed_with_the_resources_of_the_run_that_made_it():
    from sweeps.storage.costs import HeldResources

    held = HeldResources((1.0, 0.0), {"part-001": (1, (2.0, 0.5))})
    assert held.of_trial("/s/sweep/trial_ab") == (1.0, 0.0)  # the first run's own experiment
    assert held.of_trial("/s/sweep/part-000/trial_ab") == (1.0, 0.0)  # a first run in parts
    assert held.of_trial("s3://b/sweep/part-001/trial_ab") == (2.0, 0.5) and held.of_part("part-001")[0] == 1
