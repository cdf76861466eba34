"""Shared pretraining and packed trials give the results of trials run one by one.

Sharing is exact (bit for bit) on any device: the snapshot resumes `run_trial` at the stage
boundary. Packed MLPs are exact on CPU: the stacked MLP computes each member's products, norms
and updates with the same kernels and rounding as `nn.Linear` and `torch.optim.SGD`. On a GPU
cuBLAS runs batched products with other kernels than single ones, so there packs agree to
float tolerance. Tests run on the device trials resolve (`device: auto`): CUDA where there is one.
"""

from __future__ import annotations

import math

import pytest

from sweeps.design.plan import planned, pretraining_packs, sweep_plan
from sweeps.design.spec import SweepError, parse_sweep
from trainables.config import architecture, make_config
from trainables.packed import run_pack
from trainables.pretraining import (PretrainJob, SnapshotStore, pretrain_key, resume_state_from_snapshot,
                                    run_owned_pretrainings, run_shared_pretraining, run_shared_pretrainings)
from trainables.loop import TrialResult
from trainables.stages import resolve_device
from trainables.trial import run_trial

TIMING = ("epoch_time_s", "wall_time_s")
DEVICE = resolve_device("auto").type  # where the trials below run, and so whose snapshots they use


def assert_same_results(packed: list, alone: list) -> None:
    """Packed members against their standalone runs: bit for bit on CPU, to float tolerance on
    a GPU (see the module docstring), where statuses and epoch counts must still agree."""
    if DEVICE == "cpu":
        assert [comparable(r) for r in packed] == [comparable(r) for r in alone]
    else:
        assert_close_results(packed, alone)


def assert_close_results(packed: list, alone: list) -> None:
    """Packed members against their standalone runs to float tolerance, epoch by epoch."""
    for p, s in zip(packed, alone, strict=True):
        assert p.summary["status"] == s.summary["status"] and len(p.history) == len(s.history)
        for a, b in zip(p.history, s.history):
            assert a["diverged"] == b["diverged"]
            if not a["diverged"]:
                assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
                assert a["test_acc"] == pytest.approx(b["test_acc"], abs=0.01)


def comparable(result) -> tuple[dict, list[dict]]:
    """Summary and history without wall-clock fields (NaN made comparable)."""
    def clean(d):
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items() if k not in TIMING}
    return clean(result.summary), [clean(r) for r in result.history]


SMALL = dict(width=32, epochs=6, flatness_samples=1, stop_at_train_acc=None)


def test_shared_snapshots_give_exactly_the_standalone_trials(tmp_path):
    # one pretraining run to 6 epochs serves the trials pretraining 2 and 6 epochs
    done = run_shared_pretraining(PretrainJob({**SMALL, "seed": 3}, (2, 6)), str(tmp_path))
    assert done["saved"] == [2, 6] and done["epochs_run"] == 6
    assert run_shared_pretraining(PretrainJob({**SMALL, "seed": 3}, (2, 6)), str(tmp_path))["epochs_run"] == 0  # kept
    for pretrain, clean in ((2, dict(weight_decay=1e-3, augmentation="shift")), (6, dict(momentum=0.9, clip_norm=0.5))):
        cfg = make_config({**SMALL, "seed": 3, "pretrain_epochs": pretrain, **clean})
        state = resume_state_from_snapshot(cfg, str(tmp_path), DEVICE)
        assert state is not None and len(state["history"]) == pretrain
        assert comparable(run_trial(cfg, resume=state)) == comparable(run_trial(cfg))
    other_seed = make_config({**SMALL, "seed": 4, "pretrain_epochs": 2})
    assert resume_state_from_snapshot(other_seed, str(tmp_path), DEVICE) is None  # content-addressed


def test_a_pretraining_that_diverges_ends_its_trials_as_diverged(tmp_path):
    values = {**SMALL, "pretrain_lr": 1e6, "pretrain_epochs": 4}
    run_shared_pretraining(PretrainJob(values, (4,)), str(tmp_path))
    cfg = make_config(values)
    shared = run_trial(cfg, resume=resume_state_from_snapshot(cfg, str(tmp_path), DEVICE))
    assert shared.summary["status"] == "diverged"
    assert comparable(shared) == comparable(run_trial(cfg))


