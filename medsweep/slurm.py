"""SLURM's view of a sweep: the state of its jobs (`job_states`: one sacct and one squeue call for any number of
jobs) and the submission limits its arrays must respect (`limits`). Each query is one subprocess with a timeout; a
missing or failing command is a MedsweepError naming it.

Job ids are submitit's: "1234" for a job of its own, "1234_5" for task 5 of array 1234. Both commands are asked
for the distinct master ids only, so a sweep of 1,000 array tasks costs two calls.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from medsweep.errors import MedsweepError

TIMEOUT_S = 60.0

# SLURM's job states (sacct/squeue long names). A requeued job passes through REQUEUED/PENDING again, and a
# PREEMPTED job that SLURM requeues shows up as PENDING in squeue, which wins over sacct's record.
ACTIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
                    "SUSPENDED", "RESIZING", "RESV_DEL_HOLD", "SIGNALING", "SPECIAL_EXIT", "STAGE_OUT", "STOPPED"})
TERMINAL_FAILED = frozenset({"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "PREEMPTED",
                             "BOOT_FAIL", "DEADLINE", "REVOKED"})
TERMINAL = TERMINAL_FAILED | {"COMPLETED"}

_SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "ElapsedRaw", "Submit", "Start", "End", "Reason",
                 "NodeList")
# squeue -O pads each field to its width; wide enough that nothing is cut, the padding is stripped
_SQUEUE_FIELDS = ("JobArrayID:40", "State:24", "Reason:200", "RestartCnt:8", "TimeUsed:16", "NodeList:400")
VANISHED_REASON = "left the queue before it started (no accounting record)"
VANISHED_AFTER_S = 120.0
_ID = re.compile(r"^(\d+)(?:_(\d+))?$")
_RANGE = re.compile(r"^(\d+)_\[([^\]]*)\]$")


@dataclass(frozen=True)
class SlurmJob:
    job_id: str  # as submitit records it: 1234 or 1234_5
    state: str  # the base word: "CANCELLED by 0" -> CANCELLED
    reason: str = ""  # why it waits (Priority, Resources, Dependency, BeginTime ...) or ended; "" for SLURM's None
    exit_code: str = ""  # SLURM's code:signal, e.g. 1:0, 0:9 (killed by signal 9)
    elapsed_s: int | None = None
    requeues: int = 0  # earlier records of the same id (sacct --duplicates), or squeue's restart count
    node: str = ""
    start: str | None = None
    end: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def failed(self) -> bool:
        return self.state in TERMINAL_FAILED

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class SlurmLimits:
    max_array_size: int | None  # MaxArraySize: an array's task indices must stay below it; None: unknown
    max_submit_jobs: int | None  # the user's MaxSubmitJobs (association or QOS, the smaller); None: unlimited


def _run(cmd: list[str], timeout: float, tolerated: str | None = None) -> str:
    """stdout of `cmd`; a non-zero exit whose stderr holds `tolerated` reads as no output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise MedsweepError(f"{cmd[0]} is not installed or not on PATH: cannot ask SLURM ({exc})") from None
    except subprocess.TimeoutExpired:
        raise MedsweepError(f"{cmd[0]} did not answer within {timeout:g} s (slurmctld/slurmdbd busy or down?)"
                            ) from None
    if proc.returncode != 0:
        if tolerated and tolerated in proc.stderr:
            return ""
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise MedsweepError(f"{cmd[0]} failed (exit {proc.returncode}): {detail[-1] if detail else 'no output'}")
    return proc.stdout


def _tasks(job_id: str) -> list[str]:
    """The job ids one sacct/squeue id stands for: itself, or each task of a pending range 12_[0-3,7%2]."""
    match = _RANGE.match(job_id)
    if not match:
        return [job_id]
    master, spec = match.group(1), match.group(2).split("%")[0]  # %N: the array's throttle, not a task
    out = []
    for part in filter(None, spec.split(",")):
        bounds, _, step = part.partition(":")
        first, _, last = bounds.partition("-")
        out += [f"{master}_{i}" for i in range(int(first), int(last or first) + 1, int(step or 1))]
    return out


def _value(text: str) -> str:
    text = text.strip()
    return "" if text in ("None", "Unknown", "None assigned", "(null)") else text


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _now() -> datetime:
    return datetime.now()  # sacct's times are local and naive


def _time(text: str) -> datetime | None:
    """sacct's local time, None for Unknown / None."""
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None


