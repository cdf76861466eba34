"""Trials of a sharing grid reach Tune only once their snapshots exist, so none waits holding a
slot while its pretraining runs, and none repeats a pretraining it could share: each
pretraining runs in one owner trial, handed out first."""

from __future__ import annotations

import json
import os
import pickle

import pytest
from ray.tune.search import Searcher

from sweeps.search import snapshot_gate
from sweeps.design.plan import planned, sweep_plan
from sweeps.search.search_space import build_search
from sweeps.design.spec import parse_sweep
from trainables.pretraining import SnapshotStore
from trainables.tune_trainable import PRETRAIN_KEY


def search(spec, store):
    """`build_search` with the spec's plan, as the tuner builds it."""
    return build_search(spec, sweep_plan(spec), store)


def grid(**extra):
    return parse_sweep({
        "name": "g", "base": {"width": 32, "epochs": 5}, "seeds": 2,
        "axes": {"pretrain_epochs": [0, 10, 30], "weight_decay": [0.0, 1e-3]}, **extra,
    })


def handed_out(gate) -> list[dict]:
    """What Tune gets now: suggestions until the gate says wait (None) or finished."""
    out = []
    while (config := gate.suggest(f"t{len(out)}")) not in (None, Searcher.FINISHED):
        out.append(config)
    return out


def save_snapshot(store, key: str, epochs: int) -> None:
    SnapshotStore(store).save(key, epochs, {"model": {}, "history": [], "elapsed_s": 0.0, "diverged": False}, {})


@pytest.fixture(autouse=True)
def look_every_call(monkeypatch):
    monkeypatch.setattr(snapshot_gate, "POLL_S", 0.0)


def brief(configs) -> list[tuple]:
    """(pretrain_epochs, seed, seeds whose pretraining it runs) of each trial handed out."""
    return sorted((c["pretrain_epochs"], c["seed"], tuple(j[0]["seed"] for g in c.get(PRETRAIN_KEY, []) for j in g))
                  for c in configs)


def test_each_pretraining_runs_in_one_owner_and_the_rest_start_as_its_snapshots_are_saved(tmp_path):
    spec, store = grid(pack=1), str(tmp_path)
    space, num_samples, gate = search(spec, store)
    assert space == {} and num_samples == 12
    jobs = {j.values["seed"]: j for j in sweep_plan(spec).jobs}

    first = handed_out(gate)
    assert [c["pretrain_epochs"] for c in first[:2]] == [10, 10]  # the owners come first: they pretrain
    assert brief(first) == [(0, 0, ()), (0, 0, ()), (0, 1, ()), (0, 1, ()), (10, 0, (0,)), (10, 1, (1,))]
    assert first[0][PRETRAIN_KEY] == [[jobs[first[0]["seed"]].to_tune()]] == [[[jobs[first[0]["seed"]].values, [10, 30]]]]  # to 30, saving 10 and 30
    save_snapshot(store, jobs[0].key, 10)  # seed 0's owner passes epoch 10
    assert brief(handed_out(gate)) == [(10, 0, ())]
    SnapshotStore(store).record_failure(jobs[1].key, "RuntimeError: out of memory")  # seed 1's owner gives up
    assert brief(handed_out(gate)) == [(10, 1, ()), (30, 1, ()), (30, 1, ())]  # they pretrain alone
    assert gate.suggest("waiting") is None  # seed 0 at 30 epochs: still pretraining
    save_snapshot(store, jobs[0].key, 30)
    assert brief(handed_out(gate)) == [(30, 0, ()), (30, 0, ())]
    assert gate.suggest("after") == Searcher.FINISHED


def test_an_owner_that_ends_without_its_snapshots_releases_the_trials_waiting_for_them(tmp_path):
    spec, store = grid(pack=1), str(tmp_path)
    _, _, gate = search(spec, store)
    owners = [c for c in handed_out(gate) if PRETRAIN_KEY in c]
    assert handed_out(gate) == []
    gate.on_trial_complete("t0", error=True)  # Tune gave up on the first owner after its retries
    released = handed_out(gate)
    assert {c["seed"] for c in released} == {owners[0]["seed"]} and len(released) == 3
    assert not any(PRETRAIN_KEY in c for c in released)  # nobody else repeats it for the others


def test_a_resumed_gate_hands_out_only_the_rest_and_keeps_its_owners(tmp_path):
    spec, store = grid(pack=1), str(tmp_path)
    _, _, gate = search(spec, store)
    given = handed_out(gate)
    assert len(given) == 6
    gate.save(str(tmp_path / "state.json"))
    restored = pickle.loads(pickle.dumps(gate))  # as Tune stores it with the Tuner
    restored.restore(str(tmp_path / "state.json"))
    assert restored.owners == gate.owners and restored.owner_trials == gate.owner_trials
    older = pickle.loads(pickle.dumps(gate))  # state as saved before owner_trials: every trial's id
    (tmp_path / "old.json").write_text(json.dumps({"issued": gate.issued, "owners": gate.owners, "ended": [],
                                                    "trials": {**gate.owner_trials, "not-an-owner": -1}}))
    older.restore(str(tmp_path / "old.json"))
    assert older.owner_trials == gate.owner_trials and older.owner_trials
    assert handed_out(restored) == []  # claimed by owners already handed out: no second owner
    for job in sweep_plan(spec).jobs:  # as the resume makes what is missing before the trials
        for epochs in job.durations:
            save_snapshot(store, job.key, epochs)
    rest = handed_out(restored)
    assert len(rest) == 6 and not any(c in given or PRETRAIN_KEY in c for c in rest)
    assert restored.suggest("done") == Searcher.FINISHED


