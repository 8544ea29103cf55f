"""`medsweep-status <sweep dir> [--watch [SECONDS]] [--json] [--resubmit]`: where each job of a sweep is, without
opening a log. One row per job of the sweep's jobs file: SLURM's state (one sacct and one squeue call for the whole
sweep; a local sweep's from its records), requeues, why it waits, its record's status, step / total and the last
loss from its progress.json, elapsed time and ETA, and a flag where something needs a look. SLURM's verdict goes into
the records first (medsweep/verdict.py): a job SLURM has ended without a record of its end gets a failed one.

`--resubmit` runs the sweep's own command again (from its multirun.yaml): the launcher skips complete records, so
only the failed and unfinished jobs run.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medsweep import progress_file, slurm, verdict
from medsweep.errors import MedsweepError
from medsweep.runrecord import RunRecord
from medsweep.sweep import JOBS_FILE

STALL_S = 15 * 60  # a running job writes progress.json at least every minute; 15 minutes of silence is a hang
WATCH_S = 30.0
# states this module gives a job that SLURM does not know (a local sweep, a job never submitted)
ENDED = slurm.TERMINAL | {"REFUSED", "INVALID", "INTERRUPTED"}
_ORDER = ["RUNNING", "PENDING", "COMPLETED", "FAILED"]
_STYLE = {"COMPLETED": "green", "RUNNING": "cyan", "PENDING": "yellow"}


@dataclass
class Row:
    idx: int
    job_id: str
    state: str  # SLURM's; without SLURM: from the record (COMPLETED, FAILED, RUNNING, INTERRUPTED) or the plan
    requeues: int
    reason: str  # why SLURM holds it back, or how it failed
    record: str  # the run record's status: complete | failed | running | interrupted | missing | corrupt
    phase: str  # progress.json: train | eval | "" (none yet)
    step: int | None
    total_steps: int | None
    loss: float | None
    questions_done: int | None  # evaluation's, while it runs
    questions_total: int | None
    elapsed_s: float | None
    eta_s: float | None
    flag: str
    run: str  # what sets the job apart from the others: its axes, or the overrides that vary
    run_dir: str
    error: str


def load_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The sweep's jobs file, run directories made absolute; MedsweepError when there is none to read."""
    if not sweep_dir.is_dir():
        raise MedsweepError(f"no sweep directory {sweep_dir}")
    path = sweep_dir / JOBS_FILE
    try:
        jobs = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedsweepError(f"no {JOBS_FILE} in {sweep_dir}: not a sweep directory, or nothing planned yet") from None
    except (OSError, ValueError) as exc:
        raise MedsweepError(f"cannot read {path}: {exc}") from None
    if not isinstance(jobs, list) or not all(isinstance(j, dict) and "run_dir" in j for j in jobs):
        raise MedsweepError(f"{path} is not a list of jobs")
    for job in jobs:
        run_dir = Path(str(job["run_dir"]))
        # a relative run dir is relative to where the sweep was launched; the sweep dir is its parent
        job["run_dir"] = str(run_dir if run_dir.is_absolute() else sweep_dir.absolute() / run_dir.name)
    return jobs


def reconcile(sweep_dir: Path, write: bool = True) -> list[verdict.Verdict]:
    """SLURM's verdict into the records of the sweep in `sweep_dir` (verdict.reconcile_jobs)."""
    return verdict.reconcile_jobs(load_jobs(Path(sweep_dir)), write=write)


def _age_s(stamp: Any) -> float | None:
    try:
        then = datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return (datetime.now(UTC) - then).total_seconds()


