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


def test_the_end_of_a_pack_is_read_from_its_tail_past_a_member_that_finished_early(tmp_path):
    from sweeps.storage.trial_end import TAIL_BYTES, read_trial_end

    config = {"_members": [{"seed": 0}, {"seed": 1}]}
    padding = "x" * 2000  # epoch reports large enough that member 0's final row lies beyond the first tail read
    reports = [{"records": [row(0, 1), row(1, 1)], "timestamp": 100, "time_total_s": 1.0, "config": config},
               {"records": [{"member": 0, "step": 1, "final": True, "stage": "final", "status": "ok"}],
                "timestamp": 150, "time_total_s": 1.5, "config": config}]
    reports += [{"records": [row(1, s, note=padding)], "timestamp": 200 + s, "time_total_s": 2.0 + s, "config": config}
                for s in range(2, 2 + 2 * TAIL_BYTES // len(padding))]
    last = reports[-1]["records"][-1]["step"]
    finished = reports + [{"records": [{"member": 1, "step": last, "final": True, "stage": "final", "status": "diverged"}],
                           "timestamp": 999, "time_total_s": 42.0, "config": config}]
    end = read_trial_end(write(tmp_path, finished, raw_tail='{"records": [{"member": 1, "st'))  # a torn last line
    assert end.finished and end.members == [{"seed": 0}, {"seed": 1}]
    assert {m: (r["status"], r["timestamp"]) for m, r in end.finals.items()} == {0: ("ok", 150), 1: ("diverged", 999)}
    assert end.epochs == [1, last] and end.time_total_s == 42.0 and end.timestamp == 999

    running = read_trial_end(write(tmp_path, reports))  # member 1 still running: its epoch rows so far
    assert not running.finished and list(running.finals) == [0]
    assert running.epochs == [1, last] and running.time_total_s == reports[-1]["time_total_s"]
