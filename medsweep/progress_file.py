"""`<run_dir>/progress.json`: where a running job is, on disk, for `medsweep-status` to read without parsing a log.

Inside `recording(path)` (run.py, on the writing rank) medsweep.progress writes training's and evaluation's figures
there, atomically, at each logging step of training, when a task starts and ends, and at least every `every_s`
seconds in between: phase (train | eval), step / total_steps and the last loss, evaluation's task (generation,
perplexity) with questions_done / questions_total, elapsed_s and eta_s of the current task, updated_at (UTC).

Apart from medsweep.progress because that one imports transformers (its Trainer callback): the status command reads
these files and formats durations in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medsweep import record

log = logging.getLogger("medsweep")
FILE = "progress.json"
EVERY_S = 60.0  # a log line (medsweep.progress) and a write at least this often: the job shows it is alive


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s; ? when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressFile:
    """The figures of the current task, merged into one dict and written to `path` when forced or when `every_s`
    seconds have passed since the last write. A write that fails (disk full) is logged once and never stops the
    run: the file is a convenience, the record is what counts."""

    def __init__(self, path: Path, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic,
                 copies: tuple[Path, ...] = ()):
        self.path, self.every_s, self.clock = Path(path), every_s, clock
        self.copies = copies  # a pack's other runs (packrun.py): the same figures in each run directory
        self.fields: dict[str, Any] = {}
        self.last = -math.inf
        self.broken = False

    def update(self, force: bool = False, **fields: Any) -> None:
        """`fields` replace those of the same name; the others keep their value (after training, evaluation's
        figures join training's last step and loss)."""
        self.fields.update(fields)
        if self.broken or not (force or self.clock() - self.last >= self.every_s):
            return
        self.last = self.clock()
        try:
            for path in (self.path, *self.copies):
                record.atomic_write_json(path, {**self.fields, "updated_at": record.now()})
        except OSError as exc:
            self.broken = True
            log.warning("cannot write %s (%s): progress goes to the log only", self.path, exc)


_recorder: ProgressFile | None = None


def current() -> ProgressFile | None:
    """The file of the innermost `recording`, or None outside one."""
    return _recorder


@contextlib.contextmanager
def recording(path: Path, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic,
              copies: tuple[Path, ...] = ()) -> Iterator[ProgressFile]:
    """While inside, training's and evaluation's progress also go to `path` and `copies` (one process's: the
    writing rank's)."""
    global _recorder
    previous, _recorder = _recorder, ProgressFile(path, every_s, clock, copies)
    try:
        yield _recorder
    finally:
        _recorder = previous


def read(run_dir: Path) -> dict[str, Any]:
    """A run's progress.json, or {} when it has none (or an unreadable one)."""
    try:
        data = json.loads((Path(run_dir) / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
