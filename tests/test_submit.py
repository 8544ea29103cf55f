"""medsweep/submit.py's pieces on their own: the cluster limits a sweep's arrays respect (the site's settings, else
SLURM's), the SLURM check of a blocking wait, and the report job of a detached sweep. No live SLURM: slurm's
queries and the sweep's end are stand-ins recording what they were asked."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from medsweep import slurm, status, submit, sweep
from medsweep.config import SiteConfig
from medsweep.errors import MedsweepError
from medsweep.slurm import SlurmJob, SlurmLimits
from medsweep.sweep import PlannedJob


@pytest.fixture
def cluster(monkeypatch):
    """slurm.limits answering 1001 tasks per array, 50 jobs queued; records the qos it was asked about."""
    asked: list[str | None] = []

    def limits(user=None, qos=None, timeout=slurm.TIMEOUT_S):
        asked.append(qos)
        return SlurmLimits(max_array_size=1001, max_submit_jobs=50)

    monkeypatch.setattr(slurm, "limits", limits)
    return asked


@pytest.mark.parametrize("array, jobs, expected, asks", [
    (None, None, (1001, 50), True),  # neither set: both the cluster's
    (200, None, (200, 50), True),  # the site's array size wins, the cluster gives the queue's cap
    (None, 20, (1001, 20), True),
    (200, 20, (200, 20), False),  # both set: SLURM is not asked at all
])
def test_cluster_limits_the_sites_settings_else_the_clusters(cluster, array, jobs, expected, asks):
    site = SiteConfig(qos="high", max_array_size=array, max_submit_jobs=jobs)
    assert submit.cluster_limits(site) == expected
    assert cluster == (["high"] if asks else [])


def test_cluster_limits_unknown_to_slurm_leave_the_arrays_unsplit(monkeypatch, caplog):
    def refuse(user=None, qos=None, timeout=slurm.TIMEOUT_S):
        raise MedsweepError("scontrol is not installed or not on PATH")

    monkeypatch.setattr(slurm, "limits", refuse)
    with caplog.at_level(logging.WARNING, logger="medsweep.launcher"):
        assert submit.cluster_limits(SiteConfig(max_submit_jobs=30)) == (None, 30)
    assert [r.getMessage() for r in caplog.records] == [
        "cluster limits unknown (scontrol is not installed or not on PATH); arrays are not split"]


def _pending(n: int) -> list[tuple[PlannedJob, SimpleNamespace]]:
    return [(PlannedJob(idx=i, overrides=[], run_dir=f"r{i}", status="submit"), SimpleNamespace(job_id=f"90_{i}"))
            for i in range(n)]


def test_jobs_slurm_ended_with_a_failure_are_failed_with_its_state(monkeypatch, caplog):
    monkeypatch.setattr(slurm, "job_states", lambda ids: {
        "90_0": SlurmJob("90_0", "CANCELLED", slurm.VANISHED_REASON), "90_1": SlurmJob("90_1", "RUNNING"),
        "90_3": SlurmJob("90_3", "COMPLETED")})  # 90_2: unknown to SLURM yet
    pending = _pending(4)
    with caplog.at_level(logging.ERROR, logger="medsweep.launcher"):
        still = submit._ended_in_slurm(pending)
    assert [j.idx for j, _ in still] == [1, 2, 3]  # a completed job's result comes through submitit
    assert (pending[0][0].outcome, pending[0][0].error) == ("failed", "SLURM CANCELLED: job 90_0")
    assert [r.getMessage() for r in caplog.records] == ["#0 failed (job 90_0): SLURM CANCELLED: job 90_0"]


def test_a_slurm_that_does_not_answer_leaves_the_wait_to_submitit(monkeypatch, caplog):
    def refuse(ids):
        raise MedsweepError("sacct did not answer within 60 s")

    monkeypatch.setattr(slurm, "job_states", refuse)
    pending = _pending(2)
    with caplog.at_level(logging.WARNING, logger="medsweep.launcher"):
        assert submit._ended_in_slurm(pending) == pending
    assert [r.getMessage() for r in caplog.records] == [
        "cannot ask SLURM about the sweep's jobs (sacct did not answer within 60 s); waiting on submitit"]


def test_the_report_job_writes_slurms_verdicts_then_ends_the_sweep(monkeypatch, tmp_path):
    calls: list[tuple] = []
    monkeypatch.setattr(status, "reconcile", lambda sweep_dir, *, write: calls.append(("reconcile", sweep_dir, write)))
    monkeypatch.setattr(sweep, "end", lambda sweep_dir, launched=None: calls.append(("end", sweep_dir)) or 3)
    assert submit.report_job(str(tmp_path)) == 3  # the sweep's exit code is the job's
    assert calls == [("reconcile", Path(tmp_path), True), ("end", Path(tmp_path))]
    assert all(isinstance(c[1], Path) for c in calls)
