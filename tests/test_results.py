"""Reading a trial's stored rows: plain reports, batched `records` reports (packs), replays."""

import json

import pytest

from sweeps.storage.results import read_result_rows, read_result_table


def write(tmp_path, reports, raw_tail=""):
    (tmp_path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reports) + raw_tail)
    return str(tmp_path)


def row(member, step, **extra):
    return {"member": member, "step": step, "epoch": step, "stage": "train", "final": False, "test_acc": 0.1 * step,
            **extra}


@pytest.mark.parametrize("nan", [False, True], ids=["pyarrow", "python-fallback"])
def test_batched_records_expand_to_rows_with_their_reports_timestamp(tmp_path, nan):
    reports = [
        {"records": [row(0, 1), row(1, 1)], "timestamp": 100, "training_iteration": 1},
        {"records": [row(0, 2), row(1, 2, test_loss=float("nan") if nan else 1.0)], "timestamp": 200},
        {"records": [{"member": 1, "step": 2, "final": True, "stage": "final", "status": "diverged"}], "timestamp": 300},
        {"records": [row(0, 2)], "timestamp": 400},  # a restored pack replays epoch 2: the later row wins
    ]
    table = read_result_table(write(tmp_path, reports))
    rows = table.to_pylist()
    assert [(r["member"], r["step"], r["final"]) for r in rows] == [
        (0, 1, False), (0, 2, False), (1, 1, False), (1, 2, False), (1, 2, True)]
    assert [r["timestamp"] for r in rows] == [100, 400, 100, 200, 300]
    assert read_result_rows(str(tmp_path), member=1)[-1]["status"] == "diverged"
    assert table.schema.field("test_acc").type == table.schema.field("test_loss").type


def test_plain_reports_and_a_torn_last_line(tmp_path):
    reports = [row(None, 1, timestamp=1), row(None, 2, timestamp=2)]
    rows = read_result_rows(write(tmp_path, reports, raw_tail='{"step": 3, "epo'))
    assert [r["step"] for r in rows] == [1, 2]
