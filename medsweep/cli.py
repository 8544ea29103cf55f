"""The `medsweep` console script: a fast pre-flight check of the overrides, then the Hydra entrypoint.

Bad overrides (unknown config name, wrong type, value out of range, a model that does not fit the
profile) get one line on stderr and exit code 2 before Hydra creates any run directory and before
torch/transformers are even imported. `HYDRA_FULL_ERROR=1` shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra

from medsweep import CONF_DIR
from medsweep.errors import ConfigError

GROUPS = ("model", "lora", "data", "train", "eval", "profile", "logger", "site", "judge", "experiment")


def _options(group: str, search: tuple[Path, ...] = ()) -> list[str]:
    """The options of a config group in conf/ and in the directories the user added to Hydra's search path."""
    return sorted({p.stem for root in (CONF_DIR, *search) for p in (root / group).glob("*.yaml")})


SEARCHPATH = ("hydra.searchpath=", "+hydra.searchpath=", "++hydra.searchpath=")


def _search_dirs(overrides: list[str]) -> tuple[Path, ...] | None:
    """The directories of `hydra.searchpath=[file://...]`; None when it names a place that cannot be listed here
    (pkg://): then Hydra alone judges the group options."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    dirs: list[Path] = []
    for parsed in OverridesParser.create().parse_overrides(overrides):
        value = parsed.value()
        for entry in value if isinstance(value, list) else [value]:
            if not str(entry).startswith("file://"):
                return None
            dirs.append(Path(str(entry)[len("file://"):]))
    return tuple(dirs)


def _expand(overrides: list[str]) -> tuple[list[str], list[list[str]]]:
    """Plain overrides, and one list of single-value variants per sweep override (`k=a,b` or ranges)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed_all = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise ConfigError(f"cannot parse the overrides {' '.join(overrides)!r}: {_one_line(exc)}") from exc
    fixed, sweeps = [], []
    for text, parsed in zip(overrides, parsed_all, strict=True):
        if parsed.is_sweep_override():
            key = parsed.get_key_element()
            sweeps.append([f"{key}={v}" for v in parsed.sweep_string_iterator()])
        else:
            fixed.append(text)
    return fixed, sweeps


def _check_group_names(overrides: list[str], search: tuple[Path, ...] | None = ()) -> None:
    if search is None:
        return
    for text in overrides:
        key, _, value = text.lstrip("+~").partition("=")
        allowed = _options(key, search) if key in GROUPS else []
        if key in GROUPS and value not in allowed and not (key == "experiment" and value == "null"):
            raise ConfigError(f"{key}={value} is invalid: unknown {key}; allowed: {', '.join(allowed)}")


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from medsweep import config, record

    config.register_configs()
    record.register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_one_line(exc)) from exc


