"""Data parallelism (profile.processes / one process per GPU): two processes over gloo on the CPU, started by
submitit's local tasks, end with the adapter of one process training on the same global batches; only rank 0
writes. The live-SLURM variants (2 tasks on one node, and preemption) are in tests/test_slurm.py."""

import json
from pathlib import Path

import pytest

from tests.conftest import assert_same_trained_adapter, run_medsweep, train_eval_in_process

# no dropout: each process draws its own masks for its rows, so only dropout-free runs can match exactly; fp32: on a
# CPU with native bf16, precision=auto picks bf16, whose sums differ with the number of processes
COMMON = ["experiment=smoke", "lora.dropout=0", "train.max_steps=6", "train.batch_size=4", "eval.num_examples=4",
          "profile.cpus=2", "profile.precision=fp32"]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, embedded_dir):
    return train_eval_in_process(tmp_path_factory.mktemp("single"), *COMMON)


@pytest.mark.slow
def test_two_processes_through_the_local_launcher_equal_one(tmp_path, single_process):
    proc = run_medsweep(*COMMON, "profile.processes=2", f"output_root={tmp_path}", "sweep_name=dp", multirun=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "data_parallel x2" in proc.stdout  # the plan says which mode the job runs in
    sweep = tmp_path / "sweeps" / "dp"
    (job,) = json.loads((sweep / "sweep_jobs.json").read_text())
    run_dir = Path(job["run_dir"])
    rec = json.loads((run_dir / "metrics.json").read_text())
    assert rec["status"] == "complete"
    assert rec["hardware"]["world_size"] == 2 and rec["hardware"]["mode"] == "data_parallel"
    assert rec["hardware"]["threads"] == 1  # profile.cpus=2 shared by 2 processes
    # exactly one record and one adapter; both ranks ran (submitit's two task logs)
    assert [p.parent for p in sweep.rglob("metrics.json")] == [run_dir]
    assert [p.parent.parent for p in sweep.rglob("adapter/adapter_model.safetensors")] == [run_dir]
    logs = sorted(p.name for p in (sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2 and logs[0].endswith("_0_log.out") and logs[1].endswith("_1_log.out"), logs
    # the same global batches, split across the processes: the single process's adapter and steps
    single = json.loads((single_process / "metrics.json").read_text())
    assert rec["train"]["steps"] == single["train"]["steps"] == 6
    assert_same_trained_adapter(run_dir, single_process)
    losses = [h["loss"] for h in rec["train"]["log_history"]]
    assert losses == pytest.approx([h["loss"] for h in single["train"]["log_history"]], rel=1e-4)
