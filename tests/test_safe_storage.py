"""Sweep storage on a local path stays restorable whenever the driver is killed."""

import fnmatch
import os
import pickle
from types import SimpleNamespace

import pyarrow.fs

from sweeps.storage.safe_storage import prune_unreferenced_checkpoints, storage_filesystem


def _write(fs, path, data: bytes = b"{}") -> None:
    with fs.open_output_stream(str(path)) as stream:
        stream.write(data)


def test_a_file_appears_only_when_its_writer_closes_it(tmp_path):
    fs = storage_filesystem(str(tmp_path))
    stream = fs.open_output_stream(f"{tmp_path}/experiment_state-2026.json")
    stream.write(b'{"trials": []}')
    # a writer killed here leaves no file that Tune would read as the newest experiment state
    assert not fnmatch.filter(os.listdir(tmp_path), "experiment_state-*.json")
    stream.close()
    assert os.listdir(tmp_path) == ["experiment_state-2026.json"]
    assert (tmp_path / "experiment_state-2026.json").read_bytes() == b'{"trials": []}'


def test_it_survives_pickling_to_ray_workers_and_copies_folders(tmp_path):
    fs = pickle.loads(pickle.dumps(storage_filesystem(str(tmp_path / "storage"))))
    staging = tmp_path / "staging" / "trial_1"
    staging.mkdir(parents=True)
    (staging / "result.json").write_text('{"step": 1}\n' * 1000)
    pyarrow.fs.copy_files(str(tmp_path / "staging"), str(tmp_path / "storage"),
                          source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
    assert (tmp_path / "storage" / "trial_1" / "result.json").read_text() == '{"step": 1}\n' * 1000
    assert storage_filesystem("s3://bucket/sweeps") is None  # object stores are atomic already


def _checkpoints(experiment, *names):
    for name in names:
        (experiment / "trial_a" / name).mkdir(parents=True)
        (experiment / "trial_a" / name / "state.pt").write_bytes(b"weights")
    return [experiment / "trial_a" / name for name in names]


def test_a_deleted_checkpoint_outlives_two_state_copies(tmp_path):
    """The copy in flight when Ray deletes may hold a state naming the checkpoint; the next
    one began after it and cannot."""
    fs = storage_filesystem(str(tmp_path))
    old, new = _checkpoints(tmp_path, "checkpoint_000001", "checkpoint_000002")
    state = tmp_path / "experiment_state-2026-11-24_01-00-00.json"
    _write(fs, state)
    fs.delete_dir(str(old))  # Ray registered checkpoint 2, keeps only the newest
    assert old.exists()
    _write(fs, state)
    assert old.exists(), "deleted after one copy: a driver killed in the next one could not resume"
    _write(fs, tmp_path / "basic-variant-state-2026-11-24_01-00-00.json")  # other state files do not count
    assert old.exists()
    _write(fs, state)
    assert not old.exists() and new.exists()
    fs.delete_dir(str(tmp_path / "trial_a"))  # anything but a checkpoint goes at once
    assert not (tmp_path / "trial_a").exists()


def test_a_resumed_session_counts_its_own_state_file(tmp_path):
    fs = storage_filesystem(str(tmp_path))
    (old,) = _checkpoints(tmp_path, "checkpoint_000001")
    _write(fs, tmp_path / "experiment_state-2026-11-24_01-00-00.json")
    fs.delete_dir(str(old))
    _write(fs, tmp_path / "experiment_state-2026-11-24_01-00-00.json")  # a copy also rewrites older sessions
    _write(fs, tmp_path / "experiment_state-2026-11-24_02-00-00.json")  # what Tune would restore from
    assert old.exists()
    _write(fs, tmp_path / "experiment_state-2026-11-24_02-00-00.json")
    assert not old.exists()


def test_the_end_of_a_sweep_removes_what_ray_no_longer_keeps(tmp_path):
    fs = storage_filesystem(str(tmp_path))
    first, second, third = _checkpoints(tmp_path, "checkpoint_000001", "checkpoint_000002", "checkpoint_000003")
    fs.delete_dir(str(second))  # pending, never carried out: the sweep ended
    killed_writer = tmp_path / "trial_a" / ".result.json.tmp-0a1b2c3d"
    killed_writer.write_bytes(b'{"step": 1')
    kept = SimpleNamespace(path=str(third))
    result = SimpleNamespace(path=str(tmp_path / "trial_a"), best_checkpoints=[(kept, {})])
    assert prune_unreferenced_checkpoints(str(tmp_path), [result]) == 1  # `first`: left by a killed driver
    assert not first.exists() and not second.exists() and third.exists()
    assert not killed_writer.exists()