def _seconds(text: str) -> int | None:
    """squeue's time: [D-][HH:]MM:SS."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not clock or not all(p.isdigit() for p in parts) or not (days == "" or days.isdigit()):
        return None
    seconds = 0
    for p in parts:
        seconds = 60 * seconds + int(p)
    return seconds + 86400 * int(days or 0)


def job_states(job_ids: Iterable[str], timeout: float = TIMEOUT_S) -> dict[str, SlurmJob]:
    """SLURM's state of each of `job_ids` it knows (ids it does not know are left out). sacct gives every job,
    ended ones included; squeue, which sacct can lag behind by seconds, overrides it for the jobs still queued.

    An array task cancelled while pending leaves no accounting record of its own (slurm 22.05: sacct lists the
    array's other tasks, never it) and no longer shows in squeue; submitit, which asks sacct, waits for it forever.
    Such a task is reported CANCELLED with the reason VANISHED_REASON, but only once every task sacct lists of its
    array ended more than VANISHED_AFTER_S ago, none is queued and no row stands for the array as a whole: for a
    few seconds after an array's tasks end, sacct lists some of them under none of their ids (one row under the
    array's id, or only its last task's)."""
    wanted = {j for j in job_ids if _ID.match(j)}
    masters = sorted({j.split("_")[0] for j in wanted}, key=int)
    if not masters:
        return {}
    listing = ",".join(masters)
    sacct = _run(["sacct", "-X", "-P", "-n", "--duplicates", "-j", listing, "-o", ",".join(_SACCT_FIELDS)], timeout)
    records: dict[str, list[tuple[str, bool, int, list[str]]]] = {}
    last_end: dict[str, datetime] = {}  # array -> when the last of its tasks that sacct lists ended
    unsettled: set[str] = set()  # ids with a row that is no ended task: a bare id, a pending range, a task not ended
    for n, line in enumerate(sacct.splitlines()):
        row = line.split("|")
        if len(row) != len(_SACCT_FIELDS):
            continue
        master, is_task, _ = row[0].partition("_")
        ended = _time(row[7]) if is_task and not row[0].endswith("]") else None
        if ended is None:
            unsettled.add(master)
        else:
            last_end[master] = max(ended, last_end.get(master, ended))
        tasks = _tasks(row[0])
        for task in tasks:
            if task in wanted:
                records.setdefault(task, []).append((row[5], tasks == [row[0]], n, row))
    found: dict[str, SlurmJob] = {}
    for task, rows in records.items():
        # a requeue adds a record with a later submit time: the latest is the job now (a task's own record before
        # its array's pending range, which shares the array's submit time)
        *_, row = max(rows)
        started = _value(row[6])
        found[task] = SlurmJob(
            job_id=task, state=row[2].split()[0] if row[2].strip() else "UNKNOWN",
            # sacct's Reason is why the job last waited: once it has run, that says nothing about how it ended
            reason="" if started else _value(row[8]), exit_code=row[3].strip(), elapsed_s=_int(row[4]),
            requeues=max(0, sum(own for _, own, _, _ in rows) - 1), node=_value(row[9]), start=started or None,
            end=_value(row[7]) or None)
    queue = _run(["squeue", "-h", "-r", "-j", listing, "-O", ",".join(f"{f}|" for f in _SQUEUE_FIELDS)], timeout,
                 tolerated="Invalid job id")  # every job of the list has left the queue
    for line in queue.splitlines():
        row = [c.strip() for c in line.split("|")]
        if len(row) < len(_SQUEUE_FIELDS) or not row[1]:
            continue
        for task in _tasks(row[0]):
            if task not in wanted:
                continue
            known = found.get(task)
            found[task] = SlurmJob(
                job_id=task, state=row[1].split()[0], reason=_value(row[2]),  # the queue's word is the current one
                exit_code=known.exit_code if known else "", elapsed_s=_seconds(row[4]),
                requeues=max(_int(row[3]) or 0, known.requeues if known else 0),
                node=_value(row[5]) or (known.node if known else ""), start=known.start if known else None,
                end=known.end if known else None)
    queued = {j.split("_")[0] for j, s in found.items() if s.active}
    for task in wanted - found.keys():
        master = task.split("_")[0]
        end = last_end.get(master)
        if "_" in task and end and master not in queued | unsettled \
                and (_now() - end).total_seconds() > VANISHED_AFTER_S:
            found[task] = SlurmJob(job_id=task, state="CANCELLED", reason=VANISHED_REASON)
    return found


def limits(user: str | None = None, qos: str | None = None, timeout: float = TIMEOUT_S) -> SlurmLimits:
    """The most tasks one array may have and the most jobs `user` (default: this user) may have queued at once.
    `qos`: the QOS the jobs are submitted with (site.qos); default the association's default QOS. An array's
    tasks each count as a job towards MaxSubmitJobs."""
    user = user or os.environ.get("USER") or getpass.getuser()
    config = _run(["scontrol", "show", "config"], timeout)
    array = next((_int(line.partition("=")[2]) for line in config.splitlines()
                  if line.split("=")[0].strip() == "MaxArraySize"), None)
    assoc = _run(["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=MaxSubmit,DefaultQOS,QOS"],
                 timeout)
    caps, qos_names = [], set()
    for line in assoc.splitlines():
        max_submit, default_qos, allowed = (line.split("|") + ["", "", ""])[:3]
        if (value := _int(max_submit)) is not None:
            caps.append(value)
        qos_names.add(qos or default_qos or (allowed.split(",")[0] if allowed else "normal"))
    qos_names.discard("")
    if qos_names:
        for line in _run(["sacctmgr", "-n", "-P", "show", "qos", ",".join(sorted(qos_names)),
                          "format=Name,MaxSubmitPU"], timeout).splitlines():
            name, _, per_user = line.partition("|")
            if name in qos_names and (value := _int(per_user)) is not None:
                caps.append(value)
    return SlurmLimits(max_array_size=array, max_submit_jobs=min(caps) if caps else None)
