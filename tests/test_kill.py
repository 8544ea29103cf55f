"""kill -9 at any moment, checkpoint writes included: the next start of the same command resumes from the last
complete checkpoint and ends with the same adapter as a run that was never killed."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT, run_medsweep, train_eval_in_process

ARGS = ["experiment=smoke", "train.max_steps=6", "train.save_steps=1", "eval.num_examples=2"]

# The job SIGKILLs itself at an exact point of a checkpoint write, leaving that file half written.
KILL_INSIDE = """
import os, sys, torch
from pathlib import Path
from transformers.trainer_callback import TrainerState
target = sys.argv[1]  # checkpoint-N/<file>: the file whose write is cut short

def die_half_written(path):
    path = Path(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    os.kill(os.getpid(), 9)

real_save, real_state = torch.save, TrainerState.save_to_json

def save(obj, f, *a, **k):
    real_save(obj, f, *a, **k)
    if str(f).endswith(target):
        die_half_written(f)

def save_state(self, path):
    real_state(self, path)
    if str(path).endswith(target):
        die_half_written(path)

torch.save, TrainerState.save_to_json = save, save_state
sys.argv = ["medsweep", *sys.argv[2:]]
from medsweep.cli import main
main()
"""


def _killed_inside(output_root, target: str) -> None:
    proc = subprocess.run([sys.executable, "-c", KILL_INSIDE, target, *ARGS, f"output_root={output_root}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]  # it died where it was meant to, not before


def _killed_at_random(output_root, rng: random.Random) -> float:
    proc = subprocess.Popen([sys.executable, "-m", "medsweep", *ARGS, f"output_root={output_root}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(output_root.glob("runs/*/checkpoints/*")) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    delay = rng.uniform(0.0, 3.0)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return delay


@pytest.mark.slow
def test_killed_anywhere_the_next_run_ends_with_the_uninterrupted_adapter(tmp_path, embedded_dir):
    ref_dir = train_eval_in_process(tmp_path / "ref", *ARGS)

    out = tmp_path / "killed"
    # checkpoint-1 complete, checkpoint-2's optimizer state half written
    _killed_inside(out, "checkpoint-2/optimizer.pt")
    (run_dir,) = (out / "runs").iterdir()
    assert (run_dir / "checkpoints" / "checkpoint-2").is_dir()
    # the re-run resumes from checkpoint-1, then dies with checkpoint-3's trainer_state.json half written
    _killed_inside(out, "checkpoint-3/trainer_state.json")
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"  # nobody could say otherwise
    seed = int(os.environ.get("MEDSWEEP_KILL_SEED", "0"))
    _killed_at_random(out, random.Random(seed))

    final = run_medsweep(*ARGS, f"output_root={out}")
    assert final.returncode == 0, final.stderr[-3000:]
    rec = json.loads((run_dir / "metrics.json").read_text())
    assert rec["status"] == "complete" and rec["train"]["steps"] == 6
    a = load_file(ref_dir / "adapter" / "adapter_model.safetensors")
    b = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f"adapter differs (seed {seed})"
    ref = json.loads((ref_dir / "metrics.json").read_text())
    assert {k: rec["metrics"][k] for k in ("f1", "bleu", "rougeL")} == {k: ref["metrics"][k]
                                                                        for k in ("f1", "bleu", "rougeL")}
