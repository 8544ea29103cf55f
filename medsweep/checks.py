"""The one check of a composed config before a job is planned or run: validate it (config.py), then estimate its
fit (fit.py). Used by the console script's pre-flight (cli.py), the launcher's plan of each sweep job (launcher.py),
and the job itself and its `--plan` (run.py).

Cheap to import: the pre-flight imports it before torch or transformers are loaded (config.py and fit.py only).
"""

from __future__ import annotations

from omegaconf import DictConfig

from medsweep import config, fit
from medsweep.errors import ConfigError


def check(cfg: DictConfig, *, require_fit: bool = False) -> fit.Fit:
    """Validate `cfg` (raises ConfigError, naming the key, on an invalid value) and return its fit estimate: the
    layout (mode, world size), the memory need against what the profile has, the GPU-hours.

    A config that does not fit is not invalid: the caller decides (the launcher refuses that job in its plan table,
    a single run's `--plan` reports it). With `require_fit` (the pre-flight of a single run) it raises
    ConfigError("model=<m> profile=<p> does not fit: <detail>"), unless the config is only a plan (plan=true)."""
    config.check_inputs(cfg)
    run = config.typed(cfg)
    run.check()
    estimate = fit.estimate(run)
    if require_fit and not run.plan and not estimate.fits:
        raise ConfigError(f"model={run.model.name} profile={run.profile.name} does not fit: {estimate.detail}")
    return estimate
