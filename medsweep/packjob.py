"""A sweep's pack as one submitit job (`pack=K` / `pack=auto`; medsweep/launcher.py submits it): on the compute
node each member goes through Hydra's job set-up as a solo job would (its run directory, .hydra/ files, composed
config), then packrun.run_pack trains them together. submitit requeues it after a preemption like a solo job
(`checkpoint`): the pack resumes from its checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from medsweep import record

log = logging.getLogger("medsweep")


class PackJob:
    """The callable a pack's submitit job runs: `PackJob(launcher)(members)`, `members` being each member's Hydra
    job arguments as the launcher would submit them alone."""

    def __init__(self, launcher: Any):
        self.launcher = launcher

    def __call__(self, members: list[tuple[Any, ...]]) -> JobReturn:
        from medsweep import packrun

        configs: list[DictConfig] = []
        run_dirs: list[Path] = []
        overrides: list[list[str]] = []

        def collect(cfg: DictConfig) -> None:  # Hydra's task function of each member: set it up, train nothing
            resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
            assert isinstance(resolved, DictConfig)  # a job's config is a mapping
            configs.append(resolved)
            run_dirs.append(Path(HydraConfig.get().runtime.output_dir))
            overrides.append([record.redact_override(o) for o in HydraConfig.get().overrides.task])

        task = self.launcher.task_function
        self.launcher.task_function = collect
        try:
            for args in members:
                self.launcher(*args)
        finally:
            self.launcher.task_function = task
        log.info("pack of %d runs: %s", len(run_dirs), ", ".join(d.name for d in run_dirs))
        records = packrun.run_pack(configs, run_dirs, overrides)
        ret = JobReturn()
        ret.status, ret.return_value = JobStatus.COMPLETED, records
        return ret

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue after a preemption: the same pack again (it resumes from its checkpoint)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
