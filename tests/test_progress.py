"""medsweep.progress: a bar on a terminal, plain timed lines in a log file (never a carriage return there), and the
training and evaluation progress a run's log shows."""

from __future__ import annotations

import io
import json
import logging
import re
from types import SimpleNamespace

import pytest

from medsweep import progress, progress_file


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_durations():
    assert [progress.duration(s) for s in (0, 42.4, 185, 3725, float("nan"), -1)] == [
        "0s", "42s", "3m05s", "1h02m", "?", "?"]


def test_a_log_file_gets_a_line_every_minute_and_at_the_end(caplog):
    clock, stream = Clock(), io.StringIO()
    with caplog.at_level(logging.INFO, logger="medsweep"):
        p = progress.Progress("generation", 40, "answer", stream=stream, clock=clock)
        clock.now = 30.0
        p.update(10)
        assert caplog.messages == []  # less than a minute: nothing yet
        clock.now = 60.0
        p.update(20, loss=1.23456)
        clock.now = 80.0
        p.update(30)
        clock.now = 90.0
        p.close()
    assert caplog.messages == [
        "generation: answer 20/40 (50%)  loss 1.235  0.333 answer/s  elapsed 1m00s  ETA 1m00s",
        "generation: answer 30/40 (75%)  loss 1.235  0.333 answer/s  elapsed 1m30s  ETA 30s"]
    assert stream.getvalue() == ""  # no bar outside a terminal


def test_a_terminal_gets_a_bar(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="medsweep"):
        p = progress.Progress("training", 4, "step", stream=stream, tty=True, every_s=0.0)
        for step in range(1, 5):
            p.update(step, loss=2.0 / step)
        assert (p.bar.n, p.bar.total, p.bar.postfix) == (4, 4, "loss=0.5")
        assert caplog.messages == []  # the bar says it: no lines while it runs
        p.close()
    assert stream.getvalue().startswith("\rtraining:") and "\n" not in stream.getvalue()  # redrawn in place
    assert len(caplog.messages) == 1 and caplog.messages[0].startswith("training: step 4/4 (100%)  loss 0.5")


def test_training_progress_logs_each_logging_step_with_its_loss_and_resumes_from_the_checkpoint_step(caplog):
    clock = Clock()
    callback = progress.TrainingProgress(stream=io.StringIO(), clock=clock)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=10, global_step=4)  # resumed at step 4
    with caplog.at_level(logging.INFO, logger="medsweep"):
        callback.on_train_begin(None, state, None)
        for step in range(5, 11):
            clock.now += 2.0
            state.global_step = step
            callback.on_step_end(None, state, None)
            if step % 5 == 0:
                callback.on_log(None, state, None, logs={"loss": 0.1 * step, "learning_rate": 1e-4})
        callback.on_log(None, state, None, logs={"train_loss": 0.7})  # the end-of-training summary: no loss
        callback.on_train_end(None, state, None)
    assert caplog.messages == [
        "training: step 5/10 (50%)  loss 0.5  0.5 step/s  elapsed 2s  ETA 10s",
        "training: step 10/10 (100%)  loss 1  0.5 step/s  elapsed 12s  ETA 0s",
        "training: step 10/10 (100%)  loss 1  0.5 step/s  elapsed 12s  ETA 0s"]
    other_rank = progress.TrainingProgress(stream=io.StringIO(), clock=clock)
    other_rank.on_train_begin(None, SimpleNamespace(is_world_process_zero=False, max_steps=10, global_step=0), None)
    assert other_rank.progress is None


def test_training_writes_progress_json_at_each_logging_step_and_every_minute(tmp_path):
    clock, path = Clock(), tmp_path / "progress.json"
    state = SimpleNamespace(is_world_process_zero=True, max_steps=100, global_step=0)
    seen = []
    with progress_file.recording(path, clock=clock):
        callback = progress.TrainingProgress(stream=io.StringIO(), clock=clock)
        callback.on_train_begin(None, state, None)
        seen.append(json.loads(path.read_text()))  # at once: the job has started training
        for step in range(1, 41):
            clock.now += 2.0
            state.global_step = step
            callback.on_step_end(None, state, None)
            if step == 10:
                callback.on_log(None, state, None, logs={"loss": 2.5})
                seen.append(json.loads(path.read_text()))
            if step == 20:
                seen.append(json.loads(path.read_text()))  # 20 s after the last write: not rewritten
        seen.append(json.loads(path.read_text()))  # 60 s after step 10's write (step 40): rewritten
    assert {k: v for k, v in seen[0].items() if k != "updated_at"} == {
        "phase": "train", "step": 0, "total_steps": 100, "elapsed_s": 0.0, "eta_s": None}
    assert [s["step"] for s in seen] == [0, 10, 10, 40]
    assert seen[1]["loss"] == seen[3]["loss"] == 2.5
    assert (seen[3]["elapsed_s"], seen[3]["eta_s"]) == (80.0, 120.0)  # 0.5 step/s, 60 steps left
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", seen[3]["updated_at"])
    assert not list(tmp_path.glob(".progress.json.*"))  # atomic: no temp file left behind


