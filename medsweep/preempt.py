"""Checkpoint on SLURM's warning signal at a step boundary, then let submitit requeue the job.

submitit installs a SIGUSR2 handler that checkpoints the callable, requeues the job and exits at once,
wherever the process is. During training we hold that signal back: the current optimizer step finishes,
the Trainer saves a full checkpoint (adapter, optimizer, scheduler, RNG, data position), and only then
is submitit's handler called. A resumed job restarts from that checkpoint and ends with the same adapter
as an uninterrupted run. Outside training (evaluation) the signal goes straight to submitit. Under data
parallelism every rank checkpoints at the same step; submitit's handler requeues from rank 0 only.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from transformers import TrainerCallback

from medsweep import distributed

log = logging.getLogger(__name__)
SIGNAL = signal.SIGUSR2


class CheckpointOnSignal(TrainerCallback):
    def __init__(self, signum: int = SIGNAL):
        self.signum = signum
        self.pending: tuple[int, Any] | None = None
        self.previous = signal.getsignal(signum)
        self.active = callable(self.previous)  # only under a handler that will requeue us (submitit)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.active:
            signal.signal(self.signum, self._hold)

    def _hold(self, signum, frame):
        log.warning("signal %s: checkpointing at the end of this step, then requeueing", signal.Signals(signum).name)
        self.pending = (signum, frame)

    def on_step_end(self, args, state, control, **kwargs):
        # Data parallel: the signal reaches the ranks at slightly different moments; all must save and stop at
        # the same step (the checkpoint is collective), and rank 0, which requeues, must stop even if only
        # another rank has seen the signal so far.
        if distributed.any_rank(self.pending is not None):
            self.pending = self.pending or (self.signum, None)
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if self.pending:
            log.warning("checkpoint saved at step %d; handing over to the job scheduler", state.global_step)
            self._release()

    def on_train_end(self, args, state, control, **kwargs):
        self._release()

    def _release(self) -> None:
        if self.active:
            signal.signal(self.signum, self.previous)
        if self.pending:
            pending, self.pending = self.pending, None
            if callable(self.previous):
                self.previous(*pending)  # submitit: requeue and exit (rank 0); other ranks return
