"""A sweep's jobs file and its one end: `sweep_jobs.json` (the launcher's PlannedJob list, written by `write_jobs`),
the job status list read back from it with each run's record, the comparison report, and the failure summary.

`end` is the only way a sweep finishes. The launcher calls it when a job it launched failed (it then exits 1 with
the summary on stderr: an exception raised by a Hydra callback becomes a warning, and one raised by the launcher
ends in Hydra's stack); otherwise Hydra's end-of-multirun callback (SweepReport) calls it once the last batch ran.
Either way the status list and the report are written once per sweep.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from medsweep import record
from medsweep.errors import MedsweepError
from medsweep.runrecord import RunRecord

log = logging.getLogger("medsweep.sweep")
JOBS_FILE = "sweep_jobs.json"


@dataclass
class PlannedJob:
    idx: int
    overrides: list[str]
    run_dir: str
    status: str  # submit | complete (skipped) | refused | invalid
    reason: str = ""
    resources: dict[str, Any] = field(default_factory=dict)
    need_gib: float = 0.0
    have_gib: float = 0.0
    mode: str = ""  # cpu | single | data_parallel | model_split (medsweep/fit.py:parallel)
    processes: int = 1
    gpu_hours: float = 0.0
    job_id: str = ""  # submitit / SLURM job id
    outcome: str = ""  # completed | failed | skipped; submitted: detached, or still queued from an earlier submission
    error: str = ""
    axes: dict[str, Any] = field(default_factory=dict)  # record.axes of the job's config ({} if it did not resolve)
    pack: list[int] = field(default_factory=list)  # pack=K: the jobs (idx) trained with it in one process


def detached(cfg: DictConfig) -> bool:
    """Whether a multirun submits and returns (`detach`; unset: on SLURM) instead of waiting for its jobs."""
    choice = cfg.get("detach")
    if choice is None:
        return str(OmegaConf.select(cfg, "hydra.launcher._target_", default="")).endswith("SlurmLauncher")
    return bool(choice)


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The sweep's jobs file as written (a list of PlannedJob dicts), [] when there is none yet."""
    path = sweep_dir / JOBS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def write_jobs(sweep_dir: Path, jobs: list[PlannedJob]) -> None:
    """Write this launch's jobs into the sweep's jobs file, keeping the jobs of its earlier batches."""
    previous = read_jobs(sweep_dir)
    mine = {j.idx for j in jobs}
    merged = [p for p in previous if p.get("idx") not in mine] + [asdict(j) for j in jobs]
    record.atomic_write_json(sweep_dir / JOBS_FILE, sorted(merged, key=lambda j: j["idx"]))


def job_statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    """This sweep's jobs (from the launcher's sweep_jobs.json) with the status of their run records."""
    jobs = read_jobs(sweep_dir)
    for job in jobs:
        try:
            rec = RunRecord.read(job["run_dir"])
        except FileNotFoundError:
            job["record"] = "missing"
        except ValueError:
            job["record"] = "corrupt"
        else:
            job["record"] = rec.status if rec.status is not None else "corrupt"
            job["error"] = job.get("error") or rec.error or ""
    return jobs


def finish(sweep_dir: Path) -> list[dict[str, Any]]:
    """Print this sweep's job statuses, write its comparison report, return the failed jobs."""
    return _finish(sweep_dir)[1]


def _finish(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`finish`, returning every job of the jobs file as well as the failed ones."""
    jobs = job_statuses(sweep_dir)
    for job in jobs:
        print(f"  #{job['idx']:<3} {job.get('outcome') or job['status']:<10} record={job['record']:<9} "
              f"{' '.join(job['overrides'])}  {job.get('error', '')[:200]}")
    try:
        from medsweep.report import report_sweep

        print(f"report: {report_sweep(sweep_dir)}")
    except MedsweepError as exc:  # e.g. no record at all: the failures are still named by the caller
        log.warning("no report: %s", exc)
    return jobs, [j for j in jobs if j.get("outcome") == "failed" or j["record"] in ("failed", "corrupt")]


def failure_message(failed: list[dict[str, Any]], total: int) -> str:
    return f"{len(failed)} of {total} job(s) failed: " + "; ".join(
        f"#{j['idx']} ({' '.join(j['overrides'])}): {j.get('error', '')[:200]}" for j in failed)


def end(sweep_dir: Path, launched: int | None = None) -> int:
    """End the sweep: print its job statuses, write its report, name its failed jobs; return the exit code.

    launched: the launcher's call, after a job of its `launched` jobs failed: the failure summary (out of
    `launched`) goes to stderr as `medsweep: error: ...` and the exit code is 1, for the launcher to exit with.
    None: Hydra's end-of-multirun callback, after every batch: a job whose record failed or is corrupt is logged
    as an error (out of every job in the jobs file), and the exit code stays 0."""
    jobs, failed = _finish(sweep_dir)
    if launched is not None:
        # the summary alone, then a non-zero exit: an exception would end in ~20 lines of Hydra's stack
        print(f"medsweep: error: {failure_message(failed, launched)}", file=sys.stderr)
        return 1
    if failed:
        log.error(failure_message(failed, len(jobs)))
    return 0


class SweepReport(Callback):
    """Hydra's end-of-multirun hook: `end` (a sweep with a failed job has ended in the launcher instead, which
    calls the same `end` and then exits 1; a detached sweep ends in its report job on the cluster)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("plan") or detached(config):
            return
        end(Path(str(config.hydra.sweep.dir)))