def test_evaluation_joins_trainings_figures_in_progress_json(tmp_path):
    clock, path = Clock(), tmp_path / "progress.json"
    with progress_file.recording(path, clock=clock) as recorder:
        recorder.update(force=True, phase="train", step=6, total_steps=6, loss=1.5)
        p = progress.Progress("generation", 24, "answer", stream=io.StringIO(), clock=clock)
        assert json.loads(path.read_text())["questions_done"] == 0
        clock.now = 10.0
        p.update(8)
        p.close()
    final = json.loads(path.read_text())
    assert {k: v for k, v in final.items() if k != "updated_at"} == {
        "phase": "eval", "step": 6, "total_steps": 6, "loss": 1.5, "task": "generation", "questions_done": 8,
        "questions_total": 24, "elapsed_s": 10.0, "eta_s": 20.0}
    progress.Progress("perplexity", 4, "answer", stream=io.StringIO(), clock=clock).close()
    assert json.loads(path.read_text()) == final  # outside `recording`: nothing written


def test_a_progress_file_that_cannot_be_written_never_stops_the_run(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="medsweep"), progress_file.recording(blocker / "progress.json"):
        p = progress.Progress("generation", 2, "answer", stream=io.StringIO())
        p.update(1, force=True)
        p.close()
    assert len([m for m in caplog.messages if "cannot write" in m]) == 1


def test_other_ranks_write_no_progress_file(tmp_path):
    with progress_file.recording(tmp_path / "progress.json"):
        callback = progress.TrainingProgress(stream=io.StringIO())
        callback.on_train_begin(None, SimpleNamespace(is_world_process_zero=False, max_steps=10, global_step=0), None)
        callback.on_step_end(None, SimpleNamespace(is_world_process_zero=False, max_steps=10, global_step=1), None)
    assert not (tmp_path / "progress.json").exists()


@pytest.mark.slow
def test_a_runs_log_shows_training_and_evaluation_progress_without_carriage_returns(tmp_path, embedded_dir):
    from tests.conftest import run_medsweep

    done = run_medsweep("experiment=smoke", "model=tiny_random", f"output_root={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    logged = (run_dir / "medsweep.log").read_text()
    assert "\r" not in logged and "{'loss'" not in done.stdout + done.stderr
    steps = re.findall(r"training: step (\d+)/(\d+) \(\d+%\)  loss [\d.]+", logged)
    assert steps and steps[-1][0] == steps[-1][1]
    assert re.search(r"generation: answer (\d+)/\1 \(100%\)", logged)
    assert re.search(r"perplexity: answer (\d+)/\1 \(100%\)", logged)
    last = json.loads((run_dir / "progress.json").read_text())  # what medsweep-status shows of a running job
    assert (last["phase"], last["task"], last["step"], last["total_steps"]) == ("eval", "perplexity", 6, 6)
    assert last["questions_done"] == last["questions_total"] > 0 and last["loss"] > 0


_SCRIPT = """
import logging, sys, time
handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(logging.Formatter("%(message)s"))
logging.getLogger("medsweep").addHandler(handler)  # medsweep's lines only: a library's import-time warning is not
logging.getLogger("medsweep").setLevel(logging.INFO)  # what this script checks (test_errors.py keeps those quiet)
from medsweep.progress import Progress
p = Progress("generation", 5, "answer", every_s=0.05)
for done in range(1, 6):
    time.sleep(0.03)
    p.update(done, loss=1.0 / done)
p.close()
"""


def _run_progress_script(tmp_path, on_tty: bool) -> str:
    """The script's stderr as a user sees it: on a pseudo-terminal, or redirected to a log file."""
    import os
    import pty
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not on_tty:
        log = tmp_path / "job.log"
        with log.open("w") as f:
            subprocess.run([sys.executable, "-c", _SCRIPT], stderr=f, env=env, timeout=120, check=True)
        return log.read_text()
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT], stdin=follower, stdout=follower, stderr=follower,
                            env=env)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=120) == 0
    os.close(leader)
    return out.decode(errors="replace")


