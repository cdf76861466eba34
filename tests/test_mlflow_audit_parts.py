"""The MLflow audit of a sweep in parts reads back only the parts no earlier check confirmed
(against a real SQLite tracking store; the sweep's storage built by hand, no Ray)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from sweeps.design.keys import trial_key
from sweeps.storage.sweep_files import mark_part_done, read_mlflow_check
from sweeps.tracking import mlflow_audit
from sweeps.tracking.mlflow_audit import audit_mlflow
from sweeps.tracking.mlflow_runs import PART_TAG
from sweeps.tracking.mlflow_sync import sync_from_storage
from sweeps.tracking.mlflow_writer import MLflowWriter

SWEEP = "sweep"
PER_PART = 3  # trials a part


def _trial(folder, seed: int) -> str:
    """A finished trial (config: its seed) in `folder`; its key."""
    trial = folder / f"trial_{seed:05d}"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps({"seed": seed}))
    rows = [{"step": 1, "stage": "train", "test_acc": 0.5, "timestamp": 1_000 + seed, "final": False},
            {"step": 1, "stage": "final", "status": "ok", "train_epochs": 1, "timestamp": 1_001 + seed, "final": True}]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return trial_key({"seed": seed})


def _sweep_in_parts(root, parts: int, done: int) -> tuple[str, dict[int, set[str]]]:
    """A sweep of `parts` parts of finished trials, the first `done` of them marked done; its
    folder and each part's trial keys."""
    sweep = root / SWEEP
    keys = {}
    for part in range(parts):
        folder = sweep / f"part-{part:03d}"
        keys[part] = {_trial(folder, part * PER_PART + i) for i in range(PER_PART)}
        if part < done:
            mark_part_done(str(folder), {"ok": PER_PART})
    return str(sweep), keys


def _sync(uri: str, sweep: str) -> None:
    sync_from_storage(MLflowWriter(uri, SWEEP, axes=[]), sweep)


def _searches(monkeypatch) -> list[str]:
    """The filter of every search the audit sends the tracking store, in order."""
    searched: list[str] = []

    class Recording:
        def __init__(self, uri: str):
            self._client = MlflowClient(uri)

        def search_runs(self, experiment_ids, filter_string="", *args, **kwargs):
            searched.append(filter_string)
            return self._client.search_runs(experiment_ids, filter_string, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._client, name)

    monkeypatch.setattr(mlflow_audit, "quick_client", lambda uri, **_: Recording(uri))
    return searched


def _parts_searched(searched: list[str]) -> set[str]:
    return {f.split(f"`{PART_TAG}` = ")[1].strip("'") for f in searched if f"`{PART_TAG}` = " in f}


def _delete_runs(uri: str, keys: set[str]) -> None:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(SWEEP).experiment_id
    for run in client.search_runs([experiment], "tags.trial_key != ''", max_results=1_000):
        if run.data.tags["trial_key"] in keys:
            client.delete_run(run.info.run_id)


def test_a_resume_reads_back_only_the_parts_no_earlier_check_confirmed(tmp_path, monkeypatch):
    """Parts 0 and 1 done and confirmed by a replay; the resumed driver ran part 2 and its writer
    confirmed none of it: only part 2's runs are read back, and the confirmed parts count from
    their record, so deleting their runs changes nothing this audit sees."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep, keys = _sweep_in_parts(tmp_path, parts=3, done=2)
    _sync(uri, sweep)
    assert read_mlflow_check(sweep)["confirmed"] == {"part-000": 3, "part-001": 3}  # part 2 is not done
    _delete_runs(uri, keys[0] | keys[1])
    searched = _searches(monkeypatch)

    audit = audit_mlflow(sweep, uri, SWEEP, {2: keys[2]})
    assert (audit.trials, audit.missing, audit.error) == (9, 0, None) and audit.complete
    assert _parts_searched(searched) == {"2"} and len(searched) == 2  # part 2's, and the runs without a part tag
    assert audit.confirmed == {0: 3, 1: 3}  # part 2 can still change: not confirmed, though complete

    mark_part_done(f"{sweep}/part-002", {"ok": PER_PART})  # the driver's next resume finished it
    searched.clear()
    audit = audit_mlflow(sweep, uri, SWEEP, {2: keys[2]}, logged=keys[2])  # its writer saw every run taken
    assert audit.complete and audit.trials == 9 and searched == []  # nothing to ask the store
    assert read_mlflow_check(sweep)["confirmed"] == {"part-000": 3, "part-001": 3, "part-002": 3}


def test_a_part_no_check_confirmed_is_read_from_storage_and_confirmed_once(tmp_path, monkeypatch):
    """A resume after a driver killed before its audit: the done parts it skipped are read from
    storage and MLflow once, then confirmed; the next audit reads none of them."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep, keys = _sweep_in_parts(tmp_path, parts=3, done=3)
    _sync(uri, sweep)
    (tmp_path / SWEEP / "minima_mlflow.json").unlink()  # as if no check had ever ended
    searched = _searches(monkeypatch)

    audit = audit_mlflow(sweep, uri, SWEEP)
    assert audit.complete and audit.trials == 9 and audit.confirmed == {0: 3, 1: 3, 2: 3}
    assert _parts_searched(searched) == {"0", "1", "2"}
    searched.clear()
    assert audit_mlflow(sweep, uri, SWEEP).trials == 9 and searched == []


