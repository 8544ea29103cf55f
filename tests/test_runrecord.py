"""The typed run record: committed records load and write back byte for byte; unknown keys survive; a new
record writes the keys in the order the runs always have."""

import json
import shutil
from pathlib import Path

import pytest

from medsweep.runrecord import STATUSES, NotARecord, RunRecord
from tests.conftest import ROOT

EXAMPLE = sorted((ROOT / "results" / "sweeps" / "example_sweep").glob("*/metrics.json"))


def test_the_example_sweep_is_committed():
    assert len(EXAMPLE) == 8  # lora.r 4, 16 x lora.alpha 16, 32 x train.seed 0, 1 (results/README.md)


@pytest.mark.parametrize("path", EXAMPLE, ids=lambda p: p.parent.name[-8:])
def test_committed_record_round_trips_exactly(path, tmp_path):
    on_disk = json.loads(path.read_text())
    rec = RunRecord.load(path.parent)
    assert rec is not None and rec.is_complete and rec.extra == {}
    assert rec.to_dict() == on_disk and list(rec.to_dict()) == list(on_disk)  # the same keys, in the same order
    assert rec.metrics == on_disk["metrics"] and rec.train == on_disk["train"] and rec.axes == on_disk["axes"]
    rec.save(tmp_path)
    assert (tmp_path / "metrics.json").read_bytes() == path.read_bytes()


def test_unknown_keys_are_kept_in_place_and_written_back(tmp_path):
    data = {"status": "failed", "run_name": "r", "from_the_future": {"x": [1, 2]}, "error": "E: x", "extra": 7}
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    rec = RunRecord.load(tmp_path)
    assert rec is not None and rec.extra == {"from_the_future": {"x": [1, 2]}, "extra": 7}
    assert list(rec.to_dict().items()) == list(data.items())
    rec.status, rec.gpu_hours = "complete", 0.5
    rec.save(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {**data, "status": "complete", "gpu_hours": 0.5}
    assert list(json.loads((tmp_path / "metrics.json").read_text()))[-1] == "gpu_hours"


def test_a_partial_record_writes_only_what_it_holds():
    assert RunRecord.from_dict({"status": "complete"}).to_dict() == {"status": "complete"}
    assert RunRecord.from_dict({}).to_dict() == {}


def test_a_new_record_writes_the_started_keys_then_each_later_section():
    rec = RunRecord(status="running", run_name="r", run_dir="/x/r", axes={"model": "m"}, overrides=["a=1"],
                    hardware={"device": "cpu"}, env={"host": "h"}, started_at="2025-01-01T00:00:00Z")
    started = ["status", "run_name", "run_dir", "axes", "overrides", "data", "hardware", "env", "started_at",
               "metrics", "baseline", "delta", "epochs", "error"]
    assert list(rec.to_dict()) == started
    assert rec.to_dict()["data"] is None and rec.to_dict()["epochs"] == []
    rec.finished_at, rec.model, rec.per_example = "t", {"total_params": 1}, {"f1": [0.5]}
    assert list(rec.to_dict()) == [*started, "model", "per_example", "finished_at"]
    rec.train, rec.wall_time_s, rec.gpu_hours = {"steps": 1}, 2.0, 0.0
    assert list(rec.to_dict())[len(started):] == ["model", "train", "per_example", "finished_at", "wall_time_s",
                                                  "gpu_hours"]


@pytest.mark.parametrize("status", [*STATUSES, None, "done"])
def test_is_complete_only_when_the_status_says_so(status):
    assert RunRecord(status=status).is_complete == (status == "complete")
    assert RunRecord.from_dict({"status": status}).is_complete == (status == "complete")
    assert not RunRecord.from_dict({"metrics": {"f1": 1.0}}).is_complete


def test_load_of_a_missing_or_garbled_record_is_none(tmp_path):
    assert RunRecord.load(tmp_path) is None
    with pytest.raises(FileNotFoundError):
        RunRecord.read(tmp_path)
    for text in ('{"status": "comp', "[1, 2]", "null"):
        (tmp_path / "metrics.json").write_text(text)
        assert RunRecord.load(tmp_path) is None
    with pytest.raises(NotARecord, match="JSON NoneType, not an object"):
        RunRecord.read(tmp_path)
    (tmp_path / "metrics.json").write_bytes(b"\xff\xfe")
    assert RunRecord.load(str(tmp_path)) is None
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "metrics.json").mkdir()
    assert RunRecord.load(tmp_path) is None


def test_row_flattens_a_committed_record(tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(EXAMPLE[0].parent, moved)
    on_disk = json.loads(EXAMPLE[0].read_text())
    rec = RunRecord.load(moved)
    assert rec is not None
    row = rec.row(moved)
    assert row["run_dir"] == str(moved) and row["run_name"] == on_disk["run_name"] != moved.name
    assert row["status"] == "complete" and row["error"] is None
    assert row["lora.r"] == on_disk["axes"]["lora.r"] and row["model"] == on_disk["axes"]["model"]
    assert row["f1"] == on_disk["metrics"]["f1"] and row["perplexity"] == on_disk["metrics"]["perplexity"]
    assert row["baseline.f1"] == on_disk["baseline"]["f1"] and row["delta.bleu"] == on_disk["delta"]["bleu"]
    assert row["peak_memory_mb"] == on_disk["train"]["peak_memory_mb"] and "log_history" not in row
    assert row["gpu_hours"] == on_disk["gpu_hours"]
    assert list(row)[:4] == ["run_dir", "run_name", "status", "error"] and list(row)[-1] == "gpu_hours"


def test_row_of_a_sparse_record():
    rec = RunRecord.from_dict({"status": "failed", "error": "E: x", "axes": {"model": "m", "tags": ["a", "b"]},
                               "metrics": None, "train": {"steps": 2, "other": 1}})
    assert rec.row(Path("/runs/r1")) == {"run_dir": "/runs/r1", "run_name": "r1", "status": "failed",
                                         "error": "E: x", "model": "m", "tags": '["a", "b"]', "steps": 2,
                                         "gpu_hours": None}