def test_a_pack_owns_every_pretraining_its_members_need_and_runs_them_as_one(tmp_path):
    spec, store = grid(pack=4), str(tmp_path)
    _, num_samples, gate = search(spec, store)
    assert num_samples == 3
    first = handed_out(gate)
    assert [sorted({m["pretrain_epochs"] for m in c["_members"]}) for c in first] == [[10], [0]]
    assert [sorted(j[0]["seed"] for j in g) for g in first[0][PRETRAIN_KEY]] == [[0, 1]]  # one pack of both seeds
    jobs = sweep_plan(spec).jobs
    save_snapshot(store, jobs[0].key, 30)
    assert handed_out(gate) == []  # the last pack also holds seed 1 at 30 epochs
    save_snapshot(store, jobs[1].key, 30)
    assert [sorted({m["pretrain_epochs"] for m in c["_members"]}) for c in handed_out(gate)] == [[30]]


def test_sweeps_without_shared_snapshots_keep_tunes_grid(tmp_path):
    for spec in (grid(share_pretraining=False, pack=1), parse_sweep({"name": "z", "pack": 1, "axes": {"weight_decay": [0.0, 1e-3]}})):
        space, num_samples, searcher = search(spec, str(tmp_path))
        assert searcher is None and num_samples == 1 and "weight_decay" in space


def test_tune_queues_the_gates_trials_as_it_queues_a_grids(monkeypatch):
    """Tune keeps one trial of a custom Searcher pending at a time: the second slot would idle
    while the first trial's actor starts, and an autoscaling cluster would see one trial's
    demand at a time. While a gated sweep runs Tune may queue as many as for a grid."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search import SearchGenerator

    from sweeps.run.tuner import PENDING_TRIALS_ENV, pending_trials

    monkeypatch.delenv(PENDING_TRIALS_ENV, raising=False)
    spec = grid()
    _, _, gate = search(spec, "unused")
    searcher = SearchGenerator(gate)
    assert _get_max_pending_trials(searcher) == 1  # Tune's own choice
    with pending_trials(sweep_plan(spec), cluster_cpus=2):
        assert _get_max_pending_trials(searcher) == 200
    with pending_trials(sweep_plan(spec), cluster_cpus=1000):
        assert _get_max_pending_trials(searcher) == 1100
    assert PENDING_TRIALS_ENV not in os.environ
    with pending_trials(sweep_plan(grid(share_pretraining=False)), cluster_cpus=2):  # Tune's grid: its own rule
        assert PENDING_TRIALS_ENV not in os.environ
    monkeypatch.setenv(PENDING_TRIALS_ENV, "7")  # the user's choice stands
    with pending_trials(sweep_plan(spec), cluster_cpus=2):
        assert _get_max_pending_trials(searcher) == 7


def test_a_grid_packed_per_architecture_gives_tune_packs_and_lone_trials(tmp_path):
    """Auto on CPU packs the 32-wide MLPs and runs the 1024-wide ones alone: Tune gets each
    pack as one config listing its members, each lone trial as a plain config."""
    from trainables.config import architecture, make_config

    def planned_for_2_slots(**extra):
        spec = grid(base={"epochs": 5}, axes={"pretrain_epochs": [0, 10], "weight_decay": [0.0, 1e-3], "width": [32, 1024]},
                    **extra)
        return planned(spec, 2)[0]

    spec = planned_for_2_slots()
    _, num_samples, gate = search(spec, str(tmp_path))
    assert num_samples == 10  # 8 of width 32 in 2 packs of 4, 8 of width 1024 alone
    jobs = sweep_plan(spec).jobs
    wide = {j.key for j in jobs if j.values["width"] == 1024}
    assert gate.packable == {j.key for j in jobs} - wide and len(wide) == 2
    packs = [c["_members"] for c in gate.configs if "_members" in c]
    assert sorted(len(p) for p in packs) == [4, 4] and all(m["width"] == 32 for p in packs for m in p)
    assert sorted(c["width"] for c in gate.configs if "_members" not in c) == [1024] * 8

    plain = planned_for_2_slots(share_pretraining=False)
    space, num_samples, searcher = search(plain, str(tmp_path))
    assert searcher is None and num_samples == 1  # Tune's own grid, over member lists
    listed = space["_members"]["grid_search"]
    assert sorted(len(m) for m in listed) == [1] * 8 + [4, 4]
    assert {architecture(make_config(m[0])) for m in listed if len(m) == 1} == {
        n for n, size in sweep_plan(plain).pack_plan.items() if size == 1}