def _elapsed(rec: RunRecord | None) -> float | None:
    """A job's time so far without SLURM's word: the record's wall time, or since it started (still running)."""
    if rec is None:
        return None
    if (wall := _number(rec.wall_time_s)) is not None:
        return wall
    return _age_s(rec.started_at) if rec.status == "running" else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _labels(jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    shared = set.intersection(*(set(j.get("overrides") or []) for j in jobs)) if len(jobs) > 1 else set()
    return [" ".join(f"{k}={v}" for k, v in j["axes"].items()) if isinstance(j.get("axes"), dict) and j["axes"]
            else " ".join(o for o in j.get("overrides") or [] if o not in shared) for j in jobs]


def _local_state(job: Mapping[str, Any], rec: str) -> str:
    planned = str(job.get("status") or "")
    if planned in ("refused", "invalid"):
        return planned.upper()
    by_record = {"complete": "COMPLETED", "failed": "FAILED", "running": "RUNNING", "interrupted": "INTERRUPTED"}
    if rec in by_record:
        return by_record[rec]
    if job.get("outcome") == "failed":
        return "FAILED"
    return "SUBMITTED" if job.get("job_id") else "NOT_SUBMITTED"


def rows(sweep_dir: Path, write: bool = True) -> tuple[list[Row], list[str]]:
    """One row per job of the sweep, and warnings (SLURM could not be asked)."""
    jobs = load_jobs(sweep_dir)
    warnings: list[str] = []
    try:
        states = verdict.states_of(jobs)
    except MedsweepError as exc:
        states = {}
        warnings.append(f"SLURM's states unknown ({exc}): states from the records")
    on_slurm = verdict.slurm_sweep(jobs) and not warnings
    verdicts = {v.idx: v for v in verdict.reconcile_jobs(jobs, states, write=write)}
    out = []
    for job, label in zip(jobs, _labels(jobs), strict=True):
        run_dir = Path(job["run_dir"])
        job_id = str(job.get("job_id") or "")
        found = states.get(job_id)
        rec, loaded = verdict.read_record(run_dir)
        prog = progress_file.read(run_dir)
        flags = []
        if (v := verdicts.get(int(job.get("idx", -1)))) and v.action:
            # a record written now says what the reason column says; a flagged one says why it was not written
            flags.append("failed record written" if v.action == "recorded" else f"{v.action}: {v.note}")
        state = found.state if found else _local_state(job, rec)
        if on_slurm and job_id and not found:
            flags.append("unknown to SLURM")
        age = _age_s(prog.get("updated_at"))
        if state == "RUNNING" and rec == "running" and age is not None and age > STALL_S:
            flags.append(f"no progress for {progress_file.duration(age)}")
        error = str(loaded.error or "") if loaded and rec == "failed" else str(job.get("error") or "")
        if job.get("status") in ("refused", "invalid"):
            error = str(job.get("reason") or "")
        out.append(Row(
            idx=int(job.get("idx", -1)), job_id=job_id, state=state, requeues=found.requeues if found else 0,
            reason=(found.reason if found else "") or (error if state not in slurm.ACTIVE else ""),
            record=rec, phase=str(prog.get("phase") or ""), step=prog.get("step"),
            total_steps=prog.get("total_steps"), loss=_number(prog.get("loss")),
            questions_done=prog.get("questions_done"), questions_total=prog.get("questions_total"),
            elapsed_s=None if state == "PENDING" else found.elapsed_s if found and found.elapsed_s is not None
            else _elapsed(loaded),
            eta_s=_number(prog.get("eta_s")) if state in ("RUNNING", "SUBMITTED") else None,
            flag="; ".join(flags), run=label, run_dir=str(run_dir), error=error))
    return out, warnings


def counts(table: Sequence[Row]) -> dict[str, int]:
    tally = Counter(r.state for r in table)
    ordered = [s for s in _ORDER if s in tally] + sorted(s for s in tally if s not in _ORDER)
    return {s: tally[s] for s in ordered}


def summary(table: Sequence[Row]) -> str:
    flagged = sum(bool(r.flag) for r in table)
    return (f"{len(table)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts(table).items())
            + (f"; {flagged} flagged" if flagged else ""))


def _progress_cell(r: Row) -> str:
    if r.state == "COMPLETED":
        return ""
    if r.phase == "eval" and r.state in slurm.ACTIVE | {"SUBMITTED"}:
        return f"eval {r.questions_done}/{r.questions_total}" if r.questions_total else "eval"
    return f"{r.step}/{r.total_steps}" if r.step is not None and r.total_steps else ""


_COLUMNS = (("#", "right"), ("job", "left"), ("state", "left"), ("rq", "right"), ("record", "left"),
            ("progress", "right"), ("loss", "right"), ("elapsed", "right"), ("ETA", "right"), ("run", "left"),
            ("reason", "left"), ("flag", "left"))


def _cells(r: Row) -> list[str]:
    return [str(r.idx), r.job_id, r.state, str(r.requeues or ""), r.record, _progress_cell(r),
            f"{r.loss:.4g}" if r.loss is not None else "",
            progress_file.duration(r.elapsed_s) if r.elapsed_s is not None else "",
            progress_file.duration(r.eta_s) if r.eta_s is not None else "", r.run, r.reason[:80], r.flag]


def render(table: Sequence[Row], title: str, hide_completed: bool = False):
    """A rich Table of the rows (for a terminal), the counts in its caption; `hide_completed`: leave COMPLETED
    rows out (--watch on a sweep taller than the terminal)."""
    from rich.table import Table

    shown = [r for r in table if not (hide_completed and r.state == "COMPLETED" and not r.flag)]
    out = Table(title=title, caption=summary(table) + (f" ({len(table) - len(shown)} completed not shown)"
                                                        if len(shown) < len(table) else ""), caption_justify="left")
    for name, justify in _COLUMNS:
        out.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in shown:
        style = "red" if r.state in slurm.TERMINAL_FAILED or r.flag else _STYLE.get(r.state)
        out.add_row(*_cells(r), style=style)
    return out


def plain(table: Sequence[Row], title: str) -> str:
    """The same table as plain text, for a pipe, a file or a log: rich takes ~5 s to lay out 1,000 rows."""
    from tabulate import tabulate

    body = tabulate([_cells(r) for r in table], headers=[name for name, _ in _COLUMNS], tablefmt="simple",
                    colalign=[justify for _, justify in _COLUMNS], disable_numparse=True)
    lines = [title, *(line.rstrip() for line in body.splitlines()), summary(table)]
    return "\n".join(lines)


def _json(table: Sequence[Row]) -> str:
    return json.dumps({"jobs": [asdict(r) for r in table], "counts": counts(table), "summary": summary(table)},
                      indent=2)


def _print(table: Sequence[Row], title: str) -> None:
    from rich.console import Console

    console = Console()
    if console.is_terminal:
        console.print(render(table, title))
    else:
        print(plain(table, title))


def watch(sweep_dir: Path, every_s: float) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()

    def view(table: Sequence[Row]):
        # rows, header, borders and caption taller than the terminal: the jobs still going matter more
        return render(table, f"{sweep_dir}  ({time.strftime('%H:%M:%S')})",
                      hide_completed=len(table) + 8 > console.height)

    try:
        table, warnings = rows(sweep_dir)
        with Live(view(table), console=console, auto_refresh=False) as live:
            while not all(r.state in ENDED for r in table):
                time.sleep(every_s)
                table, warnings = rows(sweep_dir)
                live.update(view(table), refresh=True)
    except KeyboardInterrupt:
        pass
    for line in warnings:
        print(f"medsweep-status: warning: {line}", file=sys.stderr)
    return 0


def resubmit_command(sweep_dir: Path) -> tuple[list[str], Path | None]:
    """The sweep's own command (its overrides from multirun.yaml, the same sweep directory) and the directory it
    was launched from."""
    import yaml

    path = sweep_dir / "multirun.yaml"
    try:
        hydra = (yaml.safe_load(path.read_text(encoding="utf-8")) or {})["hydra"]
        task, hydra_overrides = list(hydra["overrides"]["task"]), list(hydra["overrides"]["hydra"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MedsweepError(f"cannot read the sweep's command from {path} ({exc}); re-run it by hand") from None
    keep = [o for o in hydra_overrides if not o.startswith(("hydra.mode=", "hydra.sweep.dir="))]
    # a --plan sweep submitted nothing: resubmitting it submits it
    command = [sys.executable, "-m", "medsweep", "-m", *keep, *(o for o in task if not o.startswith("plan=")),
               f"hydra.sweep.dir={sweep_dir.absolute()}"]
    name = (hydra.get("job") or {}).get("config_name")
    if name and name != "config":
        command[3:3] = ["--config-name", str(name)]
    for source in (hydra.get("runtime") or {}).get("config_sources") or []:
        if source.get("provider") == "command-line":
            command[3:3] = ["--config-dir", str(source.get("path"))]
    cwd = (hydra.get("runtime") or {}).get("cwd")
    return command, Path(cwd) if cwd and Path(cwd).is_dir() else None


def resubmit(sweep_dir: Path, table: Sequence[Row]) -> int:
    todo = [r for r in table if r.record != "complete" and r.state not in slurm.ACTIVE | {"REFUSED", "INVALID"}]
    if not todo:
        print("medsweep-status: nothing to resubmit: every job is complete, queued or running", file=sys.stderr)
        return 0
    command, cwd = resubmit_command(sweep_dir)
    print(f"medsweep-status: resubmitting {len(todo)} job(s) ({', '.join(f'#{r.idx}' for r in todo)}): "
          f"{' '.join(command[1:])}", file=sys.stderr)
    return subprocess.run(command, cwd=cwd).returncode


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medsweep-status", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", type=Path, help="the sweep's directory (<output_root>/sweeps/<sweep_name>)")
    p.add_argument("--watch", nargs="?", type=float, const=WATCH_S, metavar="SECONDS",
                   help=f"refresh every SECONDS (default {WATCH_S:g}) until every job has ended; Ctrl-C stops")
    p.add_argument("--json", action="store_true", help="the rows and counts as JSON on stdout")
    p.add_argument("--resubmit", action="store_true",
                   help="re-run the sweep's command: its failed and unfinished jobs run again")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.watch is not None and (args.json or args.resubmit):
        _parser().error("--watch takes neither --json nor --resubmit")
    if args.watch is not None and args.watch <= 0:
        _parser().error("--watch SECONDS must be > 0")
    try:
        if args.watch is not None:
            load_jobs(args.sweep_dir)
            return watch(args.sweep_dir, args.watch)
        table, warnings = rows(args.sweep_dir)
        for line in warnings:
            print(f"medsweep-status: warning: {line}", file=sys.stderr)
        if args.json:
            print(_json(table))
        else:
            _print(table, str(args.sweep_dir))
        return resubmit(args.sweep_dir, table) if args.resubmit else 0
    except MedsweepError as exc:
        print(f"medsweep-status: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
