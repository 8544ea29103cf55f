"""Hydra launcher plugins of medsweep (Hydra only loads launchers from the hydra_plugins namespace).

The logic lives in medsweep/launcher.py; these classes put it in front of hydra-submitit-launcher's.
Selected with `hydra/launcher=slurm` or `hydra/launcher=local` (conf/hydra/launcher/*.yaml).
"""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from medsweep.launcher import SweepLauncherMixin


class MedsweepSlurmLauncher(SweepLauncherMixin, SlurmLauncher):
    """submitit on SLURM, resources per job from its profile."""


class MedsweepLocalLauncher(SweepLauncherMixin, LocalLauncher):
    """submitit local processes (same plan/skip/fit logic), at most site.max_parallel at once."""