def test_pretrain_key_ignores_the_clean_phase_only():
    a = make_config({"seed": 1, "weight_decay": 0.0, "pretrain_epochs": 10})
    b = make_config({"seed": 1, "weight_decay": 1e-3, "augmentation": "shift", "pretrain_epochs": 30})
    assert pretrain_key(a) == pretrain_key(b)
    assert pretrain_key(a) != pretrain_key(make_config({"seed": 1, "pretrain_lr": 0.01}))


def test_a_snapshot_is_loaded_only_on_the_device_type_it_was_made_on(tmp_path):
    """The key leaves the device out (a planner cannot know what a worker resolves); the
    snapshot records its device type and a trial on another one pretrains by itself."""
    job = PretrainJob({**SMALL, "seed": 5}, (2,))
    run_shared_pretraining(job, str(tmp_path))
    cfg = make_config({**SMALL, "seed": 5, "pretrain_epochs": 2})
    other = "cuda" if DEVICE == "cpu" else "cpu"
    assert SnapshotStore(str(tmp_path)).has(job.key, 2) and job.key == pretrain_key(cfg)
    assert resume_state_from_snapshot(cfg, str(tmp_path), DEVICE) is not None
    assert resume_state_from_snapshot(cfg, str(tmp_path), other) is None
    assert SnapshotStore(str(tmp_path)).load(job.key, 2, DEVICE)["device"] == DEVICE


def test_a_pretraining_job_is_one_small_picklable_value():
    import pickle

    job = PretrainJob({**SMALL, "seed": 1, "pretrain_epochs": 9}, (6, 2, 0, 6), trials=4)
    assert job.durations == (2, 6) and job.config.pretrain_epochs == 6 and job.trials == 4
    assert pickle.loads(pickle.dumps(job)) == job and PretrainJob.from_tune(job.to_tune()) == PretrainJob(job.values, (2, 6))


MEMBERS = [
    dict(SMALL, seed=0),
    dict(SMALL, seed=1, weight_decay=1e-3, momentum=0.9),
    dict(SMALL, seed=2, augmentation="shift", aug_noise=0.05, clip_norm=0.3),
    dict(SMALL, seed=0, lr=0.05, lr_schedule="cosine", epochs=4),  # leaves the pack early
    dict(SMALL, seed=1, pretrain_epochs=2, stop_at_train_acc=0.3),  # pretrains alone first, stops on accuracy
    dict(SMALL, seed=3, augmentation="shift", aug_noise=0.02),  # augmented in one joined batch with member 2 ...
    dict(SMALL, seed=4, aug_noise=0.1),  # ... but not with this one (noise alone)
    dict(SMALL, seed=2, lr=1e3),  # diverges in its first epoch: dropped, the rest go on
]


def test_a_pack_gives_each_member_exactly_its_standalone_result():
    done, epochs = [], []
    packed = run_pack(MEMBERS, on_done=lambda i, r: done.append(i),
                      on_epoch=lambda i, record: epochs.append(i))
    standalone = [run_trial(m) for m in MEMBERS]
    assert [r.summary["status"] for r in standalone][-1] == "diverged"
    assert standalone[3].summary["train_epochs"] == 4 and standalone[4].summary["train_epochs"] < 6
    assert_same_results(packed, standalone)
    assert sorted(done) == list(range(len(MEMBERS)))
    assert epochs.count(4) == len(standalone[4].history)  # its pretraining epochs are reported too


