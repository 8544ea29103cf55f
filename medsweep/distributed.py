"""Data parallelism across the processes of one job: who this process is, and the few collectives the job needs.

A data-parallel job runs one process per GPU (SLURM tasks through submitit, or submitit's local tasks, or
torchrun). Each process holds a full replica, trains on its share of every global batch and has its gradients
all-reduced (the HF Trainer's DDP through accelerate); only rank 0 evaluates and writes the record, the adapter,
the predictions and the W&B run. `World` says which process this is; `join` exports the torch.distributed
environment (RANK, WORLD_SIZE, MASTER_ADDR ...) that accelerate reads when the Trainer sets up its devices.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0  # global rank of this process
    local_rank: int = 0  # rank on this node: the GPU index it trains on
    size: int = 1  # processes of the job
    master_addr: str = "127.0.0.1"  # rank 0's host (the rendezvous)
    master_port: int = 29500
    launcher: str = "none"  # slurm | local (submitit) | torchrun | none

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _port(job_id: str) -> int:
    """A rendezvous port derived from the job id, so that data-parallel jobs sharing a node do not collide."""
    return 20000 + int(hashlib.sha256(job_id.encode()).hexdigest(), 16) % 20000


def detect() -> World:
    """This process's place in its job: torchrun's variables, else submitit's job environment (SLURM tasks or
    local tasks), else a single process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ:
        return World(rank=int(os.environ["RANK"]), local_rank=int(os.environ["LOCAL_RANK"]),
                     size=int(os.environ["WORLD_SIZE"]), master_addr=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                     master_port=int(os.environ.get("MASTER_PORT", 29500)), launcher="torchrun")
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            if env.num_nodes > 1:
                raise RuntimeError("medsweep's data parallelism is single-node: one process per GPU of one node")
            slurm = os.environ["SUBMITIT_EXECUTOR"] == "slurm"
            # SLURM_JOB_ID is the array task's own id; a requeued job keeps it, so the restart count is part of the
            # key: the previous incarnation's rendezvous port may still be held (EADDRINUSE) when the next one starts
            job_id = os.environ.get("SLURM_JOB_ID", str(env.job_id)) + "." + os.environ.get("SLURM_RESTART_COUNT", "0")
            return World(rank=env.global_rank, local_rank=env.local_rank, size=env.num_tasks,
                         master_addr=env.hostnames[0] if slurm else "127.0.0.1", master_port=_port(job_id),
                         launcher="slurm" if slurm else "local")
    return World()


def join(world: World) -> None:
    """Export the torch.distributed environment of `world` (accelerate initialises the process group from it when
    the Trainer's arguments are built)."""
    if not world.distributed:
        return
    os.environ.update(RANK=str(world.rank), LOCAL_RANK=str(world.local_rank), WORLD_SIZE=str(world.size),
                      LOCAL_WORLD_SIZE=str(world.size), MASTER_ADDR=world.master_addr,
                      MASTER_PORT=str(world.master_port))


def max_over_ranks(value: int) -> int:
    """The largest `value` any rank holds, on every rank (a collective: every rank must call it). Used to stop all
    ranks at the same step, on the signal one of them received, when SLURM's warning reaches them at slightly
    different moments."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def finish() -> None:
    """Leave the process group (quietly: a peer that already exited is not an error here)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as exc:  # noqa: BLE001 - teardown only
            log.debug("destroy_process_group: %s", exc)
