"""Trials of a sharing grid reach Tune only once their snapshots exist, so none waits holding a
slot while its pretraining runs beside it, and none repeats a pretraining it could share."""

from __future__ import annotations

import pickle

import pytest
from ray.tune.search import Searcher

from sweeps import snapshot_gate
from sweeps.plan import pack_size, pretraining_jobs, pretraining_slots
from sweeps.search_space import build_search
from sweeps.spec import parse_sweep
from trainables.pretraining import SnapshotStore


class StubPhase:
    """Stands in for PretrainingPhase: the pretrainings whose task has ended are set by hand."""

    def __init__(self):
        self.ended: set[str] = set()

    def settled(self) -> set[str]:
        return self.ended


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


def test_trials_start_as_their_snapshots_are_saved_and_when_their_pretraining_ends(tmp_path):
    spec, store, phase = grid(pack=1), str(tmp_path), StubPhase()
    space, num_samples, gate = build_search(spec, 1, store, phase)
    assert space == {} and num_samples == 12
    jobs = {j.values["seed"]: j for j in pretraining_jobs(spec)}

    first = handed_out(gate)
    assert sorted((c["pretrain_epochs"], c["seed"]) for c in first) == [(0, 0), (0, 0), (0, 1), (0, 1)]
    save_snapshot(store, jobs[0].key, 10)  # seed 0's pretraining passes epoch 10
    assert sorted((c["pretrain_epochs"], c["seed"]) for c in handed_out(gate)) == [(10, 0), (10, 0)]
    phase.ended.add(jobs[1].key)  # seed 1's task ends (failed: no snapshot); its trials pretrain alone
    assert sorted((c["pretrain_epochs"], c["seed"]) for c in handed_out(gate)) == [(10, 1), (10, 1), (30, 1), (30, 1)]
    assert gate.suggest("waiting") is None  # seed 0 at 30 epochs: still pretraining
    save_snapshot(store, jobs[0].key, 30)
    assert [(c["pretrain_epochs"], c["seed"]) for c in handed_out(gate)] == [(30, 0), (30, 0)]
    assert gate.suggest("after") == Searcher.FINISHED


def test_a_resumed_gate_hands_out_only_the_rest_and_waits_for_nothing(tmp_path):
    spec, store = grid(pack=1), str(tmp_path)
    _, _, gate = build_search(spec, 1, store, StubPhase())
    given = handed_out(gate)
    assert len(given) == 4
    gate.save(str(tmp_path / "state.json"))
    restored = pickle.loads(pickle.dumps(gate))  # as Tune stores it: without the live tasks
    assert restored.phase is None
    restored.restore(str(tmp_path / "state.json"))
    rest = handed_out(restored)  # the resume pretrains what is missing before the trials
    assert len(rest) == 8 and not any(c in given for c in rest)
    assert restored.suggest("done") == Searcher.FINISHED


def test_a_pack_starts_once_every_member_snapshot_exists(tmp_path):
    spec, store = grid(pack=4), str(tmp_path)
    _, num_samples, gate = build_search(spec, 4, store, StubPhase())
    assert num_samples == 3
    assert [sorted({m["pretrain_epochs"] for m in c["_members"]}) for c in handed_out(gate)] == [[0]]
    jobs = pretraining_jobs(spec)
    save_snapshot(store, jobs[0].key, 10)
    assert handed_out(gate) == []  # the pack also holds seed 1 at 10 epochs
    save_snapshot(store, jobs[1].key, 10)
    assert [sorted({m["pretrain_epochs"] for m in c["_members"]}) for c in handed_out(gate)] == [[10]]


def test_sweeps_without_shared_snapshots_keep_tunes_grid(tmp_path):
    for spec in (grid(share_pretraining=False), parse_sweep({"name": "z", "axes": {"weight_decay": [0.0, 1e-3]}})):
        space, num_samples, searcher = build_search(spec, 1, str(tmp_path), StubPhase())
        assert searcher is None and num_samples == 1 and "weight_decay" in space


def test_pretrainings_take_the_slots_the_trials_without_snapshots_leave():
    spec = grid(pack=4)  # packs of pretrain_epochs 0, 10 and 30: the first needs no snapshot
    assert pretraining_slots(spec, 2) == 1
    assert pretraining_slots(spec, 8) == 7
    assert pretraining_slots(spec, None) is None  # a cluster: packed as large as allowed
    assert pretraining_slots(grid(pack=1), 2) == 1  # 4 trials need none
    mixed = grid(pack="auto")  # on 2 slots: 2 packs of 6, each holding trials that need a snapshot
    assert pretraining_slots(mixed.model_copy(update={"pack": pack_size(mixed, 2)}), 2) == 2
