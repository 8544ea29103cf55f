"""medsweep/verdict.py: SLURM's verdict goes into the run records of the jobs it ended without one; a record that
says complete or failed is never rewritten."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from medsweep import verdict
from medsweep.runlock import RunLock
from medsweep.runrecord import RunRecord
from medsweep.slurm import SlurmJob
from tests import fake_slurm

SLURM_RESOURCES = {"timeout_min": 60, "cpus_per_task": 1, "slurm_array_parallelism": 64}


def job(tmp_path: Path, idx: int, job_id: str, **extra) -> dict:
    return {"idx": idx, "overrides": [f"lora.r={4 * (idx + 1)}", "train.seed=0"], "status": "submit",
            "run_dir": str(tmp_path / "sweep" / f"run{idx}"), "resources": SLURM_RESOURCES, "job_id": job_id,
            "outcome": "", "error": "", **extra}


def saved(run_dir: str, **fields) -> RunRecord:
    rec = RunRecord(run_name=Path(run_dir).name, run_dir=run_dir, **fields)
    rec.save(run_dir)
    return rec


def test_a_job_slurm_killed_before_its_record_gets_a_failed_one(tmp_path):
    jobs = [job(tmp_path, 0, "5_0", axes={"lora.r": 4, "train.seed": 0})]
    (log_dir := tmp_path / "sweep" / ".submitit" / "5_0").mkdir(parents=True)
    (log_dir / "5_0_0_log.err").write_text("oom-kill event\n")
    oom = SlurmJob("5_0", "OUT_OF_MEMORY", "", "0:125", 42, 1, "vm", "2026-12-02T19:09:18", "2026-12-02T19:10:00")
    (v,) = verdict.reconcile_jobs(jobs, {"5_0": oom})
    assert (v.idx, v.job_id, v.record, v.action, v.note) == (0, "5_0", "missing", "recorded",
                                                             "SLURM OUT_OF_MEMORY: job 5_0")
    on_disk = json.loads((Path(jobs[0]["run_dir"]) / "metrics.json").read_text())
    assert {k: on_disk[k] for k in ("status", "run_name", "run_dir", "axes", "overrides", "error")} == {
        "status": "failed", "run_name": "run0", "run_dir": jobs[0]["run_dir"], "axes": {"lora.r": 4, "train.seed": 0},
        "overrides": ["lora.r=4", "train.seed=0"], "error": "SLURM OUT_OF_MEMORY: job 5_0"}
    assert on_disk["slurm"] == {"job_id": "5_0", "state": "OUT_OF_MEMORY", "reason": "", "exit_code": "0:125",
                                "elapsed_s": 42, "requeues": 1, "node": "vm", "start": "2026-12-02T19:09:18",
                                "end": "2026-12-02T19:10:00", "log": str(log_dir / "5_0_0_log.err")}
    assert on_disk["finished_at"]


def test_the_failed_record_quotes_the_last_error_line_of_the_jobs_log(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz0123")
    jobs = [job(tmp_path, 0, "6_1")]
    (log_dir := tmp_path / "sweep" / ".submitit" / "6_1").mkdir(parents=True)
    (log_dir / "6_1_0_log.err").write_text(
        "x" * 70000 + "\nTraceback (most recent call last):\nRuntimeError: CUDA error: out of memory "
        "hf_abcdefghijklmnopqrstuvwxyz0123\nsrun: error: vm: task 0: Exited with exit code 1\nsrun: done\n")
    verdict.reconcile_jobs(jobs, {"6_1": SlurmJob("6_1", "FAILED", exit_code="1:0")})
    assert RunRecord.read(jobs[0]["run_dir"]).error == \
        "SLURM FAILED: job 6_1; its log: srun: error: vm: task 0: Exited with exit code 1"
    (log_dir / "6_1_0_log.err").write_text("RuntimeError: CUDA error: hf_abcdefghijklmnopqrstuvwxyz0123\n")
    jobs = [job(tmp_path, 1, "6_1")]
    verdict.reconcile_jobs(jobs, {"6_1": SlurmJob("6_1", "FAILED")})
    error = RunRecord.read(jobs[0]["run_dir"]).error
    assert error.startswith("SLURM FAILED: job 6_1; its log: RuntimeError: CUDA error: ") and "hf_abc" not in error


def test_a_record_left_running_becomes_failed_and_keeps_what_it_had(tmp_path):
    jobs = [job(tmp_path, 0, "7"), job(tmp_path, 1, "8")]
    saved(jobs[0]["run_dir"], status="running", started_at="2026-12-02T19:00:00Z", hardware={"device": "cpu"})
    saved(jobs[1]["run_dir"], status="interrupted", error="KeyboardInterrupt")
    states = {"7": SlurmJob("7", "TIMEOUT"), "8": SlurmJob("8", "CANCELLED", "Dependency")}
    assert [v.action for v in verdict.reconcile_jobs(jobs, states)] == ["recorded", "recorded"]
    first, second = (RunRecord.read(j["run_dir"]) for j in jobs)
    assert (first.status, first.error, first.started_at, first.hardware) == (
        "failed", "SLURM TIMEOUT: job 7", "2026-12-02T19:00:00Z", {"device": "cpu"})
    assert (second.status, second.error) == ("failed", "SLURM CANCELLED: job 8, Dependency")
    assert first.extra["slurm"]["log"] is None  # no submitit log where it would be


def test_complete_and_failed_records_are_never_rewritten(tmp_path, caplog):
    jobs = [job(tmp_path, 0, "7"), job(tmp_path, 1, "8"), job(tmp_path, 2, "9")]
    saved(jobs[0]["run_dir"], status="complete", metrics={"f1": 0.5})
    saved(jobs[1]["run_dir"], status="failed", error="DataError: missing.jsonl")
    Path(jobs[2]["run_dir"]).mkdir()
    Path(jobs[2]["run_dir"], "metrics.json").write_text("{not json")
    before = [Path(j["run_dir"], "metrics.json").read_bytes() for j in jobs]
    states = {i: SlurmJob(i, "FAILED", exit_code="1:0") for i in ("7", "8", "9")}
    with caplog.at_level(logging.WARNING, logger="medsweep.verdict"):
        verdicts = verdict.reconcile_jobs(jobs, states)
    assert [(v.idx, v.record, v.action) for v in verdicts] == [(0, "complete", "flagged"), (2, "corrupt", "flagged")]
    assert verdicts[0].note == "record complete, but SLURM FAILED: job 7 (exit 1:0): check its log"
    assert "run0: record complete, but SLURM FAILED: job 7" in caplog.text
    assert [Path(j["run_dir"], "metrics.json").read_bytes() for j in jobs] == before


def test_jobs_slurm_has_not_ended_or_that_completed_with_their_record_are_left_alone(tmp_path):
    jobs = [job(tmp_path, 0, "7"), job(tmp_path, 1, "8"), job(tmp_path, 2, "9"), job(tmp_path, 3, "")]
    saved(jobs[2]["run_dir"], status="complete", metrics={"f1": 0.5})
    states = {"7": SlurmJob("7", "RUNNING"), "8": SlurmJob("8", "PENDING", "Priority"),
              "9": SlurmJob("9", "COMPLETED")}
    assert verdict.reconcile_jobs(jobs, states) == []
    assert not Path(jobs[0]["run_dir"]).exists() and not Path(jobs[3]["run_dir"]).exists()


def test_completed_without_a_record_is_a_failure_and_dry_run_writes_nothing(tmp_path):
    jobs = [job(tmp_path, 0, "7")]
    states = {"7": SlurmJob("7", "COMPLETED")}
    (v,) = verdict.reconcile_jobs(jobs, states, write=False)
    assert (v.action, v.note) == ("to record", "SLURM COMPLETED: job 7") and not Path(jobs[0]["run_dir"]).exists()
    verdict.reconcile_jobs(jobs, states)
    assert RunRecord.read(jobs[0]["run_dir"]).error == "SLURM COMPLETED: job 7"


def test_a_run_in_use_is_not_recorded(tmp_path):
    """A requeued job that started again between SLURM's answer and the write holds the run's lock: its record
    wins."""
    jobs = [job(tmp_path, 0, "7")]
    with RunLock(Path(jobs[0]["run_dir"])):
        (v,) = verdict.reconcile_jobs(jobs, {"7": SlurmJob("7", "NODE_FAIL")})
    assert v.action == "flagged" and v.note.startswith("not recorded: run directory") and "in use by PID" in v.note
    assert not Path(jobs[0]["run_dir"], "metrics.json").exists()


def test_a_local_sweep_asks_slurm_nothing(tmp_path, monkeypatch):
    calls = fake_slurm.install(tmp_path, monkeypatch)  # no SLURM command on PATH
    jobs = [job(tmp_path, 0, "12617", resources={"timeout_min": 60, "gpus_per_node": 0})]
    assert not verdict.slurm_sweep(jobs) and verdict.states_of(jobs) == {}
    assert verdict.reconcile_jobs(jobs) == [] and not calls.exists()


def test_a_slurm_sweep_asks_slurm(tmp_path, monkeypatch):
    fake_slurm.install(tmp_path, monkeypatch, sacct=fake_slurm.SACCT_ENDED, squeue=fake_slurm.SQUEUE_GONE)
    jobs = [job(tmp_path, 0, "80_1"), job(tmp_path, 1, "80_0"), job(tmp_path, 2, "81")]
    saved(jobs[1]["run_dir"], status="complete", metrics={"f1": 0.5})
    assert [(v.idx, v.note) for v in verdict.reconcile_jobs(jobs)] == [
        (0, "SLURM FAILED: job 80_1"), (2, "SLURM CANCELLED: job 81, DependencyNeverSatisfied")]


def test_the_report_lists_slurms_failures_with_their_error(tmp_path):
    from medsweep.report import collect, failures

    jobs = [job(tmp_path, 0, "7"), job(tmp_path, 1, "8")]
    saved(jobs[0]["run_dir"], status="complete", metrics={"f1": 0.5}, axes={"lora.r": 4})
    verdict.reconcile_jobs(jobs, {"8": SlurmJob("8", "OUT_OF_MEMORY")})
    table = failures(collect([str(tmp_path / "sweep")]))
    assert table.to_dict("records") == [{"run_dir": str(Path(jobs[1]["run_dir"]).absolute()), "status": "failed",
                                         "error": "SLURM OUT_OF_MEMORY: job 8"}]


@pytest.mark.parametrize("resources, expected", [(SLURM_RESOURCES, True), ({"gpus_per_node": 1}, False), ({}, False)])
def test_slurm_sweep(tmp_path, resources, expected):
    assert verdict.slurm_sweep([job(tmp_path, 0, "1", resources=resources)]) is expected


def test_the_lock_is_tried_once_and_the_write_is_logged(tmp_path, caplog, monkeypatch):
    import time

    monkeypatch.setenv("SLURM_JOB_ID", "8")  # RunLock waits for a holder of its own SLURM job id; the verdict never
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    jobs = [job(tmp_path, 0, "7"), job(tmp_path, 1, "8")]
    with caplog.at_level(logging.INFO, logger="medsweep.verdict"), RunLock(Path(jobs[1]["run_dir"])):
        t0 = time.perf_counter()
        verdicts = verdict.reconcile_jobs(jobs, {"7": SlurmJob("7", "TIMEOUT"), "8": SlurmJob("8", "TIMEOUT")})
        assert time.perf_counter() - t0 < 0.5  # a run in use is not waited for
    assert [v.action for v in verdicts] == ["recorded", "flagged"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "#0 run0: recorded as failed (SLURM TIMEOUT: job 7)"]


def test_a_record_the_job_ended_in_the_meantime_wins(tmp_path):
    (j,) = [job(tmp_path, 0, "7")]
    v = verdict.Verdict(idx=0, job_id="7", record="running", action="recorded", note="SLURM TIMEOUT: job 7")
    saved(j["run_dir"], status="complete", metrics={"f1": 0.5})  # written after reconcile_jobs read "running"
    verdict._write(j, Path(j["run_dir"]), SlurmJob("7", "TIMEOUT"), v)
    assert (v.action, v.note) == ("", "record became complete")
    assert RunRecord.read(j["run_dir"]).status == "complete"


def test_the_logs_last_error_line_from_bytes_that_are_no_utf8_cut_to_300_characters(tmp_path):
    log_file = tmp_path / "5_0_log.err"
    log_file.write_bytes(b"\xff\xfe torch\nValueError: bad byte \xe9 here\nsrun: done\n")
    assert verdict._last_error(log_file) == "ValueError: bad byte \ufffd here"
    log_file.write_bytes(b"RuntimeError: " + b"x" * 400 + b"\n")
    assert verdict._last_error(log_file) == "RuntimeError: " + "x" * 286
    assert verdict._last_error(tmp_path / "none.err") == ""


def test_only_the_logs_last_64_kib_are_read(tmp_path):
    log_file = tmp_path / "5_0_log.err"
    head = b"rror: before the last 64 KiB\n"
    tail = head + b"x" * (65536 - len(head))
    log_file.write_bytes(b"E" + tail)  # the last 65,536 bytes begin at "rror", which names no error
    assert verdict._last_error(log_file) == ""
    log_file.write_bytes(b"E" + tail[:-1])  # 64 KiB in all: read whole
    assert verdict._last_error(log_file) == "Error: before the last 64 KiB"
