"""Sweep storage on a local path: a file is whole or absent, even if the writer is killed."""

import fnmatch
import os
import pickle

import pyarrow.fs

from sweeps.atomic_storage import storage_filesystem


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
