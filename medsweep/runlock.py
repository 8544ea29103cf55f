"""One writer per run directory: two starts of the same configuration must not train into one directory.

The writer holds an exclusive `flock` on `<run dir>/.lock` for as long as it runs; the file names the holder
(host, PID, SLURM job id) for the message a second start prints. The kernel releases the lock when the holder
dies, however it dies, so a dead holder's lock is simply taken over; on NFS the client's lock manager does the
same when the lease of a crashed node expires. A SLURM requeue of the same job (same job id, the old process on
its way out) waits a little for the lock instead of being refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from medsweep.errors import MedsweepError

LOCK_FILE = ".lock"
REQUEUE_WAIT_S = 60.0  # how long a requeued job waits for its previous incarnation to let go


class RunInUse(MedsweepError):
    """Another live process writes this run directory."""

    exit_code = 75  # EX_TEMPFAIL: try again later


def _slurm_job() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def _describe(holder: dict) -> str:
    who = f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}"
    return who + (f" (SLURM job {holder['slurm_job']})" if holder.get("slurm_job") else "")


class RunLock:
    """`with RunLock(run_dir):` holds the directory for this process or raises RunInUse naming the holder."""

    def __init__(self, run_dir: Path, wait_s: float = REQUEUE_WAIT_S):
        self.path = Path(run_dir) / LOCK_FILE
        self.wait_s = wait_s
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": _slurm_job()}
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                holder = self._holder()
                if me["slurm_job"] and holder.get("slurm_job") == me["slurm_job"] and time.monotonic() < deadline:
                    time.sleep(1.0)  # our own previous incarnation (requeue), still exiting
                    continue
                os.close(fd)
                raise RunInUse(f"run directory {self.path.parent} is in use by {_describe(holder)}: the same "
                               f"configuration is already running; wait for it, or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({**me, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n").encode(), 0)
        self.fd = fd

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # releases the flock; the file stays (unlinking it would race a new holder)
