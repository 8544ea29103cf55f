"""The one check of a composed config before a job is planned or run: validate it (what only the composed config
can say, then each group's `check()` from config.py, then the parallel layout's rule), then estimate its fit
(fit.py). Used by the console script's pre-flight (cli.py), the launcher's plan of each sweep job (launcher.py),
and the job itself and its `--plan` (run.py).

Cheap to import: the pre-flight imports it before torch or transformers are loaded (config.py and fit.py only).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medsweep import config, fit
from medsweep.errors import ConfigError


def _resolve_all(cfg: DictConfig) -> None:
    """Every interpolation resolves (a missing key or env variable fails here, not after the model loaded)."""
    try:
        for key in cfg:
            if key != "hydra":  # Hydra's own node (present at launch) resolves at run time
                node = cfg[key]
                if isinstance(node, DictConfig):
                    OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "a value"
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(f"{key} is invalid: {reason}") from None


def _loader_options(loader: str) -> set[str] | None:
    """The data.options a loader reads (None: it takes any, or the loader is unknown and reported by its own check):
    the keyword-only parameters of the registered loader (medsweep/loaders/__init__.py)."""
    from medsweep import loaders

    func = loaders.LOADERS.get(loader)
    return None if func is None else loaders.options(func)


def unread_keys(cfg: DictConfig) -> list[str]:
    """Keys in the composed config that no code reads: added with `+`, misspelt in a YAML file, or a loader option
    the chosen loader does not take. Free-form mappings (model.random_config, site.additional_parameters) are
    passed through to libraries and not checked."""
    found: list[str] = []

    def walk(node: Any, schema: type, prefix: str) -> None:
        hints = typing.get_type_hints(schema)
        names = {f.name for f in dataclasses.fields(schema)}
        for key in node:
            dotted = f"{prefix}{key}"
            if dotted == "hydra":
                continue
            if key not in names:
                found.append(dotted)
            elif dataclasses.is_dataclass(hints[key]) and isinstance(node[key], DictConfig):
                walk(node[key], hints[key], dotted + ".")

    walk(cfg, config.RunConfig, "")
    options = _loader_options(str(cfg.data.loader))
    if options is not None and cfg.data.options:
        found += [f"data.options.{k}" for k in cfg.data.options if k not in options]
    return found


def check_inputs(cfg: DictConfig) -> None:
    """What only the composed config can say: every interpolation resolves and no key is unread."""
    _resolve_all(cfg)
    unread = unread_keys(cfg)
    if unread:
        raise ConfigError(f"{unread[0]} is invalid: nothing reads it (misspelt, or an option "
                          f"{'of another loader' if unread[0].startswith('data.options.') else 'medsweep lacks'}); "
                          f"remove it" + (f" ({len(unread) - 1} more: {', '.join(unread[1:4])})" if unread[1:] else ""))


def validate(cfg: DictConfig | config.RunConfig) -> config.RunConfig:
    """Range and cross-field checks on a composed config (raises ConfigError naming the key); the config as the
    schema's dataclasses."""
    if isinstance(cfg, DictConfig):
        check_inputs(cfg)
        cfg = config.typed(cfg)
    cfg.check()
    mode, world = fit.parallel(cfg)  # train.batch_size is the global batch: each process takes an equal share
    t, p = cfg.train, cfg.profile
    config.require(mode != "data_parallel" or t.batch_size % world == 0, "train.batch_size", t.batch_size,
                   f"must be divisible by the {world} data-parallel processes of profile {p.name} (each takes "
                   f"batch_size / {world} rows per step); or "
                   + ("set profile.parallel=model" if p.gpus else "change profile.processes"))
    return cfg


def check(cfg: DictConfig | config.RunConfig, *, require_fit: bool = False) -> fit.Fit:
    """Validate `cfg` (raises ConfigError, naming the key, on an invalid value) and return its fit estimate: the
    layout (mode, world size), the memory need against what the profile has, the GPU-hours.

    A config that does not fit is not invalid: the caller decides (the launcher refuses that job in its plan table,
    a single run's `--plan` reports it). With `require_fit` (the pre-flight of a single run) it raises
    ConfigError("model=<m> profile=<p> does not fit: <detail>"), unless the config is only a plan (plan=true).

    A RunConfig skips what only the composed config can say (`check_inputs`): the sweep plan's fast path
    (medsweep/typedjobs.py) checked that once for every job of its structure."""
    return checked(cfg, require_fit=require_fit)[1]


def checked(cfg: DictConfig | config.RunConfig, *, require_fit: bool = False) -> tuple[config.RunConfig, fit.Fit]:
    """`check`, returning the validated config as the schema's dataclasses as well as its fit."""
    run = validate(cfg)
    estimate = fit.estimate(run)
    if require_fit and not run.plan and not estimate.fits:
        raise ConfigError(f"model={run.model.name} profile={run.profile.name} does not fit: {estimate.detail}")
    return run, estimate
