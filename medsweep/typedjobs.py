"""A sweep plan's jobs as the schema's dataclasses, without a DictConfig per job.

compose.py gives each job a DictConfig (Hydra once per structure, the values on a copy), but checking that config
(`config.typed`: merged onto the schema, resolved, made into dataclasses) and resolving its run directory (the run-id
hash of the whole resolved config) still cost more than everything else the plan does for a job. `TypedJobs` does
those once per structure: its config (compose.py's base) as a RunConfig, the resolved configuration the run id
hashes (`record.run_config`), and what only a composed config can say (`checks.check_inputs`: interpolations, unread
keys). Per job, each value is converted by OmegaConf with the update Hydra makes (`OmegaConf.update(..., merge=True)`,
on a copy of the value's group, once per distinct value and structure), put in with `dataclasses.replace` and into a
copy of the resolved configuration, which is hashed as `record.run_id` hashes it.

A job takes this path when its values are plain (no interpolation, not `???`) fields of the schema (of RunConfig or
of one of its groups; not a mapping, nor data.loader, which decides which data.options the inputs' check accepts), no
interpolation of its structure reads one of them (the structure's RunConfig holds what they resolved to there), and
the sweep's run directory is made of top-level keys and the run id (conf/config.yaml's). Safety net, as compose.py's:
the first such job of every shape (the structure and the value keys) is also composed by Hydra and compared: the
dataclasses by repr (so 0 and 0.0 differ), the resolved configuration the run id hashes, the inputs' check and the
run directory. A difference, or an error on this path, sends that shape's jobs to compose.py.
MEDSWEEP_PLAN_CACHE=0 turns both caches off.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, grammar_parser
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
from omegaconf.nodes import ValueNode

from medsweep import checks, compose, config, fit, record

log = logging.getLogger("medsweep.typedjobs")

PURE_RESOLVERS = {"oc.env", "oc.decode"}  # read nothing of the config: the same for every job of a structure
_FIELDS = {f.name for f in dataclasses.fields(config.RunConfig)}
_GROUPS = {name: hint for name, hint in typing.get_type_hints(config.RunConfig).items()
           if dataclasses.is_dataclass(hint)}
_DIR_PART = re.compile(r"\$\{(run_id:|[A-Za-z_]\w*)\}")


@dataclass
class JobConfig:
    """One job of a plan: its config, composed (`cfg`, checked whole) or built by the fast path (`run`, its
    structure's inputs checked once for all its jobs), and its run directory."""

    cfg: DictConfig | None = None
    run: config.RunConfig | None = None
    resolved: dict[str, Any] | None = None  # the fast path's record.run_config, for its safety net
    dir: str | None = None  # the fast path's run directory; a composed config's is resolved when first asked

    @property
    def run_dir(self) -> str:
        """hydra.sweep.dir / hydra.sweep.subdir (the run id)."""
        if self.dir is None:
            assert self.cfg is not None
            self.dir = str(Path(str(self.cfg.hydra.sweep.dir)) / str(self.cfg.hydra.sweep.subdir))
        return self.dir

    def check(self) -> tuple[config.RunConfig, fit.Fit]:
        """checks.checked: the validated config and its fit; ConfigError naming the key on an invalid value."""
        cfg = self.cfg if self.cfg is not None else self.run
        assert cfg is not None
        return checks.checked(cfg)

    def run_config(self) -> dict[str, Any]:
        """record.run_config of the job (the fast path's is at hand)."""
        if self.resolved is not None:
            return self.resolved
        assert self.cfg is not None
        return record.run_config(self.cfg)

    def axes(self) -> dict[str, Any]:
        """record.axes of a job that failed its check: what can be read of it, {} if nothing."""
        try:
            return record.axes(self.run if self.run is not None else self.cfg)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - an invalid config may not resolve: the row names the reason instead
            return {}


def composed(cfg: DictConfig) -> JobConfig:
    return JobConfig(cfg=cfg)


@dataclass
class _Structure:
    run: config.RunConfig  # the structure's config as dataclasses
    resolved: dict[str, Any]  # record.run_config of it
    interpolations: dict[str, set[str]]  # every interpolation's key and the absolute keys it reads
    # hydra.sweep.dir and .subdir as parts: ("", text) | ("key", a top-level key) | ("run_id", "")
    sweep_dir: list[tuple[str, str]]
    subdir: list[tuple[str, str]]

    def run_dir(self, resolved: dict[str, Any]) -> str:
        def render(parts: list[tuple[str, str]]) -> str:
            return "".join(text if kind == "" else record.run_id_of(resolved) if kind == "run_id"
                           else str(resolved[text]) for kind, text in parts)

        return str(Path(render(self.sweep_dir)) / render(self.subdir))


class TypedJobs:
    """`job(overrides)`: the job's JobConfig, from the fast path when it applies, else from `configs` (compose.py)."""

    def __init__(self, configs: compose.ComposeCache) -> None:
        self.configs = configs
        self._structures: dict[tuple[str, ...], _Structure | None] = {}
        self._values: dict[tuple[tuple[str, ...], str], tuple[Any, Any]] = {}
        self._checked: dict[tuple[Any, ...], bool] = {}  # shape -> the fast path gives Hydra's config
        self._stale: dict[tuple[Any, ...], bool] = {}  # shape -> an interpolation of its structure reads a value
        self.fast = 0  # jobs built by this path

    def job(self, overrides: list[str]) -> JobConfig:
        if not compose.enabled():
            return composed(self.configs.compose(overrides))
        try:
            _, structural, values = self.configs.split(overrides)
        except Exception:  # noqa: BLE001 - compose.py (or Hydra) reports it
            return composed(self.configs.compose(overrides))
        if not values or not all(_plain(o) for o in values):
            return composed(self.configs.compose(overrides))
        base_key = tuple(str(o.input_line) for o in structural)
        shape = (base_key, tuple(o.key_or_group for o in values))
        if self._checked.get(shape) is False:
            return composed(self.configs.compose(overrides))
        try:
            structure = self._structure(base_key)
            if structure is not None and shape not in self._stale:
                self._stale[shape] = _stale(structure.interpolations, shape[1])
            if structure is None or self._stale[shape]:
                raise ValueError("a value the structure's interpolations read, or a structure this path cannot take")
            job = self._fast(base_key, structure, values)
        except Exception as exc:  # noqa: BLE001 - compose.py decides (and reports) this job
            log.debug("plan: typed path of %s not taken (%s): composed", " ".join(overrides), exc)
            self._checked.setdefault(shape, False)
            return composed(self.configs.compose(overrides))
        if shape not in self._checked:
            reference = composed(self.configs.hydra(overrides))
            self._checked[shape] = _same(job, reference)
            if not self._checked[shape]:
                log.debug("plan: typed config of %s differs from Hydra's: jobs of this shape composed",
                          " ".join(overrides))
            return reference
        self.fast += 1
        return job

    def _structure(self, base_key: tuple[str, ...]) -> _Structure | None:
        if base_key not in self._structures:
            self._structures[base_key] = None
            base = self.configs.base(base_key)
            checks.check_inputs(base)  # a structure whose inputs fail goes to compose.py, which names the key per job
            written = OmegaConf.to_container(base, resolve=False)
            assert isinstance(written, dict)
            sweep = written.pop("hydra")["sweep"]
            found: dict[str, set[str] | None] = {}
            _interpolations(written, "", found)
            parts = [_dir_parts(sweep.get("dir")), _dir_parts(sweep.get("subdir"))]
            if any(reads is None for reads in found.values()) or None in parts:
                log.debug("plan: structure %s: an interpolation the typed path cannot follow", " ".join(base_key))
                return None
            self._structures[base_key] = _Structure(config.typed(base), record.run_config(base),
                                                    typing.cast(dict[str, set[str]], found),
                                                    *typing.cast(list[list[tuple[str, str]]], parts))
        return self._structures[base_key]

    def _value(self, base_key: tuple[str, ...], o: Override) -> tuple[Any, Any]:
        """The value as the schema's dataclass holds it and as its resolved container does."""
        cache_key = (base_key, str(o.input_line))
        if cache_key not in self._values:
            group, _, name = o.key_or_group.rpartition(".")
            schema = _GROUPS[group] if group else config.RunConfig
            hint = typing.get_type_hints(schema)[name]
            if dataclasses.is_dataclass(hint) or typing.get_origin(hint) is dict or hint is dict \
                    or (group == "data" and name == "loader"):
                raise ValueError(f"{o.key_or_group}: a mapping, or a key the inputs' check reads")
            base = self.configs.base(base_key)
            scratch = copy.deepcopy(base[group] if group else base)  # a group's copy: its nodes keep their types
            OmegaConf.update(scratch, name, o.value(), merge=True)
            node = scratch._get_node(name)
            if isinstance(node, ValueNode) or node is None or node._is_none():
                value = None if node is None else node._value()
                self._values[cache_key] = (value, value)
            else:
                plain = OmegaConf.to_container(node, resolve=True)
                self._values[cache_key] = (plain, copy.deepcopy(plain))
        return self._values[cache_key]

    def _fast(self, base_key: tuple[str, ...], structure: _Structure, values: list[Override]) -> JobConfig:
        top: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        resolved = dict(structure.resolved)
        for o in values:
            group, _, name = o.key_or_group.rpartition(".")
            if (group and group not in _GROUPS) or (not group and (name not in _FIELDS or name in _GROUPS)):
                raise ValueError(f"{o.key_or_group}: not a field of the schema's groups")
            typed_value, plain = self._value(base_key, o)
            if group:
                if group not in groups:
                    groups[group] = {}
                    resolved[group] = dict(resolved[group])
                groups[group][name] = typed_value
                resolved[group][name] = plain
            else:
                top[name] = typed_value
                resolved[name] = plain
        run = dataclasses.replace(structure.run, **top, **{
            group: dataclasses.replace(getattr(structure.run, group), **fields) for group, fields in groups.items()})
        return JobConfig(run=run, resolved=resolved, dir=structure.run_dir(resolved))


def _same(fast: JobConfig, reference: JobConfig) -> bool:
    """The fast job's config is Hydra's: dataclasses (repr: types too), run-id input, inputs' check, run directory."""
    assert reference.cfg is not None
    try:
        checks.check_inputs(reference.cfg)
        return (fast.run_dir == reference.run_dir and repr(fast.run) == repr(config.typed(reference.cfg))
                and repr(fast.resolved) == repr(record.run_config(reference.cfg)))
    except Exception:  # noqa: BLE001 - Hydra's config fails where the fast one did not: not the same
        return False


def _plain(o: Override) -> bool:
    """A value the fast path can take as written: no interpolation in it, not MISSING."""
    def plain(v: Any) -> bool:
        if isinstance(v, str):
            return "${" not in v and v != "???"
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return not isinstance(v, dict)

    try:
        return plain(o.value())
    except Exception:  # noqa: BLE001 - a value that does not parse: Hydra's to report
        return False


def _interpolations(node: Any, key: str, found: dict[str, set[str] | None]) -> None:
    """Every interpolation under `node` (a container as written) by its full key, with the keys it reads (None:
    it may read anything, e.g. a resolver that takes the root)."""
    if isinstance(node, dict):
        for k, v in node.items():
            _interpolations(v, f"{key}.{k}" if key else str(k), found)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _interpolations(v, f"{key}.{i}", found)
    elif isinstance(node, str) and "${" in node:
        found[key] = _reads(node, key)


def _reads(text: str, key: str) -> set[str] | None:
    try:
        tree = grammar_parser.parse(text)
    except Exception:  # noqa: BLE001 - OmegaConf reports it where it resolves; here: not followed
        return None
    reads: set[str] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            if node.resolverName().getText() not in PURE_RESOLVERS:
                return None
        elif isinstance(node, OmegaConfGrammarParser.InterpolationNodeContext):
            ref = node.getText()[2:-1]
            if "${" in ref or "[" in ref:
                return None
            dots = len(ref) - len(ref.lstrip("."))
            parent = key.split(".")[:-1]
            if dots - 1 > len(parent):
                return None
            reads.add(".".join([*parent[:len(parent) - dots + 1], ref[dots:]]) if dots else ref)
        stack.extend(getattr(node, "children", None) or ())
    return reads


def _stale(interpolations: dict[str, set[str]], values: tuple[str, ...]) -> bool:
    """Whether an interpolation the values do not replace reads one of them, directly or through another."""
    changed = set(values)
    pending = dict(interpolations)
    grew = True
    while grew:
        grew = False
        for key, reads in list(pending.items()):
            if any(compose.overlaps(r, c) for r in reads for c in changed):
                changed.add(key)
                del pending[key]
                grew = True
    return any(not any(k == v or k.startswith(v + ".") for v in values) for k in changed - set(values))


def _dir_parts(text: Any) -> list[tuple[str, str]] | None:
    """hydra.sweep.dir / .subdir as literal text, top-level keys and the run id; None if it holds anything else."""
    if not isinstance(text, str):
        return None
    parts: list[tuple[str, str]] = []
    at = 0
    for m in _DIR_PART.finditer(text):
        parts.append(("", text[at:m.start()]))
        name = m.group(1)
        if name == "run_id:":
            parts.append(("run_id", ""))
        elif name in _FIELDS and name not in _GROUPS:
            parts.append(("key", name))
        else:
            return None
        at = m.end()
    parts.append(("", text[at:]))
    if any(kind == "" and any(c in value for c in "$\\{}") for kind, value in parts):
        return None
    return [(kind, value) for kind, value in parts if kind or value]
