"""medsweep-status (medsweep/status.py): one row per job of a sweep with SLURM's state, the record's status and the
job's progress; counts; --json; exit codes; --watch; --resubmit's command. The rows of a constructed sweep directory
(pretend SLURM commands: tests/fake_slurm.py), then the live SLURM of scripts/slurm_start.sh (marked slurm)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from medsweep import record, slurm, status
from medsweep.runrecord import RunRecord
from tests import fake_slurm
from tests.conftest import ROOT, run_medsweep

SLURM_RESOURCES = {"timeout_min": 60, "cpus_per_task": 1, "slurm_array_parallelism": 64}
LOCAL_RESOURCES = {"timeout_min": 60, "cpus_per_task": 1, "gpus_per_node": 0}


def make_sweep(root: Path, jobs: list[dict], resources: dict) -> Path:
    """A sweep directory with a jobs file as the launcher writes it (relative run dirs, as with the default
    output_root=results)."""
    sweep = root / "sweeps" / "grid"
    sweep.mkdir(parents=True)
    full = [{"idx": i, "overrides": ["experiment=smoke", f"lora.r={4 * 2 ** i}"], "status": "submit",
             "run_dir": f"results/sweeps/grid/run{i}", "reason": "", "resources": resources, "job_id": "",
             "outcome": "", "error": "", **j} for i, j in enumerate(jobs)]
    record.atomic_write_json(sweep / "sweep_jobs.json", full)
    return sweep


def write_record(sweep: Path, i: int, **fields) -> None:
    RunRecord(run_name=f"run{i}", run_dir=str(sweep / f"run{i}"), **fields).save(sweep / f"run{i}")


def stamp(age_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - age_s))


def write_progress(sweep: Path, i: int, age_s: float = 5, **fields) -> None:
    record.atomic_write_json(sweep / f"run{i}" / "progress.json", {**fields, "updated_at": stamp(age_s)})


@pytest.fixture
def local_sweep(tmp_path):
    sweep = make_sweep(tmp_path, [
        {"job_id": "12617", "outcome": "completed"}, {"job_id": "12618", "outcome": "failed", "error": "exit 1"},
        {"job_id": "12619"}, {"job_id": "12620"}, {"status": "refused", "reason": "does not fit: needs 18.9 GiB"},
        {}], LOCAL_RESOURCES)
    write_record(sweep, 0, status="complete", metrics={"f1": 0.5}, wall_time_s=300.5)
    write_record(sweep, 1, status="failed", error="DataError: missing.jsonl")
    write_record(sweep, 2, status="running", started_at=stamp(3600 + 57))  # training's elapsed_s: its own
    write_progress(sweep, 2, phase="train", step=120, total_steps=400, loss=1.234, elapsed_s=57.0, eta_s=133.0)
    write_record(sweep, 3, status="running")
    write_progress(sweep, 3, age_s=3600, phase="eval", step=400, total_steps=400, loss=0.9, task="generation",
                   questions_done=8, questions_total=24, elapsed_s=30.0, eta_s=60.0)
    return sweep


def test_a_local_sweeps_rows_come_from_its_records(local_sweep, tmp_path, monkeypatch):
    calls = fake_slurm.install(tmp_path, monkeypatch)  # a local sweep asks SLURM nothing
    rows, warnings = status.rows(local_sweep)
    assert warnings == [] and not calls.exists()
    assert [(r.state, r.record, r.reason) for r in rows] == [
        ("COMPLETED", "complete", ""), ("FAILED", "failed", "DataError: missing.jsonl"), ("RUNNING", "running", ""),
        ("RUNNING", "running", ""), ("REFUSED", "missing", "does not fit: needs 18.9 GiB"),
        ("NOT_SUBMITTED", "missing", "")]
    running = rows[2]
    assert (running.phase, running.step, running.total_steps, running.loss, running.eta_s) == (
        "train", 120, 400, 1.234, 133.0)
    assert 3657 <= running.elapsed_s < 3667  # since the record's start (the job's, not training's)
    assert [r.elapsed_s for r in rows[:2]] == [300.5, None]  # the wall time of a complete record
    assert rows[3].flag == "no progress for 1h00m" and rows[2].flag == ""
    assert [r.run for r in rows] == [f"lora.r={4 * 2 ** i}" for i in range(6)]  # what varies, not experiment=smoke
    assert rows[0].run_dir == str(local_sweep.absolute() / "run0")  # relative to where the sweep was launched
    assert status.counts(rows) == {"RUNNING": 2, "COMPLETED": 1, "FAILED": 1, "NOT_SUBMITTED": 1, "REFUSED": 1}
    assert status.summary(rows) == "6 jobs: 2 RUNNING, 1 COMPLETED, 1 FAILED, 1 NOT_SUBMITTED, 1 REFUSED; 1 flagged"


def test_json_for_scripts(local_sweep, capsys):
    assert status.main([str(local_sweep), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"] == {"RUNNING": 2, "COMPLETED": 1, "FAILED": 1, "NOT_SUBMITTED": 1, "REFUSED": 1}
    assert [j["state"] for j in out["jobs"]] == ["COMPLETED", "FAILED", "RUNNING", "RUNNING", "REFUSED",
                                                 "NOT_SUBMITTED"]
    assert out["jobs"][2] | {"run_dir": "", "elapsed_s": 0} == {
        "idx": 2, "job_id": "12619", "state": "RUNNING", "requeues": 0, "reason": "", "record": "running",
        "phase": "train", "step": 120, "total_steps": 400, "loss": 1.234, "questions_done": None,
        "questions_total": None, "elapsed_s": 0, "eta_s": 133.0,
        "flag": "", "run": "lora.r=16", "run_dir": "", "error": ""}
    assert out["jobs"][1]["error"] == "DataError: missing.jsonl"


def test_the_table(local_sweep, capsys):
    assert status.main([str(local_sweep)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[-1].strip() == "6 jobs: 2 RUNNING, 1 COMPLETED, 1 FAILED, 1 NOT_SUBMITTED, 1 REFUSED; 1 flagged"
    running = next(line for line in lines if "12619" in line)
    assert all(cell in running for cell in ("RUNNING", "120/400", "1.234", "1h00m", "2m13s", "lora.r=16"))
    assert "eval 8/24" in next(line for line in lines if "12620" in line)
    assert "does not fit: needs 18.9 GiB" in next(line for line in lines if "REFUSED" in line)
    assert all(line == line.rstrip() for line in lines)
    assert "DataError: missing.jsonl" in out


def test_a_terminal_gets_the_same_table_from_rich(local_sweep):
    import io

    from rich.console import Console

    rows, _ = status.rows(local_sweep)
    console = Console(file=io.StringIO(), width=250)
    console.print(status.render(rows, "grid"))
    drawn = console.file.getvalue()
    running = next(line for line in drawn.splitlines() if "12619" in line)
    assert all(cell in running for cell in ("RUNNING", "120/400", "1.234", "1h00m", "2m13s", "lora.r=16"))
    assert "6 jobs: 2 RUNNING, 1 COMPLETED, 1 FAILED, 1 NOT_SUBMITTED, 1 REFUSED; 1 flagged" in drawn
    console = Console(file=io.StringIO(), width=250)
    console.print(status.render(rows, "grid", hide_completed=True))
    assert "12617" not in console.file.getvalue() and "(1 completed not shown)" in console.file.getvalue()


def test_a_thousand_jobs_in_seconds(tmp_path, capsys):
    sweep = make_sweep(tmp_path, [{"job_id": str(20000 + i)} for i in range(1000)], LOCAL_RESOURCES)
    done = json.dumps(RunRecord(status="complete", metrics={"f1": 0.5}, per_example={"f1": [0.5] * 200}).to_dict())
    progress = json.dumps({"phase": "eval", "step": 400, "total_steps": 400, "loss": 0.9})
    for i in range(0, 1000, 2):  # plain writes: an atomic one syncs the disk, 10 s for 1,000
        (sweep / f"run{i}").mkdir()
        (sweep / f"run{i}" / "metrics.json").write_text(done)
        (sweep / f"run{i}" / "progress.json").write_text(progress)
    t0 = time.perf_counter()
    assert status.main([str(sweep)]) == 0
    assert time.perf_counter() - t0 < 5
    assert capsys.readouterr().out.splitlines()[-1] == "1000 jobs: 500 COMPLETED, 500 SUBMITTED"


def test_a_slurm_sweep_shows_slurms_states_and_records_its_verdict(tmp_path, monkeypatch):
    fake_slurm.install(tmp_path, monkeypatch, sacct=fake_slurm.SACCT, squeue=fake_slurm.SQUEUE)
    sweep = make_sweep(tmp_path, [{"job_id": j} for j in ("77", "78", "80_0", "80_1", "80_2", "81", "99")],
                       SLURM_RESOURCES)
    write_record(sweep, 0, status="interrupted")  # checkpointed for the requeue
    write_record(sweep, 2, status="complete", metrics={"f1": 0.5})
    write_record(sweep, 3, status="complete", metrics={"f1": 0.5})  # ... yet SLURM says FAILED
    write_record(sweep, 4, status="running")
    write_progress(sweep, 4, phase="train", step=3, total_steps=6, loss=2.0, elapsed_s=4.0, eta_s=4.0)
    rows, warnings = status.rows(sweep)
    assert warnings == []
    assert [(r.job_id, r.state, r.requeues, r.reason, r.record) for r in rows] == [
        ("77", "PENDING", 1, "BeginTime", "interrupted"), ("78", "FAILED", 0, "SLURM FAILED: job 78", "failed"),
        ("80_0", "COMPLETED", 0, "", "complete"), ("80_1", "FAILED", 0, "", "complete"),
        ("80_2", "RUNNING", 0, "", "running"), ("81", "PENDING", 0, "DependencyNeverSatisfied", "missing"),
        ("99", "SUBMITTED", 0, "", "missing")]
    assert rows[1].flag == "failed record written"
    assert RunRecord.read(sweep / "run1").error == "SLURM FAILED: job 78"
    assert rows[3].flag == "flagged: record complete, but SLURM FAILED: job 80_1 (exit 1:0): check its log"
    assert rows[6].flag == "unknown to SLURM"
    assert (rows[4].step, rows[4].eta_s, rows[4].elapsed_s) == (3, 4.0, 0)  # elapsed: squeue's TimeUsed
    assert rows[0].elapsed_s is None  # pending
    assert status.summary(rows) == "7 jobs: 1 RUNNING, 2 PENDING, 1 COMPLETED, 2 FAILED, 1 SUBMITTED; 3 flagged"


def test_without_slurm_the_records_speak_and_a_warning_says_why(tmp_path, monkeypatch, capsys):
    fake_slurm.install(tmp_path, monkeypatch)  # sacct / squeue missing
    sweep = make_sweep(tmp_path, [{"job_id": "77"}, {"job_id": "78"}], SLURM_RESOURCES)
    write_record(sweep, 0, status="complete", metrics={"f1": 0.5})
    assert status.main([str(sweep), "--json"]) == 0
    captured = capsys.readouterr()
    assert [j["state"] for j in json.loads(captured.out)["jobs"]] == ["COMPLETED", "SUBMITTED"]
    assert captured.err.startswith("medsweep-status: warning: SLURM's states unknown (sacct is not installed")
    assert not (sweep / "run1").exists()  # no verdict without SLURM's word


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no sweep directory"),
    (lambda d: d.mkdir(), "no sweep_jobs.json in"),
    (lambda d: (d.mkdir(), (d / "sweep_jobs.json").write_text("[{")), "cannot read"),
    (lambda d: (d.mkdir(), (d / "sweep_jobs.json").write_text('{"idx": 0}')), "is not a list of jobs"),
    (lambda d: (d.mkdir(), (d / "sweep_jobs.json").mkdir()), "cannot read"),
])
def test_no_readable_sweep_is_one_line_and_exit_2(tmp_path, capsys, setup, message):
    sweep = tmp_path / "sweep"
    setup(sweep)
    assert status.main([str(sweep)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medsweep-status: error: ") and message in err and err.count("\n") == 1, err


def test_the_console_script_runs_as_a_module(local_sweep):
    """What `medsweep-status` runs (pyproject's [project.scripts]); quick: no torch, no transformers."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "medsweep.status", str(local_sweep), "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["RUNNING"] == 2 and time.perf_counter() - t0 < 10
    gone = subprocess.run([sys.executable, "-m", "medsweep.status", str(local_sweep / "nope")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert (gone.returncode, gone.stdout) == (2, "") and "Traceback" not in gone.stderr
    imported = subprocess.run([sys.executable, "-c", "import sys, medsweep.status; "
                               "print(sorted({'torch', 'transformers'} & set(sys.modules)))"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert imported.stdout.strip() == "[]"


def test_watch_refreshes_until_every_job_has_ended(local_sweep, monkeypatch, capsys):
    refreshes = []

    def sleep(seconds):  # the jobs end while the table waits
        refreshes.append(seconds)
        write_record(local_sweep, 2 + len(refreshes) - 1, status="complete", metrics={"f1": 0.5})
        if len(refreshes) == 2:
            write_record(local_sweep, 5, status="failed", error="never ran")

    monkeypatch.setattr(status.time, "sleep", sleep)
    assert status.main([str(local_sweep), "--watch", "5"]) == 0
    assert refreshes == [5.0, 5.0]
    assert "6 jobs: 3 COMPLETED, 2 FAILED, 1 REFUSED" in capsys.readouterr().out


def test_watch_stops_on_ctrl_c_with_exit_0(local_sweep, monkeypatch):
    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(status.time, "sleep", interrupted)
    assert status.main([str(local_sweep), "--watch"]) == 0


def test_watch_takes_no_json(local_sweep):
    with pytest.raises(SystemExit) as exc:
        status.main([str(local_sweep), "--watch", "--json"])
    assert exc.value.code == 2


MULTIRUN = {"hydra": {
    "overrides": {"hydra": ["hydra/launcher=slurm", "hydra.mode=MULTIRUN"],
                  "task": ["experiment=smoke", "lora.r=4,8", "output_root=/tmp/sw1", "sweep_name=grid", "plan=true"]},
    "job": {"config_name": "config"}, "runtime": {"cwd": "/", "config_sources": [
        {"path": "hydra.conf", "schema": "pkg", "provider": "hydra"}]}}}


def test_resubmit_runs_the_sweeps_own_command(tmp_path):
    sweep = tmp_path / "grid"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(MULTIRUN))
    command, cwd = status.resubmit_command(sweep)
    assert command == [sys.executable, "-m", "medsweep", "-m", "hydra/launcher=slurm", "experiment=smoke",
                       "lora.r=4,8", "output_root=/tmp/sw1", "sweep_name=grid", f"hydra.sweep.dir={sweep}"]
    assert cwd == Path("/")
    other = {"hydra": {**MULTIRUN["hydra"], "job": {"config_name": "mine"}, "runtime": {"cwd": "/nonexistent",
             "config_sources": [{"path": "/my/conf", "schema": "file", "provider": "command-line"}]}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(other))
    command, cwd = status.resubmit_command(sweep)
    assert command[3:7] == ["--config-dir", "/my/conf", "--config-name", "mine"] and cwd is None
    (sweep / "multirun.yaml").unlink()
    with pytest.raises(status.MedsweepError, match="cannot read the sweep's command from .*multirun.yaml"):
        status.resubmit_command(sweep)


def test_resubmit_with_nothing_to_do_runs_nothing(tmp_path, monkeypatch, capsys):
    fake_slurm.install(tmp_path, monkeypatch, sacct=fake_slurm.SACCT, squeue=fake_slurm.SQUEUE)
    sweep = make_sweep(tmp_path, [{"job_id": "80_0"}, {"job_id": "80_2"}, {"job_id": "81"}], SLURM_RESOURCES)
    write_record(sweep, 0, status="complete", metrics={"f1": 0.5})
    monkeypatch.setattr(status, "resubmit_command", lambda *a: pytest.fail("nothing may run"))
    assert status.main([str(sweep), "--resubmit"]) == 0  # complete, running, pending
    assert "nothing to resubmit" in capsys.readouterr().err


@pytest.mark.slow
def test_resubmit_runs_a_failed_job_again_and_skips_the_complete_one(tmp_path, capfd):
    """A local sweep whose second job fails (its data file is missing); once the file is there, --resubmit runs the
    sweep's command again, which runs that job alone."""
    sample = ROOT / "medsweep" / "assets" / "sample_medqa.jsonl"
    shutil.copy(sample, tmp_path / "a.jsonl")
    first = run_medsweep("experiment=smoke", "profile.cpus=1", "train.max_steps=2", "eval.num_examples=2", "data=local",
                         f"data.path={tmp_path / 'a.jsonl'},{tmp_path / 'b.jsonl'}", f"output_root={tmp_path}",
                         "sweep_name=rs", multirun=True)
    assert first.returncode == 1, first.stderr[-2000:]
    sweep = tmp_path / "sweeps" / "rs"
    rows, _ = status.rows(sweep)
    assert [(r.state, r.record) for r in rows] == [("COMPLETED", "complete"), ("FAILED", "failed")]
    done = (Path(rows[0].run_dir) / "metrics.json").read_bytes()
    shutil.copy(sample, tmp_path / "b.jsonl")
    capfd.readouterr()
    assert status.main([str(sweep), "--resubmit"]) == 0
    out, err = capfd.readouterr()
    assert "medsweep-status: resubmitting 1 job(s) (#1): -m medsweep -m experiment=smoke" in err
    assert "1 to run, 1 complete (skipped)" in out
    rows, _ = status.rows(sweep)
    assert [(r.state, r.record) for r in rows] == [("COMPLETED", "complete"), ("COMPLETED", "complete")]
    assert (Path(rows[0].run_dir) / "metrics.json").read_bytes() == done


# ---------------------------------------------------------------------------- the live SLURM (scripts/slurm_start.sh)

@pytest.fixture
def live_slurm():
    if not os.environ.get("SLURM_CONF") or shutil.which("sbatch") is None:
        pytest.skip("no live SLURM: run scripts/slurm_start.sh and export SLURM_CONF (as .ci/run does)")
    submitted: list[str] = []

    def sbatch(*args: str) -> str:
        out = subprocess.run(["sbatch", "--parsable", "-c1", "--mem=100M", "-o", "/dev/null", *args],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        submitted.append(out.split(";")[0])
        return submitted[-1]

    yield sbatch
    if submitted:
        subprocess.run(["scancel", *submitted], capture_output=True, timeout=30)


def wait_for(check, timeout_s: float = 90.0):
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(1)


@pytest.mark.slurm
@pytest.mark.slow
def test_live_states_of_single_jobs_arrays_a_requeue_and_a_cancel(live_slurm, monkeypatch):
    held = live_slurm("--hold", "--wrap", "true")
    requeued = live_slurm("--wrap", "sleep 20")
    failing = live_slurm("--wrap", "exit 3")
    cancelled = live_slurm("--wrap", "sleep 60")
    array = live_slurm("--array=0-2", "--wrap", "exit $SLURM_ARRAY_TASK_ID")
    tasks = [f"{array}_{i}" for i in range(3)]
    one_by_one = live_slurm("--array=0-2%1", "--wrap", "sleep 1")
    dropped = f"{one_by_one}_2"
    ids = [held, requeued, failing, cancelled, *tasks, f"{one_by_one}_0", f"{one_by_one}_1", dropped]
    subprocess.run(["scancel", cancelled, dropped], check=True, timeout=30)

    def listed():  # a job cancelled while pending leaves squeue at once and reaches sacct's records a moment later
        states = slurm.job_states(ids)
        return states if {held, cancelled} <= states.keys() else None

    first = wait_for(listed)
    assert first, slurm.job_states(ids)
    assert (first[held].state, first[held].reason) == ("PENDING", "JobHeldUser"), first[held]
    assert first[cancelled].state == "CANCELLED", first[cancelled]  # sacct said "CANCELLED by 0"
    assert wait_for(lambda: slurm.job_states([requeued])[requeued].state == "RUNNING"), "never started"
    subprocess.run(["scontrol", "requeue", requeued], check=True, timeout=30)
    again = slurm.job_states([requeued])[requeued]
    assert again.active and again.requeues == 1, again

    def ended():
        states = slurm.job_states(ids)
        # sacct lists an array that has just ended under its master id for a few seconds, its tasks under none
        return states if all(i in states and states[i].terminal for i in (failing, *tasks, *ids[-3:-1])) else None

    states = wait_for(ended)
    assert states, slurm.job_states(ids)
    assert (states[failing].state, states[failing].exit_code) == ("FAILED", "3:0")
    assert [(states[t].state, states[t].exit_code) for t in tasks] == [
        ("COMPLETED", "0:0"), ("FAILED", "1:0"), ("FAILED", "2:0")]
    assert all(states[t].node and states[t].elapsed_s is not None for t in tasks)
    assert states[held].state == "PENDING" and states[requeued].requeues == 1
    # the task cancelled while pending: neither sacct nor squeue names it; once its array has long ended, its
    # silence reads as cancelled
    assert dropped not in states
    later = slurm._now() + timedelta(seconds=slurm.VANISHED_AFTER_S + 1)
    monkeypatch.setattr(slurm, "_now", lambda: later)
    assert slurm.job_states([dropped]) == {dropped: slurm.SlurmJob(dropped, "CANCELLED", slurm.VANISHED_REASON)}
    limits = slurm.limits()
    assert limits.max_array_size and limits.max_array_size > 3


@pytest.mark.slurm
@pytest.mark.slow
def test_live_a_thousand_pending_array_tasks_in_seconds(live_slurm):
    # the test cluster's MaxArraySize is 4 (scripts/slurm/slurm.conf.in), as a sweep's launcher would split them
    ids = [f"{live_slurm('--hold', '--array=0-3', '--wrap', 'true')}_{i}" for _ in range(250) for i in range(4)]
    t0 = time.perf_counter()
    states = slurm.job_states(ids)
    took = time.perf_counter() - t0
    assert len(states) == 1000 and {s.state for s in states.values()} == {"PENDING"}, set(states.values())
    assert took < 5, took


@pytest.mark.slurm
@pytest.mark.slow
def test_live_status_records_slurms_verdict_on_jobs_that_died_without_a_record(tmp_path, live_slurm, capsys):
    """Jobs submitted by hand into a sweep's jobs file: one dies (exit 1) before any record, one is cancelled while
    pending, one completes and writes its record; the status command records the first two as failed."""
    sweep = tmp_path / "sweeps" / "grid"
    done_dir = sweep / "run2"
    record_it = (f"mkdir -p {done_dir} && printf '%s' '{{\"status\": \"complete\", \"metrics\": {{\"f1\": 0.5}}}}' "
                 f"> {done_dir}/metrics.json")
    ids = [live_slurm("--wrap", "exit 1"), live_slurm("--hold", "--wrap", "true"), live_slurm("--wrap", record_it)]
    subprocess.run(["scancel", ids[1]], check=True, timeout=30)
    jobs = [{"job_id": j, "run_dir": str(sweep / f"run{i}")} for i, j in enumerate(ids)]
    sweep.mkdir(parents=True, exist_ok=True)
    make = make_sweep(tmp_path / "x", jobs, SLURM_RESOURCES)
    shutil.copy(make / "sweep_jobs.json", sweep / "sweep_jobs.json")
    assert wait_for(lambda: len(states := slurm.job_states(ids)) == 3 and all(s.terminal for s in states.values())
                    ), slurm.job_states(ids)
    assert status.main([str(sweep), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["jobs"]
    assert [(r["state"], r["record"]) for r in rows] == [("FAILED", "failed"), ("CANCELLED", "failed"),
                                                          ("COMPLETED", "complete")]
    first, second = RunRecord.read(sweep / "run0"), RunRecord.read(sweep / "run1")
    assert (first.status, first.error, first.extra["slurm"]["exit_code"]) == (
        "failed", f"SLURM FAILED: job {ids[0]}", "1:0")
    # sacct keeps no reason for a job cancelled while held (JobHeldUser was squeue's, and the job has left it)
    assert second.error == f"SLURM CANCELLED: job {ids[1]}"
    assert status.main([str(sweep), "--json"]) == 0  # a second look changes nothing
    assert RunRecord.read(sweep / "run0").to_dict() == first.to_dict()


@pytest.mark.parametrize("write", [True, False])
def test_reconcile_hands_the_sweeps_jobs_to_the_verdicts(local_sweep, monkeypatch, write):
    asked = []
    monkeypatch.setattr(status.verdict, "reconcile_jobs", lambda jobs, states=None, write=True: asked.append(
        (jobs, write)) or ["verdicts"])
    assert status.reconcile(str(local_sweep), write=write) == ["verdicts"]  # a str directory too (the report job's)
    assert asked == [(status.load_jobs(local_sweep), write)]
    assert [j["run_dir"] for j in asked[0][0]] == [str(local_sweep.absolute() / f"run{i}") for i in range(6)]
    status.reconcile(local_sweep)
    assert asked[1][1] is True  # writing is the default


def test_rich_tables_columns_caption_and_row_colours(local_sweep):
    rows, _ = status.rows(local_sweep)
    table = status.render(rows, "the title")
    assert (table.title, table.caption, table.caption_justify) == (
        "the title", "6 jobs: 2 RUNNING, 1 COMPLETED, 1 FAILED, 1 NOT_SUBMITTED, 1 REFUSED; 1 flagged", "left")
    assert [(c.header, c.justify, c.overflow) for c in table.columns] == [
        (name, justify, "fold") for name, justify in status._COLUMNS]
    # completed green, failed or flagged red, running cyan, the rest plain
    assert [r.style for r in table.rows] == ["green", "red", "cyan", "red", None, None]
    hidden = status.render(rows, "t", hide_completed=True)
    assert hidden.caption.endswith("; 1 flagged (1 completed not shown)") and len(hidden.rows) == 5


def test_json_is_indented_and_carries_the_summary(local_sweep):
    rows, _ = status.rows(local_sweep)
    text = status._json(rows)
    assert text.startswith('{\n  "jobs": [\n    {\n      "idx": 0,\n')
    assert json.loads(text)["summary"] == status.summary(rows)


@pytest.mark.parametrize("height, hidden", [(14, False), (13, True)])  # 6 rows + 8 lines of frame
def test_watch_draws_into_one_live_view_and_hides_completed_rows_on_a_short_terminal(local_sweep, monkeypatch,
                                                                                   capsys, height, hidden):
    import dataclasses

    import rich.console
    import rich.live

    going, _ = status.rows(local_sweep)
    ended = [dataclasses.replace(r, state="COMPLETED") for r in going]
    answers = iter([(going, []), (ended, ["sacct is not installed"])])
    monkeypatch.setattr(status, "rows", lambda sweep_dir: next(answers))
    drawn, live = [], []

    class Console:
        def __init__(self):
            self.height = height

    class Live:
        def __init__(self, renderable, *, console, auto_refresh):
            live.append(("start", renderable, type(console), auto_refresh))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, renderable, *, refresh=False):
            live.append(("update", renderable, refresh))

    monkeypatch.setattr(rich.console, "Console", Console)
    monkeypatch.setattr(rich.live, "Live", Live)
    monkeypatch.setattr(status, "render", lambda table, title, hide_completed=False: drawn.append(
        (table, title, hide_completed)) or f"view {len(drawn)}")
    monkeypatch.setattr(status.time, "strftime", lambda fmt: {"%H:%M:%S": "12:34:56"}[fmt])
    monkeypatch.setattr(status.time, "sleep", lambda s: None)
    assert status.watch(local_sweep, 5) == 0
    title = f"{local_sweep}  (12:34:56)"
    assert drawn == [(going, title, hidden), (ended, title, hidden)]
    assert live == [("start", "view 1", Console, False), ("update", "view 2", True)]
    assert capsys.readouterr() == ("", "medsweep-status: warning: sacct is not installed\n")