def test_a_pack_without_noise_draws_whole_epochs_and_still_gives_the_standalone_results(monkeypatch):
    """Without Gaussian noise a CPU pack gathers and shifts an epoch's batches at once
    (`stacked_step.whole_epoch`); too big for that, it goes batch by batch. Same bits either way.
    Batches of 96 leave a short last one."""
    import trainables.stacked_step as stacked_step

    members = [dict(SMALL, seed=s, batch_size=96, augmentation=aug, weight_decay=wd, pretrain_epochs=p)
               for s, aug, wd, p in ((0, "shift", 0.0, 0), (1, "none", 1e-3, 0), (2, "shift", 1e-3, 2), (3, "none", 0.0, 0))]
    standalone = [run_trial(m) for m in members]
    epochs_at_once = []
    whole_epoch = stacked_step.whole_epoch

    def spied(*args):
        batches = whole_epoch(*args)
        epochs_at_once.append(batches[0] is not None)
        return batches

    monkeypatch.setattr(stacked_step, "whole_epoch", spied)
    assert_same_results(run_pack(members), standalone)
    assert epochs_at_once and all(epochs_at_once) == (DEVICE == "cpu")  # CUDA's generator goes batch by batch
    epochs_at_once.clear()
    monkeypatch.setattr(stacked_step, "EPOCH_BATCHES_BYTES", 0)
    assert_same_results(run_pack(members), standalone)
    assert epochs_at_once and not any(epochs_at_once)


def test_a_pack_measures_its_members_flatness_exactly_as_each_alone():
    members = [dict(SMALL, epochs=2, seed=s, flatness_samples=n) for s, n in ((0, 2), (1, 3), (2, 2), (3, 0))]
    packed = run_pack(members)
    assert "local_energy_5pct" not in packed[3].summary  # flatness_samples 0: not measured
    assert_same_results(packed, [run_trial(m) for m in members])


def test_a_pack_starts_members_from_shared_snapshots(tmp_path):
    members = [dict(SMALL, seed=s, pretrain_epochs=3, weight_decay=wd) for s in (0, 1) for wd in (0.0, 1e-3)]
    for s in (0, 1):
        run_shared_pretraining(PretrainJob(dict(SMALL, seed=s), (3,)), str(tmp_path))
    starts = [resume_state_from_snapshot(make_config(m), str(tmp_path), DEVICE) for m in members]
    packed = run_pack(members, pretrained=starts)
    assert_same_results(packed, [run_trial(m) for m in members])


def test_a_resumed_pack_finishes_as_if_never_stopped(tmp_path):
    import torch

    snapshots = []
    run_pack(MEMBERS[:4], on_pack_epoch=lambda snap, finished: snapshots.append(snap() if snap else None))
    torch.save([s for s in snapshots if s is not None][4], tmp_path / "pack.pt")  # after 5 epochs
    mid = torch.load(tmp_path / "pack.pt", weights_only=True)  # as the trainable reloads it
    assert mid["epoch"] == 5 and mid["members"][3]["summary"] is not None  # member 3 stopped at 4
    uninterrupted = run_pack(MEMBERS[:4])
    announced = []
    resumed = run_pack(MEMBERS[:4], resume=mid, on_done=lambda i, r: announced.append(i))
    assert [comparable(r) for r in resumed] == [comparable(r) for r in uninterrupted]
    assert announced == [0, 1, 2]  # member 3 ended before the pack's saved state: announced then, not again
    with pytest.raises(ValueError, match="different member configs"):
        run_pack(MEMBERS[1:5], resume=mid)


def test_a_pack_refuses_members_of_different_architectures():
    with pytest.raises(ValueError, match="width"):
        run_pack([dict(SMALL), dict(SMALL, width=16)])


def test_conv_nets_pack_under_vmap_to_float_tolerance():
    members = [dict(model="cnn", width=8, depth=2, epochs=2, flatness_samples=0, stop_at_train_acc=None, seed=s,
                    weight_decay=wd) for s, wd in ((0, 0.0), (1, 1e-3))]
    assert_close_results(run_pack(members), [run_trial(m) for m in members])


def _grid(**extra):
    return parse_sweep({
        "name": "g", "base": {"width": 32, "epochs": 5}, "seeds": 3,
        "axes": {"pretrain_epochs": [0, 10, 30], "weight_decay": [0.0, 1e-3], "augmentation": ["none", "shift"]},
        **extra,
    })


def test_the_plan_runs_each_pretraining_once_to_its_longest_duration():
    jobs = sweep_plan(_grid()).jobs
    assert len(jobs) == 3  # one per seed
    assert all(j.durations == (10, 30) and j.trials == 8 for j in jobs)
    assert sweep_plan(_grid(share_pretraining=False)).jobs == ()
    assert sweep_plan(_grid(search={"kind": "random", "num_samples": 2})).jobs == ()


