"""Boundary search: the plan and the Ray Tune Searcher, on a synthetic phase diagram whose
boundary is known, so where the search spends its trials can be checked."""

import json

import numpy as np
import pytest

from sweeps.design.boundary_grid import REFINE, candidate_values, coarse_cells, coarse_grid, coarse_trials
from sweeps.search.acquisition import variance_cut
from sweeps.search.boundary import Strategy
from sweeps.search.boundary_searcher import BoundarySearcher
from sweeps.design.spec import SweepError, parse_sweep

TRUE_X = {0.0: 30.0, 0.001: 70.0}  # pretraining epochs past which a minimum is bad, per weight decay


def boundary_sweep(**search):
    return parse_sweep({
        "name": "edge",
        "base": {"dataset": "mnist1d", "model": "mlp", "width": 16, "depth": 1, "epochs": 3},
        "axes": {"pretrain_epochs": {"low": 0, "high": 100, "count": 3}, "weight_decay": [0.0, 0.001]},
        "seeds": 3,
        "search": {"kind": "boundary", "max_trials": 200, "ci_width": 4, **search},
    })


def synthetic_result(values):
    """A seed-noisy step: bad (10 points below the baseline) once pretraining passes TRUE_X."""
    rng = np.random.default_rng(abs(hash((values["pretrain_epochs"], values["weight_decay"], values["seed"]))) % 2**32)
    edge = TRUE_X[values["weight_decay"]] + rng.normal(0, 2)
    acc = 0.9 - (0.1 if values["pretrain_epochs"] > edge else 0.0) + rng.normal(0, 0.005)
    return {"final": True, "status": "ok", "reached_global_min": True, "test_acc": acc}


def drive(searcher, stop_after=None):
    """Tune's loop in miniature: take suggestions until FINISHED, completing a round at a time."""
    issued = []
    while True:
        batch = []
        while (config := searcher.suggest(f"t{len(issued) + len(batch)}")) not in (None, "FINISHED"):
            batch.append((f"t{len(issued) + len(batch)}", config))
        if config == "FINISHED" and not batch:
            return issued
        for trial_id, config in batch:
            searcher.on_trial_complete(trial_id, synthetic_result(config))
        issued += [c for _, c in batch]
        if stop_after is not None and len(searcher.rounds) >= stop_after:
            return issued


def test_the_coarse_grid_covers_every_slice_and_seed_and_refines_x():
    spec = boundary_sweep()
    assert len(coarse_cells(spec)) == 3 * 2
    trials = coarse_grid(spec)
    # the baselines (x = 0) with every seed, each other coarse cell with one seed, in turn
    assert coarse_trials(spec) == len(trials) == 2 * 3 + 2 * 2
    assert sorted(t["seed"] for t in trials if t["pretrain_epochs"] == 0) == [0, 0, 1, 1, 2, 2]
    assert [t["seed"] for t in trials if t["pretrain_epochs"] != 0] == [0, 1, 2, 0]
    assert len(coarse_grid(spec, None)) == 18  # every seed of every cell
    assert candidate_values(spec) == list(range(0, 101))  # epochs: every integer
    wd = parse_sweep({"name": "w", "axes": {"weight_decay": {"low": 1e-5, "high": 1e-3, "count": 3, "scale": "log"}},
                      "search": {"kind": "boundary", "x": "weight_decay", "max_trials": 10}})
    values = candidate_values(wd)
    assert len(values) == 2 * REFINE + 1 and {1e-5, 1e-4, 1e-3} <= set(values)  # a float axis: 16x the coarse grid


def test_proposals_concentrate_near_a_known_boundary_and_locate_it():
    searcher = BoundarySearcher(boundary_sweep())
    issued = drive(searcher)
    refined = issued[coarse_trials(searcher.spec):]
    assert refined, "the search proposed nothing past the coarse grid"
    distance = [abs(c["pretrain_epochs"] - TRUE_X[c["weight_decay"]]) for c in refined]
    assert np.mean(np.asarray(distance) <= 15) >= 0.8, distance  # the grid's own points are 25 apart
    last = searcher.rounds[-1]["fits"]
    for fit in last:
        truth = TRUE_X[fit["slice"]["weight_decay"]]
        assert fit["ci_low"] <= truth + 4 and truth - 4 <= fit["ci_high"], fit
        assert fit["settled"] is not None
    # a grid every 3 epochs, about the intervals found; each trial's edge is noisy (sd 2 epochs), so
    # the search ends by exhausting the integers inside a 90% interval that cannot shrink to 4
    dense_grid = len(range(0, 101, 3)) * 2 * 3
    assert len(issued) < 0.4 * dense_grid


