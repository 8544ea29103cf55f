"""Progress where people look: a tqdm bar on a terminal, and in a log file (a SLURM job's output, a pipe) one plain
line at least every `every_s` seconds and when the work ends, never carriage returns. Training (`TrainingProgress`,
a Trainer callback: step / total, loss, steps/s, ETA) and evaluation (`Progress` around generation and
perplexity) both use it.

Inside `recording(<run_dir>/progress.json)` (run.py, on the writing rank) the same figures also go to that file,
atomically, at each logging step of training, when a task starts and ends, and at least every `every_s` seconds in
between, for `medsweep-status` to read without parsing a log: phase (train | eval), step / total_steps and the last
loss, evaluation's task (generation, perplexity) with questions_done / questions_total, elapsed_s and eta_s of the
current task, updated_at (UTC).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback

from medsweep import record

log = logging.getLogger("medsweep")
EVERY_S = 60.0  # a plain line at least this often: a SLURM log shows the job is alive and how far it is
FILE = "progress.json"


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

    def __init__(self, path: Path, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.path, self.every_s, self.clock = Path(path), every_s, clock
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
            record.atomic_write_json(self.path, {**self.fields, "updated_at": record.now()})
        except OSError as exc:
            self.broken = True
            log.warning("cannot write %s (%s): progress goes to the log only", self.path, exc)


_recorder: ProgressFile | None = None


@contextlib.contextmanager
def recording(path: Path, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic
              ) -> Iterator[ProgressFile]:
    """While inside, training's and evaluation's progress also go to `path` (one process's: the writing rank's)."""
    global _recorder
    previous, _recorder = _recorder, ProgressFile(path, every_s, clock)
    try:
        yield _recorder
    finally:
        _recorder = previous


class Progress:
    """`done` of `total` units of one task. `tty` (default: whether `stream` is a terminal) chooses the tqdm bar;
    otherwise `update` logs a line when `every_s` seconds have passed since the last one, and `close` logs the last.
    `phase`: what the progress file (`recording`) calls it: train (step, total_steps, loss) or eval."""

    def __init__(self, desc: str, total: int, unit: str, *, initial: int = 0, every_s: float = EVERY_S,
                 stream: TextIO | None = None, tty: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 phase: str = "eval"):
        self.desc, self.total, self.unit, self.every_s, self.clock = desc, total, unit, every_s, clock
        self.phase = phase
        self.start = self.done = initial
        self.t0 = self.last = clock()
        self.postfix: dict[str, Any] = {}
        stream = stream if stream is not None else sys.stderr
        self.bar = None
        if stream.isatty() if tty is None else tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True,
                            leave=False)
        self._record(force=True)

    def update(self, done: int, force: bool = False, **postfix: Any) -> None:
        """Now `done` units are done (absolute, not an increment); `postfix`: figures to show (loss=...)."""
        self.done = done
        self.postfix.update({k: v for k, v in postfix.items() if v is not None})
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in self.postfix.items()},
                                     refresh=False)
        elif force or self.clock() - self.last >= self.every_s:
            self.log_line()
        self._record(force)

    def timing(self) -> tuple[float, float, float]:
        """Seconds since the start, units per second, seconds left (nan while unknown, 0 once done)."""
        elapsed = self.clock() - self.t0
        rate = (self.done - self.start) / elapsed if elapsed > 0 else math.nan
        left = (self.total - self.done) / rate if rate > 0 else math.nan
        return elapsed, rate, left if self.done < self.total else 0.0

    def _record(self, force: bool) -> None:
        if _recorder is None:
            return
        elapsed, _, left = self.timing()
        if self.phase == "train":
            fields: dict[str, Any] = {"step": self.done, "total_steps": self.total}
            if "loss" in self.postfix:  # before the first logging step: the file keeps the last loss it has
                fields["loss"] = self.postfix["loss"]
        else:
            fields = {"task": self.desc, "questions_done": self.done, "questions_total": self.total}
        _recorder.update(force, phase=self.phase, **fields, elapsed_s=round(elapsed, 1),
                         eta_s=round(left, 1) if math.isfinite(left) else None)

    def line(self) -> str:
        elapsed, rate, left = self.timing()
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        figures = "".join(f"  {k} {v:.4g}" if isinstance(v, float) else f"  {k} {v}" for k, v in self.postfix.items())
        return (f"{self.desc}: {self.unit} {self.done}/{self.total}{share}{figures}  {rate:.3g} {self.unit}/s  "
                f"elapsed {duration(elapsed)}  ETA {duration(left)}")

    def log_line(self) -> None:
        self.last = self.clock()
        log.info("%s", self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.log_line()  # the last figures, on a terminal too (the bar is gone)
        self._record(force=True)


class TrainingProgress(TrainerCallback):
    """Training progress on the main process: step / total, the last logged loss, steps/s and ETA. Replaces the
    Trainer's printer (a dict per logging step) and its tqdm bar; in a log file a line at every logging step and at
    least every `every_s` seconds."""

    def __init__(self, every_s: float = EVERY_S, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.options = {"every_s": every_s, "stream": stream, "tty": tty, "clock": clock}
        self.progress: Progress | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress = Progress("training", state.max_steps, "step", initial=state.global_step,
                                     phase="train", **self.options)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs and "loss" in logs:
            self.progress.update(state.global_step, force=True, loss=float(logs["loss"]))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.close()
            self.progress = None