def _one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors span several lines; keep the key, the value and the reason."""
    from omegaconf.errors import ValidationError

    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    typed = next((c for c in chain if isinstance(c, ValidationError) and getattr(c, "full_key", None)), None)
    if typed is not None:
        reason = str(typed.msg).splitlines()[0] if getattr(typed, "msg", None) else str(typed).splitlines()[0]
        return f"{typed.full_key}={typed.value!r} is invalid: {reason}"
    parts: list[str] = []
    link: BaseException | None = exc
    while link is not None:
        first = next((line.strip() for line in str(link).splitlines() if line.strip()), "")
        if first and first not in parts:
            parts.append(first)
        link = link.__cause__ or link.__context__
    return ": ".join(parts)


def _refuse_secrets(overrides: list[str]) -> None:
    """A secret on the command line would be saved in clear text by Hydra (.hydra/overrides.yaml, its error line)
    and by submitit (every job's pickles and logs): refuse it before anything is written, without echoing it.
    Secrets come from the environment (HF_TOKEN, WANDB_API_KEY, OPENAI_API_KEY), or as `${oc.env:NAME}`."""
    from medsweep import record

    env_secrets = record.secret_values(overrides=False)
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if not sep or value in ("", "null") or value.startswith("${oc.env:"):
            continue
        if record.is_secret_key(key.rsplit(".", 1)[-1]):
            raise ConfigError(f"{key}=... is refused: secrets are not taken on the command line (Hydra and submitit "
                              f"would save them in files); export it and pass {key}='${{oc.env:NAME}}', or let "
                              f"medsweep read HF_TOKEN / WANDB_API_KEY / OPENAI_API_KEY from the environment")
        named = next((name for name, secret in env_secrets if secret in value), None)
        if named:
            raise ConfigError(f"{key}=... is refused: its value holds the value of ${named}; secrets are not taken "
                              f"on the command line")


def _check_output_root(root: Path) -> None:
    """The output root (or its nearest existing parent) is a directory this user can create files in; probed with
    a temporary directory that is removed at once, since os.access says yes to root on a read-only mount."""
    import tempfile

    existing = root.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a directory")
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"output_root={str(root)!r} is invalid: cannot write in {existing} ({reason})") from None


class _ComposeLoader:
    """The compose API as the sweep plan's config loader (medsweep/compose.py), for the pre-flight's variants."""

    def load_sweep_config(self, master: None, overrides: list[str]):
        from hydra import compose

        return compose("config", overrides=overrides, return_hydra_config=True)


def _check_variants(variants: list[list[str]]) -> None:
    """Each variant of a sweep composed and checked as the launcher's plan does it (medsweep/typedjobs.py: Hydra
    once per structure, the values typed into its dataclasses); a sweep's jobs are refused for their fit by the
    launcher (its table), not here."""
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from medsweep import config, record
    from medsweep.compose import ComposeCache
    from medsweep.typedjobs import TypedJobs

    config.register_configs()
    record.register_resolvers()
    typed = TypedJobs(ComposeCache(_ComposeLoader(), None))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for n, variant in enumerate(variants):
            try:
                job = typed.job(variant)
            except (HydraException, OmegaConfBaseException) as exc:
                raise ConfigError(_one_line(exc)) from exc
            if n == 0:
                composed = job.cfg if job.cfg is not None else job.run
                assert composed is not None
                _check_output_root(Path(str(composed.output_root)))
            job.check()


def preflight(args: list[str]) -> None:
    """Compose and validate every value of every override (one composition per sweep value, not per
    combination); for a single run, also the fit of the model on the profile."""
    from medsweep.checks import check

    overrides = [a for a in args if not a.startswith("-") and not a.startswith("hydra")]
    search = [a for a in args if a.startswith(SEARCHPATH)]  # the user's own config files: composed with them
    _refuse_secrets(overrides)
    fixed, sweeps = _expand(overrides)
    try:
        dirs = _search_dirs(search)
    except Exception as exc:  # noqa: BLE001 - Hydra's parse error, on one line
        raise ConfigError(f"cannot parse {' '.join(search)!r}: {_one_line(exc)}") from exc
    _check_group_names(fixed + [value for values in sweeps for value in values], dirs)
    if sweeps:
        # Every value of every sweep, each with the first value of the other sweeps (a sweep may supply a key
        # that the fixed overrides require, e.g. data=local with data.path=a.jsonl,b.jsonl).
        firsts = [values[0] for values in sweeps]
        _check_variants([search + fixed + firsts] + [search + fixed + firsts[:i] + [value] + firsts[i + 1:]
                                                     for i, values in enumerate(sweeps) for value in values[1:]])
        return
    cfg = _compose(search + fixed)
    _check_output_root(Path(str(cfg.output_root)))
    check(cfg, require_fit=True)


def _task(cfg) -> None:
    """Hydra's task function: one job. medsweep/run.py (torch, transformers, peft: seconds to import) is imported by
    the job that runs, not by a sweep that only plans and submits its jobs."""
    from medsweep import run

    run.task(cfg)


hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)


def main() -> None:
    args = sys.argv[1:]
    if "--plan" in args:  # shorthand for the plan=true override
        args = [a for a in args if a != "--plan"] + ["plan=true"]
        sys.argv = [sys.argv[0], *args]
    hydra_flags = [a for a in args if a.startswith("-") and a not in ("-m", "--multirun")]
    if not hydra_flags:  # --help, --cfg job, -cn ...: Hydra's own business
        try:
            preflight(args)
        except ConfigError as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"medsweep: error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
    from medsweep import config, record

    config.register_configs()  # the schemas and the run_id resolver, before Hydra composes
    record.register_resolvers()
    hydra_main()