def test_a_round_runs_single_trials_never_one_already_run():
    """With 2 slots and 3 seeds a round is 6 trials: single (x, seed) trials, so it can place them
    at up to 6 durations; none repeats a trial (cell and seed) run before."""
    searcher = BoundarySearcher(boundary_sweep(), slots=2)
    issued = drive(searcher, stop_after=4)
    keys = [(c["pretrain_epochs"], c["weight_decay"], c["seed"]) for c in issued]
    assert len(keys) == len(set(keys))
    later = issued[coarse_trials(searcher.spec):]
    assert len(later) == 3 * 6
    cells = {(c["pretrain_epochs"], c["weight_decay"]) for c in later}
    assert len(cells) > len(later) / 3  # not whole cells: more distinct durations than cells' worth
    assert {c["seed"] for c in later} == {0, 1, 2}


def test_the_cell_strategy_runs_every_seed_of_a_cell_together():
    searcher = BoundarySearcher(boundary_sweep(), slots=2, strategy=Strategy.CELLS)
    issued = drive(searcher, stop_after=3)
    assert len(issued) == 18 + 2 * 6
    for cell in {(c["pretrain_epochs"], c["weight_decay"]) for c in issued}:
        assert sorted(c["seed"] for c in issued if (c["pretrain_epochs"], c["weight_decay"]) == cell) == [0, 1, 2]


def test_a_state_saved_without_a_strategy_goes_on_running_whole_cells(tmp_path):
    """A search whose state was saved before trials were proposed one at a time resumes as it began."""
    first = BoundarySearcher(boundary_sweep(), strategy=Strategy.CELLS)
    drive(first, stop_after=2)
    state = first.get_state()
    del state["strategy"], state["tried"]
    second = BoundarySearcher(boundary_sweep())
    second.set_state(json.loads(json.dumps(state)))
    assert second.strategy == Strategy.CELLS.as_dict()
    assert len(second.tried) == 3 * len(second.cells)
    later = drive(second)
    cells = {(c["pretrain_epochs"], c["weight_decay"]) for c in later}
    assert len(later) == 3 * len(cells)


def test_a_trial_whose_outcome_is_certain_does_not_narrow_the_crossing():
    """variance_cut on draws of a crossing spread over 10..30: a trial far below (always good) or
    far above (always bad) cuts nothing; one at the crossing's middle cuts the most."""
    xc = np.linspace(10, 30, 401)
    x = np.array([0.0, 20.0, 40.0])
    p = 1 / (1 + np.exp(-5 * (x[None, :] - xc[:, None])))[:, None, :]  # (draws, 1 seed, x)
    cut = variance_cut([(1.0, np.full(len(xc), 1 / len(xc)))], p, xc)[0]
    assert cut[0] < 1e-6 and cut[2] < 1e-6
    assert cut[1] > 0.5 * np.var(xc)


def test_it_stops_at_the_trial_budget():
    searcher = BoundarySearcher(boundary_sweep(max_trials=24))
    assert len(drive(searcher)) == 24


def test_a_slice_with_one_phase_only_is_settled_without_more_trials():
    searcher = BoundarySearcher(boundary_sweep())
    rounds = 0
    while (config := searcher.suggest(f"t{rounds}")) not in (None, "FINISHED"):
        searcher.on_trial_complete(f"t{rounds}", {"final": True, "status": "ok", "reached_global_min": True,
                                                  "test_acc": 0.9})
        rounds += 1
    assert searcher.suggest("next") == "FINISHED"
    assert all("no boundary" in f["settled"] for f in searcher.rounds[-1]["fits"])


