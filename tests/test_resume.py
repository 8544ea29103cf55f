"""Preemption: a job that receives the scheduler's warning signal mid-training checkpoints at the step
boundary, hands over to the scheduler (submitit requeues it), and the resumed job ends with exactly the
same adapter weights and metrics as an uninterrupted run of the same seed."""

import json
import os
import shutil
import signal

import pytest
from safetensors.torch import load_file

from medsweep import run, train


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


def test_complete_record_is_never_overwritten(compose, tmp_path, embedded_dir):
    cfg = _cfg(compose)
    first = run.train_eval(cfg, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    again = run.train_eval(cfg, tmp_path / "run")
    assert again == json.loads(before) and (tmp_path / "run" / "metrics.json").read_bytes() == before
    assert first["status"] == "complete"
