"""medsweep.preempt: a stop asked for during training waits for the step boundary and saves a checkpoint first.
SLURM's warning signal (submitit's SIGUSR2; its handler stood in for here) hands the job over to the scheduler, and
the requeued job ends with exactly the adapter and metrics of an uninterrupted run of the same seed (resume=false
starts over); outside a scheduler SIGTERM and Ctrl-C stop with exit 143 / 130 and one line saying that the same
command resumes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from medsweep import run, train
from tests.conftest import ROOT, run_medsweep


class Requeued(SystemExit):
    """What submitit's handler does after requeueing: exit the process."""


def _requeue_handler(signum, frame):
    raise Requeued(-1)


@pytest.fixture
def fake_submitit_handler():
    previous = signal.signal(signal.SIGUSR2, _requeue_handler)  # submitit's handler stands in
    yield
    signal.signal(signal.SIGUSR2, previous)


def _cfg(compose, overrides=()):
    return compose(["experiment=smoke", "train.max_steps=6", "train.save_steps=100", "eval.num_examples=4",
                    *overrides])


def test_signal_checkpoint_then_resume_is_bit_identical(compose, tmp_path, monkeypatch, fake_submitit_handler,
                                                         embedded_dir):
    cfg = _cfg(compose)
    uninterrupted = run.train_eval(cfg, tmp_path / "a")

    original = train.StepTimer.on_step_end

    def signal_at_step_3(self, args, state, control, **kwargs):
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGUSR2)  # SLURM's warning before the time limit
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(train.StepTimer, "on_step_end", signal_at_step_3)
    with pytest.raises(Requeued):
        run.train_eval(cfg, tmp_path / "b")
    rec = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert rec["status"] == "interrupted"
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-3").is_dir()  # saved on the signal, not by save_steps

    monkeypatch.setattr(train.StepTimer, "on_step_end", original)
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    resumed = run.train_eval(cfg, tmp_path / "b")  # the requeued job: same directory, same config
    assert resumed["status"] == "complete"
    assert resumed["train"]["resumed_from"].endswith("checkpoint-3")

    a = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "resumed adapter differs from the uninterrupted one"
    for key in ("exact_match", "f1", "bleu", "rougeL", "perplexity"):
        assert resumed["metrics"][key] == uninterrupted["metrics"][key]

    # resume=false: the same interrupted directory trains again from step 0, ignoring checkpoint-3
    restarted = run.train_eval(compose(["experiment=smoke", "train.max_steps=6", "train.save_steps=100",
                                        "eval.num_examples=4", "resume=false"]), tmp_path / "c")
    assert restarted["status"] == "complete" and restarted["train"]["resumed_from"] is None
    assert restarted["train"]["steps"] == 6 and len(restarted["train"]["log_history"]) == 6
    c = load_file(tmp_path / "c" / "adapter" / "adapter_model.safetensors")
    assert all((a[k] == c[k]).all() for k in a), "a fresh start of the same seed differs from the first run"


def _stop_at_a_checkpoint(args, output_root, signum) -> tuple[int, str]:
    """Start the run, send `signum` once checkpoint-1 exists (training under way): the exit code and last line."""
    def saved() -> set:
        return set(output_root.glob("runs/*/checkpoints/checkpoint-*/trainer_state.json"))

    before = saved()
    proc = subprocess.Popen([sys.executable, "-m", "medsweep", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not saved() - before:  # a new checkpoint: this start is training
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else ""
        time.sleep(0.1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err[-3000:]
    return proc.returncode, [line for line in err.splitlines() if line.strip()][-1]


@pytest.mark.slow
def test_sigterm_then_ctrl_c_checkpoint_and_say_how_to_resume(tmp_path, embedded_dir):
    """SIGTERM (exit 143), the same command resumes; Ctrl-C (exit 130) later, the same command finishes."""
    args = ["experiment=smoke", f"output_root={tmp_path}", "train.save_steps=1", "train.max_steps=8",
            "eval.num_examples=2"]
    steps = []
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        returncode, last = _stop_at_a_checkpoint(args, tmp_path, signum)
        name = signal.Signals(signum).name
        assert returncode == code, last
        step = int(last.split(" at step ")[1].split(",")[0]) if " at step " in last else -1
        assert last.startswith(f"medsweep: interrupted by {name} at step {step}, checkpoint saved; the same "
                               f"command resumes from checkpoint-{step}"), last
        (run_dir,) = (tmp_path / "runs").iterdir()
        rec = json.loads((run_dir / "metrics.json").read_text())
        assert rec["status"] == "interrupted" and rec["error"] == f"Interrupted: {name}"
        assert (run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").is_file()
        steps.append(step)
    assert steps[1] > steps[0]  # the second start resumed from the first stop, and trained on

    again = run_medsweep(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    rec = json.loads((run_dir / "metrics.json").read_text())
    assert rec["status"] == "complete" and rec["train"]["resumed_from"].endswith(f"checkpoint-{steps[1]}")
    assert rec["train"]["steps"] == 8


def test_one_callback_watches_every_stop_signal_with_one_collective_per_step(monkeypatch, fake_submitit_handler):
    """Data parallel ranks agree on a stop through one collective per step, whatever the signals watched; a
    process with nothing to watch makes none; a rank acts on the signal another rank received."""
    from types import SimpleNamespace

    from medsweep import distributed, preempt

    calls = []
    monkeypatch.setattr(distributed, "max_over_ranks", lambda v: calls.append(v) or max(v, other_rank[0]))
    other_rank = [0]
    step = SimpleNamespace(should_save=False, should_training_stop=False)

    (under_slurm,) = preempt.callbacks()  # submitit's handler on SIGUSR2, no stop_on_signals
    assert under_slurm.watched == [signal.SIGUSR2]
    with preempt.stop_on_signals():
        (local,) = preempt.callbacks()
    assert local.watched == [signal.SIGUSR2, signal.SIGINT, signal.SIGTERM]

    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    (idle,) = preempt.callbacks()
    assert idle.watched == []
    idle.on_step_end(None, None, step)
    assert calls == [] and not step.should_save

    under_slurm.on_step_end(None, None, step)
    assert calls == [0] and not step.should_training_stop
    other_rank[0] = int(signal.SIGUSR2)  # another rank got SLURM's warning first
    under_slurm.on_step_end(None, None, step)
    assert calls == [0, 0] and step.should_save and step.should_training_stop
    assert under_slurm.pending == (signal.SIGUSR2, None)
