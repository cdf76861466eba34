"""A sweep's plan is computed once, from its validated spec: `validate` and `run` print the same
lines from it, the runner hands that one value on, and a stored spec plans the same again."""

from __future__ import annotations

import json
from pathlib import Path

from ray.tune.search import Searcher

from sweeps.design import plan as plan_module
from sweeps.run import runner
from sweeps.search import snapshot_gate
from minima.cli import main
from sweeps.run.notices import plan_lines
from sweeps.design.plan import planned, sweep_plan
from sweeps.search.search_space import build_search
from sweeps.design.spec import load_sweep, parse_sweep
from trainables.config import make_config
from trainables.metrics import EPOCH_METRICS, FINAL_METRICS
from trainables.pretraining import PretrainJob, SnapshotStore, resume_state_from_snapshot, run_owned_pretrainings
from trainables.stages import resolve_device
from trainables.tune_trainable import PRETRAIN_KEY

SMOKE = str(Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml")


def test_validate_and_run_say_the_same_plan_each_made_once(tmp_path, monkeypatch, capsys):
    made, configs = [], []
    real_plan, real_config = plan_module.sweep_plan, plan_module.make_config
    monkeypatch.setattr(plan_module, "sweep_plan", lambda *a: made.append(real_plan(*a)) or made[-1])
    monkeypatch.setattr(plan_module, "make_config", lambda v: configs.append(v) or real_config(v))
    monkeypatch.setattr("sweeps.cluster.ray_cluster.local_slots", lambda spec: 2)  # as on 2 CPUs
    monkeypatch.setattr(runner, "local_slots", lambda spec: 2)

    assert main(["validate", SMOKE, "--set", f"storage={tmp_path}"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(made) == 1 and len(configs) == 8  # one plan, each of the 8 trial configs made once
    validated = plan_lines(made[0])
    assert [line for line in printed if line[2:] in validated] == [f"  {line}" for line in validated]

    handed: dict = {}
    for name in ("preflight", "_start_ray", "only_json_results"):
        monkeypatch.setattr(runner, name, lambda *a, **k: None)
    monkeypatch.setattr(runner, "has_results", lambda spec: False)
    monkeypatch.setattr(runner, "write_spec", lambda spec, log: handed.update(stored=spec))
    monkeypatch.setattr(runner, "build_tuner", lambda spec, plan, log, writer: handed.update(tuner=plan))
    monkeypatch.setattr(runner, "_fit", lambda plan, make_tuner: handed.update(fit=plan) or make_tuner())
    monkeypatch.setattr(runner, "report_sharing", lambda plan, store, on_notice: handed.update(report=plan))
    monkeypatch.setattr(runner, "_finish", lambda spec, plan, grid, writer: "done")
    notices: list[str] = []
    assert runner.run_sweep(load_sweep(SMOKE), log_to_mlflow=False, on_notice=notices.append) == "done"
    assert len(made) == 2 and len(configs) == 16
    assert notices == validated == plan_lines(made[1])  # run says what validate said
    assert handed["tuner"] is handed["fit"] is handed["report"] is made[1]
    assert handed["stored"].pack_plan == made[1].pack_plan  # pack: auto as resolved, for a resume


def test_the_plan_says_how_big_the_sweep_is():
    plan = sweep_plan(load_sweep(SMOKE), slots=2)
    # 8 trials, half pretraining 5 epochs; each logs every metric for at most every epoch, then its finals
    epochs = 4 * (5 + 15) + 4 * 15
    rows = epochs * len(EPOCH_METRICS) + 8 * len(FINAL_METRICS)
    assert plan_lines(plan)[0] == (f"size      8 trials in 2 Ray trials; MLflow: 9 runs (a trial each, and the parent), "
                                   f"at most {rows:,} metric rows (fewer where trials stop early)")
    edge = load_sweep(SMOKE, {"axes.pretrain_epochs": {"low": 0, "high": 8, "count": 3},
                              "search": {"kind": "boundary", "max_trials": 40}})
    assert plan_lines(sweep_plan(edge)) == ["size      at most 40 trials; MLflow: at most 41 runs (a trial each, and the parent)"]


def test_a_stored_spec_plans_as_the_sweep_started():
    spec = parse_sweep({"name": "w", "base": {"epochs": 5}, "seeds": 3,
                        "axes": {"pretrain_epochs": [0, 10], "weight_decay": [0.0, 1e-3], "width": [128, 1024]}})
    started, plan = planned(spec, 2)
    stored = parse_sweep(json.loads(json.dumps(started.model_dump())), "spec.json")  # as a resume reads it
    assert sweep_plan(stored) == sweep_plan(stored, 7) == plan  # the slots were resolved once, when it started
    assert plan.pack_plan == started.pack_plan and len(plan.jobs) == 6
    assert plan.largest_pack == 6 and sweep_plan(spec).largest_pack == 12  # 12 of width 128 split for 2 slots


def handed_out(gate) -> list[dict]:
    out = []
    while (config := gate.suggest(f"t{len(out)}")) not in (None, Searcher.FINISHED):
        out.append(config)
    return out


def test_a_gpu_sweep_whose_workers_have_no_cuda_still_shares_its_pretraining(tmp_path, monkeypatch):
    """`device: auto` with resources.gpu > 0 on workers without CUDA (a fake GPU cluster): the
    owner pretrains wherever it resolves, and the trials waiting for it find its snapshots."""
    monkeypatch.setattr(snapshot_gate, "POLL_S", 0.0)
    spec = parse_sweep({"name": "g", "base": {"width": 16, "epochs": 2, "flatness_samples": 0}, "seeds": 1, "pack": 1,
                        "axes": {"pretrain_epochs": [0, 2], "weight_decay": [0.0, 1e-3]},
                        "resources": {"cpu": 1, "gpu": 0.25}})
    store = str(tmp_path)
    _, _, gate = build_search(spec, sweep_plan(spec), store)
    first = handed_out(gate)
    owners = [c for c in first if PRETRAIN_KEY in c]
    assert len(owners) == 1 and len(first) == 3  # the other trial pretraining 2 epochs waits for the owner
    groups = [[PretrainJob.from_tune(job) for job in group] for group in owners[0][PRETRAIN_KEY]]
    assert run_owned_pretrainings(groups, store) == []  # as the owner trial runs them
    rest = handed_out(gate)
    assert len(rest) == 1 and PRETRAIN_KEY not in rest[0]  # released by the snapshot, not by its owner ending
    cfg = make_config(rest[0])
    assert resume_state_from_snapshot(cfg, store, resolve_device(cfg.device).type) is not None
    assert SnapshotStore(store).failure(groups[0][0].key) is None


def test_a_grid_trials_keys_are_read_from_the_plan_not_made_again(monkeypatch):
    """The MLflow runs and the outcome find each planned trial's keys by the values Tune hands
    the trainable; only a trial the plan does not hold gets its config built."""
    from sweeps.design import keys as keys_module
    from sweeps.design.keys import TrialKeys, cell_key, trial_key

    spec = load_sweep(SMOKE)
    plan = sweep_plan(spec, slots=2)
    known = plan.known_keys()
    expected = {t.keys.trial: t.keys.cell for t in plan.trials}
    assert {trial_key(t.values): cell_key(t.values) for t in plan.trials} == expected
    built = []
    monkeypatch.setattr(keys_module, "make_config", lambda v: built.append(v) or make_config(v))
    handed = [dict(values) for members in plan.ray_trials for values in members]  # as Tune hands them over
    assert {known.of(v).trial: known.of(v).cell for v in handed} == expected and built == []
    other = {**plan.trials[0].values, "seed": 99}
    assert known.of(other) == TrialKeys(trial_key(other), cell_key(other)) and len(built) == 3
