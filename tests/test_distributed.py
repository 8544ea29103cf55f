"""medsweep.distributed: which process of a data-parallel job this is (World, from submitit's job environment and
SLURM's variables) and where its processes meet (the rendezvous port)."""

from medsweep import distributed


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
