"""Data parallelism (profile.processes / one process per GPU): two processes over gloo on the CPU, started by
submitit's local tasks, end with the adapter of one process training on the same global batches; only rank 0
writes. The live-SLURM variants (2 tasks on one node, and preemption) are in tests/test_slurm.py."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medsweep import distributed, train
from medsweep.errors import TrainingDiverged
from tests.conftest import run_medsweep

# no dropout: each process draws its own masks for its rows, so only dropout-free runs can match exactly; fp32: on a
# CPU with native bf16, precision=auto picks bf16, whose sums differ with the number of processes
COMMON = ["experiment=smoke", "lora.dropout=0", "train.max_steps=6", "train.batch_size=4", "eval.num_examples=4",
          "profile.cpus=2", "profile.precision=fp32"]


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def assert_same_adapter(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"adapters differ by up to {worst}"


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, embedded_dir):
    out = tmp_path_factory.mktemp("single")
    proc = run_medsweep(*COMMON, f"output_root={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (out / "runs").iterdir()
    return run_dir


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
    assert_same_adapter(adapter(run_dir), adapter(single_process))
    losses = [h["loss"] for h in rec["train"]["log_history"]]
    assert losses == pytest.approx([h["loss"] for h in single["train"]["log_history"]], rel=1e-4)


def test_training_args_split_the_global_batch_across_processes():
    from omegaconf import OmegaConf

    from medsweep.hardware import Hardware

    profile = OmegaConf.create({"dataloader_workers": 0, "time_limit_min": 240})
    hw = Hardware(device="cpu", precision="fp32", threads=1, mode="data_parallel", world_size=2)
    # TrainingArguments would join the process group here; only the keyword arguments are checked
    kwargs = train._data_parallel_args(profile, hw)
    assert kwargs["accelerator_config"] == {"split_batches": True}
    assert kwargs["ddp_backend"] == "gloo" and kwargs["average_tokens_across_devices"] is True
    assert kwargs["ddp_timeout"] == 240 * 60  # rank 0's evaluations may take longer than torch's default


def test_a_nan_loss_fails_the_run(compose, tmp_path, embedded_dir):
    from medsweep import run

    cfg = compose(["experiment=smoke", "train.lr=1e30", "train.max_steps=4"])
    with pytest.raises(TrainingDiverged, match="loss nan|loss inf"):
        run.train_eval(cfg, tmp_path / "run")
    rec = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert rec["status"] == "failed" and "TrainingDiverged: training diverged" in rec["error"]


class _Optimizer:
    step_was_skipped = True


def test_a_scaler_that_skips_every_step_fails_the_run():
    check = train.DivergenceCheck()
    for _ in range(3):
        check.on_step_end(None, None, None, optimizer=_Optimizer())
    with pytest.raises(TrainingDiverged, match="skipped all 3"):
        check.on_train_end(None, None, None)
    in_a_row = train.DivergenceCheck()
    with pytest.raises(TrainingDiverged, match="50 optimizer steps in a row"):
        for step in range(60):
            in_a_row.on_step_end(None, type("S", (), {"global_step": step})(), None, optimizer=_Optimizer())
    fine = train.DivergenceCheck()  # the first steps of fp16 skip while the scale calibrates: not an error
    fine.on_step_end(None, None, None, optimizer=_Optimizer())
    fine.on_step_end(None, None, None, optimizer=object())
    fine.on_train_end(None, None, None)


def test_a_requeued_slurm_job_rendezvous_on_a_new_port(monkeypatch):
    """The tasks of one incarnation agree on a port; the requeued incarnation (same job id, next restart count)
    takes another, since the previous one's port may still be held when it starts (EADDRINUSE on the live SLURM)."""
    import submitit

    class Env:
        num_tasks, num_nodes, local_rank, job_id, hostnames = 2, 1, 0, "77", ["node1"]

        def __init__(self, rank):
            self.global_rank = rank

    def world(rank: int, restarts: str) -> distributed.World:
        monkeypatch.setattr(submitit, "JobEnvironment", lambda: Env(rank))
        monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
        return distributed.detect()

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    first, second = world(0, "0"), world(1, "0")
    assert (first.rank, second.rank, first.size, first.launcher) == (0, 1, 2, "slurm")
    assert first.master_port == second.master_port and first.master_addr == "node1"
    requeued = world(0, "1")
    assert requeued.master_port != first.master_port and 20000 <= requeued.master_port < 40000