def sizes(spec, slots) -> dict[int, int]:
    """Members per pack, by MLP width (each test grid varies the architecture in width only)."""
    plan = sweep_plan(spec, slots)
    return {make_config(values).width: plan.pack_plan[architecture(make_config(values))]
            for values in spec.trial_values()}


def test_packs_are_even_and_fill_every_slot():
    spec = _grid(base={"width": 128, "epochs": 5})  # 36 trials
    assert sizes(spec, slots=2) == {128: 9}  # 36 / 16 -> 3 packs, rounded up to 4 for 2 slots
    assert sizes(spec, slots=None) == {128: 12}
    narrow = _grid()  # width 32: up to 32 members (NARROW_PACK_CAP)
    assert sizes(narrow, slots=2) == sizes(narrow, slots=None) == {32: 18} and sizes(narrow, slots=3) == {32: 12}
    assert sizes(_grid(pack=5), slots=2) == {32: 5}
    assert sweep_plan(_grid(base={"model": "cnn", "width": 8}), slots=2).largest_pack == 1  # auto packs MLPs only
    assert sweep_plan(_grid(pack=1), slots=2).largest_pack == 1 and sweep_plan(_grid(pack=1), 2).pack_plan == {}
    packs = sweep_plan(spec.model_copy(update={"pack": 16})).ray_trials
    assert sorted(len(p) for p in packs) == [12, 12, 12]
    assert sorted(tuple(sorted(v.items())) for p in packs for v in p) == sorted(
        tuple(sorted(v.items())) for v in spec.trial_values())


def widths(*values, **extra):
    return _grid(base={"epochs": 5}, axes={**_grid().axes, "width": list(values)}, **extra)


def test_auto_packs_each_architecture_by_itself():
    """On CPU a pack of 1024-wide MLPs costs more than running them alone: those run alone,
    while the grid's narrower MLPs are still packed (one pack size per architecture)."""
    mixed = widths(32, 256, 1024)  # 36 trials of each width
    assert sizes(mixed, slots=2) == {32: 12, 256: 12, 1024: 1}  # 2 + 3 packs, the biggest split: 6 for 2 slots
    trials = sweep_plan(planned_pack(mixed, 2)).ray_trials
    assert sorted(len(t) for t in trials) == [1] * 36 + [12] * 6
    assert all(make_config(v).width == 1024 for t in trials if len(t) == 1 for v in t)
    assert sorted(tuple(sorted(v.items())) for t in trials for v in t) == sorted(
        tuple(sorted(v.items())) for v in mixed.trial_values())
    assert sizes(widths(256, 512), slots=2) == {256: 12, 512: 12}
    assert sizes(widths(256, 1024, resources={"cpu": 1, "gpu": 1}), slots=2) == {256: 12, 1024: 12}  # GPU: packed
    small = widths(16, 32, 48, 64, seeds=1)  # 12 trials each: one pack each fills 2 rounds of 2 slots
    assert sizes(small, slots=2) == {16: 12, 32: 12, 48: 12, 64: 12}  # not 8 packs of 6
    assert sizes(small, slots=3) == {16: 6, 32: 6, 48: 12, 64: 12}  # 4 packs; 2 rounds of 3 need 6: two split
    assert sizes(widths(256, 1024, pack=4), slots=2) == {256: 4, 1024: 4}  # set by hand: as set


def test_a_stored_pack_plan_is_what_a_resume_uses_and_is_checked():
    mixed = widths(128, 1024)
    stored = parse_sweep(planned_pack(mixed, 2).model_dump(), "spec.json")  # as a resume reads it
    assert sizes(stored, slots=None) == sizes(mixed, slots=2) == {128: 9, 1024: 1}  # not 12: planned for 2 slots
    with pytest.raises(SweepError, match="pack_plan names architectures not in the grid: model=mlp width=99"):
        parse_sweep({**stored.model_dump(), "pack_plan": {"model=mlp width=99": 4}}, "spec.json")
    with pytest.raises(SweepError, match="pack_plan is how a grid sweep's pack: auto was resolved"):
        parse_sweep({**stored.model_dump(), "pack": 4}, "spec.json")