def test_it_resumes_from_saved_state_with_the_same_proposals(tmp_path):
    whole = drive(BoundarySearcher(boundary_sweep()))
    first = BoundarySearcher(boundary_sweep())
    before = drive(first, stop_after=2)
    path = tmp_path / "searcher-state.json"
    first.save(str(path))
    json.loads(path.read_text())  # plain JSON: restoring it runs no code
    second = BoundarySearcher(boundary_sweep())
    second.restore(str(path))
    after = drive(second)
    assert before + after == whole


def test_failed_trials_are_recorded_and_do_not_stall_the_search():
    searcher = BoundarySearcher(boundary_sweep(max_trials=30))
    n = 0
    while (config := searcher.suggest(f"t{n}")) not in (None, "FINISHED"):
        searcher.on_trial_complete(f"t{n}", None, error=True)
        n += 1
    assert searcher.suggest("next") == "FINISHED" and n == coarse_trials(searcher.spec) == 10
    assert {r["status"] for r in searcher.rows} == {"error"}


@pytest.mark.parametrize("search, field", [
    ({"x": "weight_decay"}, "search.x"),
    ({"max_trials": 9}, "search.max_trials"),
    ({"x": "lr"}, "search.x"),
])
def test_bad_boundary_sweeps_are_refused_naming_the_field(search, field):
    with pytest.raises(SweepError, match=field.replace(".", r"\.")):
        boundary_sweep(**search)


def test_boundary_fields_are_refused_on_a_grid():
    with pytest.raises(SweepError, match="max_trials: only for search kind 'boundary'"):
        parse_sweep({"name": "g", "axes": {"weight_decay": [0.0, 0.001]}, "search": {"kind": "grid", "max_trials": 5}})


def synthetic_trainable(config):
    """A Tune trial that reports the synthetic diagram's result for its config."""
    import time

    from ray import tune

    time.sleep(0.05)
    tune.report(synthetic_result(config))


@pytest.mark.slow
def test_the_searcher_resumes_with_a_restored_tune_experiment(tmp_path):
    """Real Ray Tune: the sweep is interrupted mid-search (Tune saves its state, as when the
    driver stops), restored with `Tuner.restore`, and ends having run exactly the trials an
    uninterrupted search runs, each once."""
    import os
    import signal
    import sys

    import ray
    from ray import cloudpickle, tune

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests folder
    spec = boundary_sweep()
    expected = {(c["pretrain_epochs"], c["weight_decay"], c["seed"]) for c in drive(BoundarySearcher(spec))}

    class InterruptAfter(tune.Callback):
        """Stops the first run (the restored run gets this callback back, so a file says it fired)."""

        def __init__(self, n, fired):
            self.n, self.done, self.fired = n, 0, fired

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            if self.done >= self.n and not os.path.exists(self.fired):
                open(self.fired, "w").close()
                os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own stop signal: save the state, return

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        searcher = BoundarySearcher(spec, on_notice=lambda m: None)
        first = tune.Tuner(synthetic_trainable, param_space=dict(spec.base),
                           tune_config=tune.TuneConfig(search_alg=searcher, num_samples=spec.search.max_trials,
                                                       reuse_actors=True),
                           run_config=tune.RunConfig(name="edge", storage_path=str(tmp_path), verbose=0,
                                                     callbacks=[InterruptAfter(21, str(tmp_path / 'fired'))])).fit()
        assert 21 <= len(first) < len(expected), "the interruption came too late to test a resume"
        grid = tune.Tuner.restore(str(tmp_path / "edge"), trainable=synthetic_trainable, resume_unfinished=True).fit()
    finally:
        ray.shutdown()
    ran = [(r.config["pretrain_epochs"], r.config["weight_decay"], r.config["seed"]) for r in grid]
    assert grid.num_errors == 0 and len(ran) == len(set(ran))
    assert set(ran) == expected
    history = json.loads((tmp_path / "edge" / "boundary_search.json").read_text())
    assert sum(r["queued"] for r in history["rounds"]) == len(expected)


def test_a_stored_spec_parses_back_whatever_its_search():
    """Resume reads the sweep from its stored `model_dump()`, which lists every search field."""
    for spec in (boundary_sweep(), parse_sweep({"name": "g", "axes": {"weight_decay": [0.0, 0.001]}})):
        assert parse_sweep(json.loads(json.dumps(spec.model_dump()))) == spec
