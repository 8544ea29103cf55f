"""Submitting a sweep's jobs and following them: SLURM arrays within the cluster's limits, the wait of a blocking
sweep (one live line of job counts by state), and the report job of a detached sweep, which SLURM starts once
every job of the sweep has ended (`afterany`) so that nobody has to stay logged in for the report.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medsweep.errors import MedsweepError
from medsweep.progress_file import EVERY_S

if TYPE_CHECKING:
    from hydra.core.utils import JobReturn

    from medsweep.config import SiteConfig
    from medsweep.sweep import PlannedJob

log = logging.getLogger("medsweep.launcher")
T = TypeVar("T")

# The report job reads every record and draws the figures: small, but not a login-node one-liner.
REPORT_RESOURCES = {"timeout_min": 60, "cpus_per_task": 1, "mem_gb": 4, "nodes": 1, "tasks_per_node": 1}
# submitit's job states that mean "not started yet" (the rest of a live job is running or finishing)
_WAITING = {"PENDING", "REQUEUED", "CONFIGURING", "READY", "UNKNOWN"}


def chunks(items: Sequence[T], size: int | None) -> list[list[T]]:
    """`items` in order, in lists of at most `size` (None: one list)."""
    size = size or len(items) or 1
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def cluster_limits(site: SiteConfig) -> tuple[int | None, int | None]:
    """(tasks per array, jobs a sweep may queue): the site's settings, else what the cluster says, else None."""
    array, submit = site.max_array_size, site.max_submit_jobs
    if array is None or submit is None:
        from medsweep import slurm

        try:
            limits = slurm.limits(qos=site.qos)
        except MedsweepError as exc:  # no scontrol/sacctmgr answer: SLURM itself refuses what is too large
            log.warning("cluster limits unknown (%s); arrays are not split", exc)
        else:
            array = limits.max_array_size if array is None else array
            submit = limits.max_submit_jobs if submit is None else submit
    return array, submit


def master_ids(job_ids: Sequence[str]) -> list[str]:
    """The SLURM job ids to depend on: an array task `1234_5` is waited for through its array `1234`."""
    return sorted({str(j).split("_")[0] for j in job_ids if j}, key=lambda j: (len(j), j))


def wait(pairs: Sequence[tuple[PlannedJob, Any]], *, poll_s: float = 1.0, every_s: float = EVERY_S,
         ask_slurm: bool = False, clock: Any = time.monotonic) -> list[JobReturn]:
    """Wait for every submitit job; its outcome (and a failure's one-line error) goes on its PlannedJob, never
    raised here. Meanwhile one line of job counts by state: a bar on a terminal, a log line when the counts change
    and at least every `every_s` seconds in a log file. `ask_slurm`: every `every_s` seconds SLURM itself is asked
    about the unfinished jobs, since submitit waits forever for an array task cancelled while pending (SLURM keeps
    no accounting record of it)."""
    from medsweep.progress import Progress  # transformers comes with it: not for a plan or a detached sweep

    returns: list[JobReturn] = []
    if not pairs:
        return returns
    progress = Progress("sweep", len(pairs), "job", every_s=every_s)
    pending = list(pairs)
    shown: dict[str, Any] = {}
    asked = clock()
    while True:
        still = []
        for job, handle in pending:
            if handle.done():
                _collect(job, handle, returns)
            else:
                still.append((job, handle))
        pending = still
        if ask_slurm and pending and clock() - asked >= every_s:
            asked = clock()
            pending = _ended_in_slurm(pending)
        counts = Counter("pending" if str(h.state).upper() in _WAITING else "running" for _, h in pending)
        failed = sum(j.outcome == "failed" for j, _ in pairs)
        now: dict[str, Any] = {"pending": counts["pending"], "running": counts["running"], "failed": failed}
        if not pending:  # close() logs the last line
            progress.update(len(pairs), **now)
            break
        progress.update(len(pairs) - len(pending), force=now != shown, **now)
        shown = now
        time.sleep(poll_s)
    progress.close()
    return returns


def _ended_in_slurm(pending: list[tuple[PlannedJob, Any]]) -> list[tuple[PlannedJob, Any]]:
    """The jobs SLURM has not ended with a failure; the others are failed with SLURM's state."""
    from medsweep import slurm

    try:
        states = slurm.job_states([str(h.job_id) for _, h in pending])
    except MedsweepError as exc:
        log.warning("cannot ask SLURM about the sweep's jobs (%s); waiting on submitit", exc)
        return pending
    still = []
    for job, handle in pending:
        found = states.get(str(handle.job_id))
        if found is not None and found.failed:
            job.outcome, job.error = "failed", f"SLURM {found.state}: job {found.job_id}"
            log.error("#%d failed (job %s): %s", job.idx, handle.job_id, job.error)
        else:
            still.append((job, handle))
    return still


def _collect(job: PlannedJob, handle: Any, returns: list[JobReturn]) -> None:
    try:
        ret = handle.results()[0]
    except Exception as exc:  # noqa: BLE001 - any job failure: record it, let the others finish
        job.outcome, job.error = "failed", error_line(exc)
        log.error("#%d failed (job %s): %s", job.idx, handle.job_id, job.error)
    else:
        job.outcome = "completed"
        returns.append(ret)


def error_line(exc: BaseException) -> str:
    """The line that says what went wrong in a failed job's exception (submitit's carries the task's traceback)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    tail = next((line for line in reversed(lines) if "Error" in line or "error" in line), lines[-1] if lines else "")
    return f"{type(exc).__name__}: {tail.strip()}"[:500]


def report_parameters(jobs: Sequence[PlannedJob], waits_for: Sequence[str], name: str) -> dict[str, Any]:
    """submitit parameters of the report job: small, on the sweep's own partition/account/qos/setup, started by
    SLURM once every job in `waits_for` has ended, whatever its end (afterany: a failed job is in the report)."""
    first = jobs[0].resources
    params: dict[str, Any] = {**REPORT_RESOURCES, "name": f"{name}-report"}
    for key in ("slurm_partition", "slurm_account", "slurm_qos", "slurm_setup"):
        if key in first:
            params[key] = first[key]
    extra = dict(first.get("slurm_additional_parameters") or {})
    extra["dependency"] = "afterany:" + ":".join(master_ids(waits_for))
    params["slurm_additional_parameters"] = extra
    return params


def report_job(sweep_dir: str) -> int:
    """Runs on the cluster after the sweep's jobs: SLURM's verdicts into the records of jobs that died without
    writing one, then the sweep's end (status list, report, failures named in the log)."""
    from medsweep import status
    from medsweep.sweep import end

    status.reconcile(Path(sweep_dir), write=True)
    return end(Path(sweep_dir))
