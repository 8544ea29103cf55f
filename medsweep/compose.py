"""The job configs of a sweep's plan, composed with Hydra once per distinct set of structural overrides.

A sweep's jobs differ mostly in plain values (`lora.r=4,8`, `train.lr=...`): composing each of them with Hydra
(defaults list, YAML files, schema merge: ~0.3 s) is most of the time of a plan. `ComposeCache` composes the
structural part of a job with Hydra (config-group choices such as model= or profile=, `+`/`++`/`~` overrides,
package overrides, anything under hydra.) once, and applies the job's plain values to a deep copy with the call
Hydra makes for them (`OmegaConf.update(cfg, key, value, merge=True)`, after the defaults are composed).

Safety net: the first job of every distinct structure (the structural overrides and the keys of the values, in
order) is also composed by Hydra and compared with the fast config (every key and value with its type, Hydra's
own node included, and the run directory resolved); on any difference, or if the fast path raises, every job of
that structure is composed by Hydra. `MEDSWEEP_PLAN_CACHE=0` composes every job with Hydra (tests, benchmarks).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf

from medsweep import CONF_DIR

log = logging.getLogger("medsweep.compose")

ENV = "MEDSWEEP_PLAN_CACHE"


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def _conf_groups() -> set[str]:
    """The config groups under conf/ (nested ones as hydra/launcher), for a loader without a repository."""
    return {str(p.relative_to(CONF_DIR)) for p in CONF_DIR.rglob("*") if p.is_dir()}


def overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


class ComposeCache:
    """`compose(overrides)` gives what `loader.load_sweep_config(master, overrides)` gives, faster for jobs that
    share their structure. One per plan (a loader and its master config)."""

    def __init__(self, loader: Any, master: DictConfig | None) -> None:
        self.loader, self.master = loader, master
        # Hydra's test of a group override (defaults_list.Overrides) on the loader's repository; a stand-in loader
        # without one: the folders of conf/
        exists = getattr(getattr(loader, "repository", None), "group_exists", None)
        exists = exists if callable(exists) else _conf_groups().__contains__
        groups: dict[str, bool] = {}  # the repository asks every config source (files, packages) each time

        def is_group(key: str) -> bool:
            if key not in groups:
                groups[key] = exists(key)
            return groups[key]

        self._is_group: Callable[[str], bool] = is_group
        self._parser = OverridesParser.create()
        self._parsed: dict[str, Override] = {}
        self._bases: dict[tuple[str, ...], DictConfig] = {}
        self._checked: dict[tuple[Any, ...], bool] = {}  # structure -> the fast path gives Hydra's config
        self.full = self.fast = 0  # compositions by Hydra, configs made by the fast path

    def hydra(self, overrides: Sequence[str]) -> DictConfig:
        """Hydra's own composition of a job."""
        self.full += 1
        return self.loader.load_sweep_config(self.master, list(overrides))

    def _parse(self, text: str) -> Override:
        if text not in self._parsed:
            self._parsed[text] = self._parser.parse_overrides([text])[0]
        return self._parsed[text]

    def _structural(self, o: Override) -> bool:
        return (o.type != OverrideType.CHANGE or o.package is not None or o.is_sweep_override()
                or o.is_hydra_override() or o.key_or_group == "hydra" or self._is_group(o.key_or_group))

    def split(self, overrides: Sequence[str]) -> tuple[list[Override], list[Override], list[Override]]:
        """The job's overrides parsed, its structural ones and its values."""
        parsed = [self._parse(text) for text in overrides]
        fixed = [self._structural(o) for o in parsed]
        # a value whose key meets a structural override's (`+lora.x=1 lora.x=2`, `~lora lora.r=4`) stays with it, in
        # order, composed by Hydra
        touched = [o.key_or_group for o, f in zip(parsed, fixed, strict=True)
                   if f and not self._is_group(o.key_or_group)]
        fixed = [f or any(overlaps(o.key_or_group, k) for k in touched) for o, f in zip(parsed, fixed, strict=True)]
        return (parsed, [o for o, f in zip(parsed, fixed, strict=True) if f],
                [o for o, f in zip(parsed, fixed, strict=True) if not f])

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        if not enabled():
            return self.hydra(overrides)
        try:
            parsed, structural, values = self.split(overrides)
        except Exception as exc:  # noqa: BLE001 - Hydra's composition reports it as it always has
            log.debug("plan: cannot split %s (%s): composed by Hydra", " ".join(overrides), exc)
            return self.hydra(overrides)
        if not values:  # nothing to share: this job's own composition
            return self.hydra(overrides)
        base_key = tuple(str(o.input_line) for o in structural)
        shape = (base_key, tuple(o.key_or_group for o in values))
        if self._checked.get(shape) is False:
            return self.hydra(overrides)
        try:
            cfg = self._apply(self.base(base_key), parsed, values)
        except Exception as exc:  # noqa: BLE001 - Hydra's composition decides (and reports) this job
            log.debug("plan: fast composition of %s failed (%s): composed by Hydra", " ".join(overrides), exc)
            if shape not in self._checked:
                self._checked[shape] = False
            return self.hydra(overrides)
        if shape not in self._checked:
            reference = self.hydra(overrides)
            try:
                self._checked[shape] = same(cfg, reference)
            except Exception:  # noqa: BLE001 - e.g. the run dir does not resolve: the reference raises it in the plan
                self._checked[shape] = False
            if not self._checked[shape]:
                log.debug("plan: fast composition of %s differs from Hydra's: jobs of this structure composed by "
                          "Hydra", " ".join(overrides))
            return reference
        self.fast += 1
        return cfg

    def base(self, structural: tuple[str, ...]) -> DictConfig:
        """The config of a set of structural overrides (`split`'s, as written), composed by Hydra once."""
        if structural not in self._bases:
            self._bases[structural] = self.hydra(structural)
        return self._bases[structural]

    def _apply(self, base: DictConfig, parsed: list[Override], values: list[Override]) -> DictConfig:
        """Hydra's steps after the defaults are composed, for the values: the same update, and its own node's
        record of the job's overrides."""
        cfg = copy.deepcopy(base)
        for o in values:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        if OmegaConf.select(cfg, "hydra.overrides.task") is not None:  # Hydra's record of the job's own overrides
            from hydra._internal.config_loader_impl import get_overrides_dirname

            task = [o for o in parsed if not o.is_hydra_override()]
            cfg.hydra.overrides.task = [str(o.input_line) for o in task]
            dirname = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=task, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
        OmegaConf.copy_cache(from_config=base, to_config=cfg)
        return cfg


def _sweep_dir(cfg: DictConfig) -> tuple[str, str] | None:
    sweep = OmegaConf.select(cfg, "hydra.sweep")
    return None if sweep is None else (str(sweep.dir), str(sweep.subdir))


def same(fast: DictConfig, reference: DictConfig) -> bool:
    """Every key and value (types and order included: repr, not ==, so 0 and 0.0 differ), interpolations as written,
    and the run directory resolved."""
    return (repr(OmegaConf.to_container(fast, resolve=False)) == repr(OmegaConf.to_container(reference, resolve=False))
            and _sweep_dir(fast) == _sweep_dir(reference))
