"""Local sweeps on a multi-GPU workstation (hydra/launcher=local): each job gets its own GPUs through
CUDA_VISIBLE_DEVICES, and at most visible GPUs / profile.gpus jobs run at once. The jobs here request one GPU
each (profile=local_gpu) but train on the CPU, so the assignment is checked without a GPU: two "visible" GPUs,
three jobs."""

import json
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import run_medsweep

JOB = ["experiment=smoke", "profile=local_gpu", "profile.device=cpu", "profile.precision=fp32", "profile.cpus=1",
       "site.max_parallel=4"]


@pytest.mark.slow
def test_each_local_job_gets_its_own_gpu_and_waves_follow_the_gpus(tmp_path, embedded_dir):
    proc = run_medsweep(*JOB, "lora.r=4,8,16", "train.max_steps=2", "eval.num_examples=2", f"output_root={tmp_path}",
                        multirun=True,
                        env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    jobs = json.loads((tmp_path / "sweeps" / "sweep" / "sweep_jobs.json").read_text())
    recs = [json.loads((Path(j["run_dir"]) / "metrics.json").read_text()) for j in jobs]
    devices = [r["env"]["cuda_visible_devices"] for r in recs]
    assert devices == ["0", "1", "0"], devices  # one GPU each, never shared within a wave
    start = [datetime.fromisoformat(r["started_at"]) for r in recs]
    end = [datetime.fromisoformat(r["finished_at"]) for r in recs]
    assert start[2] >= max(end[0], end[1]), "a third job started while both GPUs were taken"


def test_a_local_sweep_needing_more_gpus_than_visible_submits_nothing(tmp_path):
    proc = run_medsweep(*JOB, "lora.r=4,8", f"output_root={tmp_path}", multirun=True,
                        env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert "needs 1 GPU(s), 0 visible on this machine" in proc.stderr
    assert not list(tmp_path.rglob(".submitit"))
