"""Checkpoint on SLURM's warning signal at a step boundary, then let submitit requeue the job.

submitit installs a SIGUSR2 handler that checkpoints the callable, requeues the job and exits at once,
wherever the process is. During training we hold that signal back: the current optimizer step finishes,
the Trainer saves a full checkpoint (adapter, optimizer, scheduler, RNG, data position), and only then
is submitit's handler called. A resumed job restarts from that checkpoint and ends with the same adapter
as an uninterrupted run. Outside training (evaluation) the signal goes straight to submitit. Under data
parallelism every rank checkpoints at the same step; submitit's handler requeues from rank 0 only.

Outside a scheduler, Ctrl-C (SIGINT) and SIGTERM take the same path with `stop_on_signals`: the step finishes, a
checkpoint is saved, and the run stops with `Interrupted` (record `interrupted`, exit 130 / 143, one line saying
that the same command resumes). A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

from transformers import TrainerCallback

from medsweep import distributed

log = logging.getLogger(__name__)
SIGNAL = signal.SIGUSR2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM outside a scheduler. A BaseException, like KeyboardInterrupt: no `except Exception` on the
    way up may swallow it. `step` is where training stopped after its checkpoint (None: before or after training)."""

    def __init__(self, signum: int, step: int | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum  # what a shell reports for a process killed by that signal


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT / SIGTERM raise Interrupted in the main thread while inside; the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def callbacks() -> list[CheckpointOnSignal]:
    """The Trainer callback that turns this process's stop signals into a checkpoint at the next step boundary:
    SLURM's warning (under submitit), and Ctrl-C / SIGTERM where stop_on_signals is in force. One callback for all
    of them: under data parallelism each step costs one collective, whatever the number of signals watched."""
    return [CheckpointOnSignal((SIGNAL, *STOP_SIGNALS))]


class CheckpointOnSignal(TrainerCallback):
    def __init__(self, signums: tuple[int, ...] = (SIGNAL,)):
        self.previous = {s: signal.getsignal(s) for s in signums}
        # only signals whose handler acts on them: submitit's requeue for SLURM's warning, stop_on_signals' stop
        self.watched = [s for s in signums if s == SIGNAL and callable(self.previous[s])
                        or self.previous[s] is _raise_interrupted]
        self.pending: tuple[int, Any] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        for s in self.watched:
            signal.signal(s, self._hold)

    def _hold(self, signum, frame):
        stops = self.previous[signum] is _raise_interrupted
        if self.pending and stops:
            raise Interrupted(signum)  # asked twice: stop now
        then = "stopping (again to stop at once)" if stops else "requeueing"
        log.warning("signal %s: checkpointing at the end of this step, then %s", signal.Signals(signum).name, then)
        self.pending = (signum, frame)

    def on_step_end(self, args, state, control, **kwargs):
        if not self.watched:  # the same on every rank (one launcher sets up every process alike): no collective
            return
        # Data parallel: the signal reaches the ranks at slightly different moments; all must save and stop at
        # the same step (the checkpoint is collective), and rank 0, which requeues, must stop even if only
        # another rank has seen the signal so far (it then acts on that rank's signal).
        signum = distributed.max_over_ranks(self.pending[0] if self.pending else 0)
        if signum:
            self.pending = self.pending or (signum, None)
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if self.pending:
            log.warning("checkpoint saved at step %d", state.global_step)
            try:
                self._release()
            except Interrupted as exc:
                exc.step = state.global_step
                raise

    def on_train_end(self, args, state, control, **kwargs):
        self._release()

    def _release(self) -> None:
        for s in self.watched:
            signal.signal(s, self.previous[s])
        if self.pending:
            pending, self.pending = self.pending, None
            handler = self.previous.get(pending[0])
            if callable(handler):
                handler(*pending)  # submitit: requeue and exit (rank 0); other ranks return. Ctrl-C: Interrupted
