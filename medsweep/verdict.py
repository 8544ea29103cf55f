"""SLURM's verdict in the run records: a job that SLURM has ended (killed for memory or time, cancelled, its node
lost, or exited without a word) may never have written its record, or left one that still says running. Such a
job gets a failed record naming SLURM's state, so the status list, the report and a re-run all see it as failed.

`reconcile_jobs` takes the jobs of a sweep's jobs file (sweep_jobs.json, launcher.PlannedJob dicts) and never
imports medsweep.sweep, so that the end of a sweep can call it; `medsweep.status.reconcile(sweep_dir)` reads the
file. A record that says complete or failed is never rewritten: a complete record whose job SLURM calls failed
(a crash after the record was written) is flagged, not changed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medsweep import record, slurm
from medsweep.runlock import RunInUse, RunLock
from medsweep.runrecord import RunRecord
from medsweep.slurm import SlurmJob

log = logging.getLogger("medsweep.verdict")
OPEN = ("running", "interrupted")  # records of a job that has not ended, as far as the job could tell


@dataclass
class Verdict:
    idx: int
    job_id: str
    record: str  # the record's status before: complete | failed | running | interrupted | missing | corrupt
    action: str = ""  # recorded (a failed record written from SLURM's state) | to record (write=False) | flagged
    note: str = ""


def slurm_sweep(jobs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the sweep's jobs went to SLURM: the launcher's resources of a SLURM job are submitit's slurm_*
    parameters (slurm_array_parallelism at least); a local sweep's job ids are process ids, unknown to SLURM."""
    return any(str(k).startswith("slurm_") for j in jobs for k in (j.get("resources") or {}))


def states_of(jobs: Sequence[Mapping[str, Any]]) -> dict[str, SlurmJob]:
    """SLURM's state of each submitted job of a SLURM sweep ({} for a local one); MedsweepError if SLURM cannot
    be asked."""
    if not slurm_sweep(jobs):
        return {}
    return slurm.job_states(str(j.get("job_id") or "") for j in jobs)


def read_record(run_dir: Path) -> tuple[str, RunRecord | None]:
    """The record's status (missing when there is none, corrupt when unreadable) and the record."""
    try:
        rec = RunRecord.read(run_dir)
    except FileNotFoundError:
        return "missing", None
    except (OSError, ValueError):
        return "corrupt", None
    return (rec.status if isinstance(rec.status, str) else "corrupt"), rec


def slurm_error(job: SlurmJob) -> str:
    return f"SLURM {job.state}: job {job.job_id}" + (f", {job.reason}" if job.reason else "")


def _submitit_log(run_dir: Path, job_id: str) -> Path:
    """Where submitit put the job's stderr (hydra/launcher/slurm.yaml: <sweep dir>/.submitit/%j)."""
    return run_dir.parent / ".submitit" / job_id / f"{job_id}_0_log.err"


def _last_error(logfile: Path, tail_bytes: int = 65536) -> str:
    """The last line of a job's stderr that names an error (srun's own, an exception's), or ''."""
    try:
        with logfile.open("rb") as f:
            f.seek(max(0, logfile.stat().st_size - tail_bytes))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    said = next((line.strip() for line in reversed(lines) if "error" in line.lower() and line.strip()), "")
    return record.redact(said)[:300]


def reconcile_jobs(jobs: Sequence[Mapping[str, Any]], states: Mapping[str, SlurmJob] | None = None,
                   write: bool = True) -> list[Verdict]:
    """One Verdict per job that SLURM has ended. `states`: slurm.job_states of the jobs (asked here when None);
    `write=False`: say what would be recorded, write nothing. A relative run_dir is taken as it stands (the
    caller's working directory is the sweep's)."""
    states = states_of(jobs) if states is None else states
    verdicts = []
    for job in jobs:
        found = states.get(str(job.get("job_id") or ""))
        if found is None or not found.terminal:
            continue
        run_dir = Path(str(job["run_dir"]))
        verdict = Verdict(idx=int(job.get("idx", -1)), job_id=found.job_id, record=read_record(run_dir)[0])
        if verdict.record == "complete" and found.failed:
            verdict.action = "flagged"
            verdict.note = f"record complete, but {slurm_error(found)} (exit {found.exit_code}): check its log"
            log.warning("#%s %s: %s", verdict.idx, run_dir.name, verdict.note)
        elif verdict.record == "corrupt":
            verdict.action, verdict.note = "flagged", f"record unreadable; {slurm_error(found)}"
        elif verdict.record == "missing" or verdict.record in OPEN:
            verdict.action, verdict.note = "recorded" if write else "to record", slurm_error(found)
            if write:
                _write(job, run_dir, found, verdict)
        if verdict.action:
            verdicts.append(verdict)
    return verdicts


def _write(job: Mapping[str, Any], run_dir: Path, found: SlurmJob, verdict: Verdict) -> None:
    """The failed record, written under the run's lock: a requeued job that has started again in the meantime
    holds it, and its own record wins."""
    try:
        with RunLock(run_dir, wait_s=0):
            rec = RunRecord.load(run_dir)
            if rec is not None and rec.status not in OPEN:  # the job itself wrote its end since we looked
                verdict.action, verdict.note = "", f"record became {rec.status}"
                return
            if rec is None:
                rec = RunRecord(run_name=run_dir.name, run_dir=str(run_dir.resolve()), axes=dict(job.get("axes") or {}),
                                overrides=list(job.get("overrides") or []))
            logfile = _submitit_log(run_dir, found.job_id)
            said = _last_error(logfile)  # what killed it, in its own words (srun: ... signal 2; a MemoryError ...)
            rec.status, rec.finished_at = "failed", record.now()
            rec.error = slurm_error(found) + (f"; its log: {said}" if said else "")
            rec.extra["slurm"] = {**asdict(found), "log": str(logfile) if logfile.is_file() else None}
            rec.save(run_dir)
            log.info("#%s %s: recorded as failed (%s)", verdict.idx, run_dir.name, rec.error)
    except (RunInUse, OSError) as exc:  # OSError: a sweep directory this user may read but not write
        verdict.action, verdict.note = "flagged", f"not recorded: {exc}"