def test_a_pseudo_terminal_gets_a_bar_redrawn_in_place_and_a_log_file_plain_lines(tmp_path):
    terminal = _run_progress_script(tmp_path, on_tty=True)
    assert "\r" in terminal and re.search(r"generation: +\d+%\|", terminal), terminal  # tqdm's bar, redrawn
    assert terminal.count("generation: answer 5/5 (100%)") == 1  # the closing line, once
    logfile = _run_progress_script(tmp_path, on_tty=False)
    assert "\r" not in logfile and "%|" not in logfile, logfile
    lines = logfile.splitlines()
    assert lines and all(line.startswith("generation: answer ") for line in lines), lines
    assert lines[-1].startswith("generation: answer 5/5 (100%)  loss 0.2") and len(lines) >= 3  # timed lines too


def test_a_waiting_sweep_logs_its_job_counts_when_they_change(caplog):
    from medsweep import submit
    from medsweep.sweep import PlannedJob

    class Job:
        """A submitit job seen by the wait: its state at each poll; done once that state is an end."""

        def __init__(self, job_id, states):
            self.job_id, self.states, self.polls = job_id, states, 0

        @property
        def state(self):
            return self.states[self.polls - 1]

        def done(self):
            self.polls += 1
            return self.state in ("COMPLETED", "FAILED")

        def results(self):
            if self.state == "FAILED":
                raise RuntimeError("Job failed\nValueError: bad")
            return [self.job_id]

    jobs = [PlannedJob(i, [f"x={i}"], f"d{i}", "submit") for i in range(3)]
    handles = [Job("1", ["PENDING", "RUNNING", "COMPLETED"]), Job("2", ["RUNNING", "FAILED"]),
               Job("3", ["PENDING", "PENDING", "RUNNING", "COMPLETED"])]
    with caplog.at_level(logging.INFO, logger="medsweep"):
        returns = submit.wait(list(zip(jobs, handles, strict=True)), poll_s=0.0, every_s=3600)
    assert returns == ["1", "3"] and [j.outcome for j in jobs] == ["completed", "failed", "completed"]
    counts = [re.sub(r"  \S+ job/s.*", "", m) for m in caplog.messages if m.startswith("sweep:")]
    assert counts == ["sweep: job 0/3 (0%)  pending 2  running 1  failed 0",
                      "sweep: job 1/3 (33%)  pending 1  running 1  failed 1",
                      "sweep: job 2/3 (67%)  pending 0  running 1  failed 1",
                      "sweep: job 3/3 (100%)  pending 0  running 0  failed 1"]  # the last: close(), once


def test_a_waiting_sweep_asks_slurm_about_a_task_submitit_would_wait_for_forever(monkeypatch, caplog):
    """An array task cancelled while pending leaves no accounting record: submitit never calls it done. SLURM's own
    state, asked every `every_s`, ends it as failed; a job SLURM still runs is waited for."""
    from medsweep import slurm, submit
    from medsweep.sweep import PlannedJob

    class Stuck:
        state = "UNKNOWN"

        def __init__(self, job_id, finish_after=None):
            self.job_id, self.polls, self.finish_after = job_id, 0, finish_after

        def done(self):
            self.polls += 1
            return self.finish_after is not None and self.polls > self.finish_after

        def results(self):
            return [self.job_id]

    clock = Clock()
    asked = []

    def states(ids):
        asked.append(sorted(ids))
        clock.now += 1.0
        return {"9_1": slurm.SlurmJob("9_1", "CANCELLED"), "9_0": slurm.SlurmJob("9_0", "RUNNING")}

    monkeypatch.setattr(slurm, "job_states", states)

    def sleep(_):
        clock.now += 10.0
    monkeypatch.setattr(submit.time, "sleep", sleep)
    jobs = [PlannedJob(0, ["x=0"], "d0", "submit"), PlannedJob(1, ["x=1"], "d1", "submit")]
    with caplog.at_level(logging.INFO, logger="medsweep"):
        returns = submit.wait([(jobs[0], Stuck("9_0", finish_after=12)), (jobs[1], Stuck("9_1"))], every_s=60,
                              ask_slurm=True, clock=clock)
    assert returns == ["9_0"] and [(j.outcome, j.error) for j in jobs] == [
        ("completed", ""), ("failed", "SLURM CANCELLED: job 9_1")]
    assert asked == [["9_0", "9_1"]]  # once a minute, not at every poll; the next poll found job 0 done


def test_the_first_update_is_written_at_once_whatever_the_clock(tmp_path):
    from medsweep.progress_file import ProgressFile

    path = tmp_path / "progress.json"
    progress = ProgressFile(path, every_s=30, clock=lambda: 0.0)
    progress.update(step=1)  # not forced: nothing was written yet
    assert json.loads(path.read_text())["step"] == 1
    progress.update(step=2)  # 0 s later: waits
    assert json.loads(path.read_text())["step"] == 1