def test_pack_needs_a_grid_and_says_so():
    with pytest.raises(SweepError, match="pack: 4 needs search: grid"):
        _grid(pack=4, search={"kind": "random", "num_samples": 2})
    with pytest.raises(SweepError, match="pack"):
        _grid(pack=0)


def test_packed_pretrainings_save_exactly_the_standalone_snapshots(tmp_path):
    import torch

    jobs = [PretrainJob(dict(SMALL, seed=0), (2, 5)), PretrainJob(dict(SMALL, seed=1, pretrain_momentum=0.5), (3,)),
            PretrainJob(dict(SMALL, seed=2, pretrain_lr=1e4), (2, 4)),  # diverges in its first epoch
            PretrainJob(dict(SMALL, seed=3), (1,))]  # leaves the pack first
    for job in jobs:
        run_shared_pretraining(job, str(tmp_path / "alone"))
    reports = run_shared_pretrainings(jobs, str(tmp_path / "packed"))
    assert [r["epochs_run"] for r in reports] == [5, 3, 1, 1]
    for job in jobs:
        for d in job.durations:
            key = pretrain_key(make_config({**job.values, "pretrain_epochs": d}))
            alone, packed = (SnapshotStore(str(tmp_path / w)).load(key, d, DEVICE) for w in ("alone", "packed"))
            assert alone["diverged"] == packed["diverged"] == (job.values["seed"] == 2)
            tolerance = 0 if DEVICE == "cpu" else 1e-3  # see the module docstring
            for name, tensor in alone["model"].items():  # NaN where it diverged: equal_nan
                assert torch.allclose(packed["model"][name], tensor, rtol=tolerance, atol=tolerance, equal_nan=True), name
            if DEVICE == "cpu":
                assert comparable(TrialResult({}, packed["history"])) == comparable(TrialResult({}, alone["history"]))
    again = run_shared_pretrainings(jobs, str(tmp_path / "packed"))
    assert all(r["epochs_run"] == 0 for r in again)  # every snapshot exists: nothing runs


def test_an_owner_records_a_failed_pretraining_so_its_trials_pretrain_alone(tmp_path):
    good = PretrainJob(dict(SMALL, seed=0), (2,))
    mixed = [PretrainJob(dict(SMALL, seed=1), (2,)), PretrainJob(dict(SMALL, seed=2, width=16), (2,))]  # no one pack holds both
    errors = run_owned_pretrainings([[good], mixed], str(tmp_path))
    assert len(errors) == 1 and "one architecture" in errors[0]
    store = SnapshotStore(str(tmp_path))
    key = lambda values: pretrain_key(make_config({**values, "pretrain_epochs": 2}))  # noqa: E731
    assert store.has(key(good.values), 2) and store.failure(key(good.values)) is None
    for job in mixed:
        assert not store.has(key(job.values), 2) and "one architecture" in store.failure(key(job.values))
        cfg = make_config({**job.values, "pretrain_epochs": 2})
        assert resume_state_from_snapshot(cfg, str(tmp_path), DEVICE) is None  # so the trial pretrains alone


def test_pretrainings_pack_per_architecture_over_the_slots():
    spec = _grid(pack="auto")
    plan = sweep_plan(planned_pack(spec, 2))
    jobs = list(plan.jobs)
    assert len(jobs) == 3  # one per seed
    assert [len(g) for g in pretraining_packs(plan, jobs, slots=2)] == [2, 1]
    assert [len(g) for g in pretraining_packs(plan, jobs, slots=None)] == [3]
    assert [len(g) for g in pretraining_packs(sweep_plan(spec.model_copy(update={"pack": 1})), jobs, slots=2)] == [1, 1, 1]
    copies = sweep_plan(planned_pack(_grid(pack="auto", base={"width": 32, "epochs": 5, "pretrain_copies": 2}), 2))
    assert [len(g) for g in pretraining_packs(copies, list(copies.jobs), 2)] == [1, 1, 1]


def planned_pack(spec, slots):
    """The spec as `minima run` stores it: pack: auto resolved for `slots`."""
    return planned(spec, slots)[0]