def test_a_confirmation_at_another_tracking_uri_is_not_trusted(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    other = f"sqlite:///{tmp_path}/other.db"  # a resume with --set tracking_uri=...: holds none of the runs
    sweep, keys = _sweep_in_parts(tmp_path, parts=2, done=2)
    _sync(uri, sweep)
    searched = _searches(monkeypatch)

    elsewhere = audit_mlflow(sweep, other, SWEEP)
    assert (elsewhere.trials, elsewhere.missing, elsewhere.confirmed) == (6, 6, {})
    check = read_mlflow_check(sweep)
    assert (check["tracking_uri"], check["missing"], check["confirmed"]) == (other, 6, {})

    searched.clear()
    back = audit_mlflow(sweep, uri, SWEEP)  # the first URI's record was replaced: read back again
    assert back.complete and back.confirmed == {0: 3, 1: 3} and _parts_searched(searched) == {"0", "1"}


def test_an_unconfirmed_part_with_a_missing_run_is_reported_missing(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep, keys = _sweep_in_parts(tmp_path, parts=3, done=3)
    _sync(uri, sweep)
    check = read_mlflow_check(sweep)
    (tmp_path / SWEEP / "minima_mlflow.json").write_text(json.dumps({**check, "confirmed": {"part-000": 3}}))
    lost = sorted(keys[2])[0]
    _delete_runs(uri, {lost})
    searched = _searches(monkeypatch)

    audit = audit_mlflow(sweep, uri, SWEEP)
    assert (audit.trials, audit.missing, audit.error) == (9, 1, None)
    assert audit.confirmed == {0: 3, 1: 3}  # part 1 read back and whole; part 2 lacks a run
    assert _parts_searched(searched) == {"1", "2"}
    check = read_mlflow_check(sweep)
    assert (check["finished"], check["missing"], check["confirmed"]) == (9, 1, {"part-000": 3, "part-001": 3})

    unreachable = audit_mlflow(sweep, "http://127.0.0.1:9", SWEEP)  # another URI, and down: nothing confirmed
    assert unreachable.missing == 9 and unreachable.error and unreachable.confirmed == {}


def test_a_replay_confirms_what_it_completed_and_one_cut_short_confirms_nothing(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep, keys = _sweep_in_parts(tmp_path, parts=2, done=2)
    _sync(uri, sweep)
    assert read_mlflow_check(sweep)["confirmed"] == {"part-000": 3, "part-001": 3}

    def cut_short(self, pending, order, *args, **kwargs):
        raise ConnectionError("tracking server gone")

    monkeypatch.setattr(MLflowWriter, "flush", cut_short)
    with pytest.raises(ConnectionError):
        _sync(uri, sweep)
    check = read_mlflow_check(sweep)
    assert check["confirmed"] == {} and check["tracking_uri"] == uri  # the rest of the last check stands


def test_an_extended_sweeps_own_trials_are_confirmed_and_one_experiment_alone_is_not(tmp_path, monkeypatch):
    """The sweep's own folder holds trials that change no more once an extension put parts
    beside it; a sweep run as one experiment, not extended, is read back as before."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = tmp_path / SWEEP
    own = {_trial(sweep, seed) for seed in range(4)}
    _sync(uri, str(sweep))
    assert read_mlflow_check(str(sweep))["confirmed"] == {}
    searched = _searches(monkeypatch)
    audit = audit_mlflow(str(sweep), uri, SWEEP, {None: own})
    assert audit.complete and audit.confirmed == {} and len(searched) == 1 and not _parts_searched(searched)

    added = {_trial(sweep / "part-001", seed) for seed in range(4, 6)}  # the extension's part
    mark_part_done(str(sweep / "part-001"), {"ok": 2})
    searched.clear()
    audit = audit_mlflow(str(sweep), uri, SWEEP, {1: added}, logged=added)
    assert audit.complete and audit.trials == 6 and audit.confirmed == {None: 4, 1: 2}
    assert len(searched) == 1 and not _parts_searched(searched)  # the runs without a part tag: the sweep's own
    assert read_mlflow_check(str(sweep))["confirmed"] == {".": 4, "part-001": 2}
    searched.clear()
    assert audit_mlflow(str(sweep), uri, SWEEP).trials == 6 and searched == []


def test_a_sweep_run_as_one_experiment_that_ended_well_is_confirmed_once(tmp_path, monkeypatch):
    """Its runner saw every trial end well (`ended`): nothing will run there again, so the next
    audit (an extension's, a resume's) reads none of its runs back."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = tmp_path / SWEEP
    own = {_trial(sweep, seed) for seed in range(4)}
    _sync(uri, str(sweep))
    searched = _searches(monkeypatch)
    audit = audit_mlflow(str(sweep), uri, SWEEP, {None: own}, ended=frozenset({None}))
    assert audit.complete and audit.confirmed == {None: 4} and len(searched) == 1
    searched.clear()
    assert audit_mlflow(str(sweep), uri, SWEEP).trials == 4 and searched == []
