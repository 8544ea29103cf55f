"""End of a multirun (Hydra callback): the job status list and the comparison tables of the sweep, then a
non-zero exit naming the failed jobs, if any."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from medsweep.errors import MedsweepError
from medsweep.launcher import JOBS_FILE
from medsweep.runrecord import RunRecord

log = logging.getLogger("medsweep.sweep")


def job_statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    """This sweep's jobs (from the launcher's sweep_jobs.json) with the status of their run records."""
    path = sweep_dir / JOBS_FILE
    if not path.is_file():
        return []
    jobs = json.loads(path.read_text())
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
    jobs = job_statuses(sweep_dir)
    for job in jobs:
        print(f"  #{job['idx']:<3} {job.get('outcome') or job['status']:<10} record={job['record']:<9} "
              f"{' '.join(job['overrides'])}  {job.get('error', '')[:200]}")
    try:
        from medsweep.report import report_sweep

        print(f"report: {report_sweep(sweep_dir)}")
    except MedsweepError as exc:  # e.g. no record at all: the failures are still named by the caller
        log.warning("no report: %s", exc)
    return [j for j in jobs if j.get("outcome") == "failed" or j["record"] in ("failed", "corrupt")]


def failure_message(failed: list[dict[str, Any]], total: int) -> str:
    return f"{len(failed)} of {total} job(s) failed: " + "; ".join(
        f"#{j['idx']} ({' '.join(j['overrides'])}): {j.get('error', '')[:200]}" for j in failed)


class SweepReport(Callback):
    """Hydra's end-of-multirun hook. (A sweep with failed jobs ends in the launcher instead, which runs the
    same `finish` and then exits non-zero: Hydra turns exceptions raised by callbacks into warnings.)"""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("plan"):
            return
        failed = finish(Path(str(config.hydra.sweep.dir)))
        if failed:
            log.error(failure_message(failed, len(job_statuses(Path(str(config.hydra.sweep.dir))))))
