"""One writer per run directory: a second start is refused naming the holder; a dead holder's lock is taken over;
a requeue of the same SLURM job waits for its previous incarnation."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from medsweep.runlock import RunInUse, RunLock
from tests.conftest import ROOT, run_medsweep

HOLD = ("import sys, time\nfrom pathlib import Path\nfrom medsweep.runlock import RunLock\n"
        "lock = RunLock(Path(sys.argv[1])); lock.acquire(); print('held', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n")


def _holder(run_dir, seconds=600, env=None):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(seconds)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, env={**os.environ, **(env or {})})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    proc = _holder(tmp_path, env={"SLURM_JOB_ID": "4242"})
    try:
        with pytest.raises(RunInUse) as refused:
            RunLock(tmp_path).acquire()
        message = str(refused.value)
        assert "\n" not in message and refused.value.exit_code == 75
        assert f"in use by PID {proc.pid} on {socket.gethostname()} (SLURM job 4242)" in message
    finally:
        proc.kill()
        proc.wait()
    with RunLock(tmp_path):  # the holder died without letting go: the kernel released its lock
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    with RunLock(tmp_path):  # and released again on exit
        pass


def test_requeue_of_the_same_slurm_job_waits_for_its_previous_incarnation(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    proc = _holder(tmp_path, seconds=2, env={"SLURM_JOB_ID": "77"})  # exits on its own after 2 s
    started = time.monotonic()
    with RunLock(tmp_path, wait_s=60):
        assert proc.poll() is not None and time.monotonic() - started < 60
    proc = _holder(tmp_path, env={"SLURM_JOB_ID": "77"})
    try:
        with pytest.raises(RunInUse, match="SLURM job 77"):  # still alive after the wait: refused all the same
            RunLock(tmp_path, wait_s=1).acquire()
    finally:
        proc.kill()
        proc.wait()


def _wait_for_training(output_root, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        logs = list((output_root / "runs").glob("*/medsweep.log"))
        if logs and "training:" in logs[0].read_text():
            return
        time.sleep(0.2)
    raise AssertionError("the run never started training")


@pytest.mark.slow
def test_two_starts_of_one_configuration(tmp_path, embedded_dir):
    """The second start exits 75 with one line naming the first, which trains on untouched (then stopped here)."""
    args = ["experiment=smoke", f"output_root={tmp_path}", "train.max_steps=500", "train.save_steps=1000",
            "eval.num_examples=2"]
    first = subprocess.Popen([sys.executable, "-m", "medsweep", *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_training(tmp_path)
        second = run_medsweep(*args)
        assert first.poll() is None, "the first run ended before the second was refused: nothing was shown"
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=600)
    errors = [line for line in second.stderr.splitlines() if line.startswith("medsweep: error:")]
    assert second.returncode == 75 and len(errors) == 1, second.stderr[-2000:]
    assert f"is in use by PID {first.pid} on {socket.gethostname()}" in errors[0]
    assert first.returncode == 143, err[-2000:]  # stopped by us, not disturbed by the second start
    (run_dir,) = (tmp_path / "runs").iterdir()
    rec = json.loads((run_dir / "metrics.json").read_text())
    assert rec["status"] == "interrupted" and rec["error"] == "Interrupted: SIGTERM"
