"""Progress where people look: a tqdm bar on a terminal, and in a log file (a SLURM job's output, a pipe) one plain
line at least every `every_s` seconds and when the work ends, never carriage returns. Training (`TrainingProgress`,
a Trainer callback: step / total, loss, steps/s, ETA) and evaluation (`Progress` around generation and
perplexity) both use it.

Inside `progress_file.recording` (run.py) the same figures also go to the run's progress.json.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from transformers import TrainerCallback

from medsweep import progress_file
from medsweep.progress_file import EVERY_S, duration

__all__ = ["EVERY_S", "Progress", "TrainingProgress", "duration"]
log = logging.getLogger("medsweep")


class Progress:
    """`done` of `total` units of one task. `tty` (default: whether `stream` is a terminal) chooses the tqdm bar;
    otherwise `update` logs a line when `every_s` seconds have passed since the last one, and `close` logs the last.
    `phase`: what progress.json calls it: train (step, total_steps, loss) or eval (task, questions)."""

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
        recorder = progress_file.current()
        if recorder is None:
            return
        elapsed, _, left = self.timing()
        if self.phase == "train":
            fields: dict[str, Any] = {"step": self.done, "total_steps": self.total}
            if "loss" in self.postfix:  # before the first logging step: the file keeps the last loss it has
                fields["loss"] = self.postfix["loss"]
        else:
            fields = {"task": self.desc, "questions_done": self.done, "questions_total": self.total}
        recorder.update(force, phase=self.phase, **fields, elapsed_s=round(elapsed, 1),
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
