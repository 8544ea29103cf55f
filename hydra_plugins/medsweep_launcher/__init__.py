"""Hydra plugins of medsweep (Hydra only loads plugins from the hydra_plugins namespace).

The logic lives in medsweep/launcher.py; these classes put it in front of hydra-submitit-launcher's launchers and
Hydra's basic sweeper. Selected with `hydra/launcher=slurm` or `hydra/launcher=local` (conf/hydra/launcher/*.yaml)
and `hydra/sweeper=medsweep` (conf/hydra/sweeper/medsweep.yaml, the default in conf/config.yaml).
"""

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from medsweep.launcher import SweepLauncherMixin


class MedsweepSlurmLauncher(SweepLauncherMixin, SlurmLauncher):
    """submitit on SLURM, resources per job from its profile."""


class MedsweepLocalLauncher(SweepLauncherMixin, LocalLauncher):
    """submitit local processes (same plan/skip/fit logic), at most site.max_parallel at once."""


class MedsweepSweeper(BasicSweeper):
    """Hydra's basic sweeper (same grid, order and `max_batch_size` batches) without its composition of every job
    before the launch when medsweep's launcher takes the batch: that launcher composes and checks every job itself
    before it submits any (a job that does not compose stops the sweep there, as it did here), so the second
    composition only doubled the time of a plan. Any other launcher gets the basic sweeper's check."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if isinstance(self.launcher, SweepLauncherMixin):
            return
        super().validate_batch_is_legal(batch)
