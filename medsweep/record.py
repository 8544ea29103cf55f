"""Run identity (directory name), atomic writes, secret redaction, environment info for the run record
(runrecord.py)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from medsweep.config import RunConfig

# Keys that do not change what a run computes: they never enter the run id, so a site override
# (longer time limit, other partition) or a new output root finds the same run directory.
NON_IDENTITY_KEYS = {
    "hydra",
    "logger",
    "judge",  # judges the answers after the run; medsweep-judge re-judges a run without retraining it
    "output_root",
    "sweep_name",
    "resume",
    "plan",
    "detach",
    "pack",  # how many runs share a process, not what a run is
    "pack_eval",  # how a pack generates its runs' answers (mixed.py), not what a run is
    "site",
    "model.cache_dir",
    "train.cache_tokenized",
    "eval.cache_baseline",
    "profile.time_limit_min",
    "profile.partition",
    "profile.memory_gb",
    "profile.constraint",
    "profile.dataloader_workers",
    "model.kv_width",  # architecture facts for the memory estimate only (the model's own config decides)
    "model.tie_word_embeddings",
}
# Keys added to the schema after runs were recorded, left out of the hash while at their default, and keys since
# removed, hashed at the one value they ever had: runs recorded before keep their ids (a re-run finds them).
ADDED_KEYS = {"profile.parallel": "auto", "profile.processes": 0, "train.fast_kernels": True, "eval.semantic": False}
REMOVED_KEYS = {"model.dtype": "auto"}

# A key is secret-looking when one of its _-. separated parts is one of these words (hf_token, api_key,
# WANDB_API_KEY, db.password), but not the tokenizer's special-token names or counts like max_new_tokens.
SECRET_KEY = re.compile(r"(^|[_.-])(api[_-]?key|apikey|token|secret|password|passwd|credentials?|auth|access[_-]?key)"
                        r"($|[_.-])", re.IGNORECASE)
NOT_SECRET_KEY = re.compile(r"^(bos|eos|pad|unk|sep|cls|mask)_token$", re.IGNORECASE)
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")
REDACTED = "***"


def _identity(cfg: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if dotted in NON_IDENTITY_KEYS or (dotted in ADDED_KEYS and value == ADDED_KEYS[dotted]):
            continue
        out[key] = _identity(value, dotted + ".") if isinstance(value, dict) else value
    for dotted, value in REMOVED_KEYS.items():
        group, _, key = dotted.rpartition(".")
        if group == prefix.rstrip(".") and key not in out:
            out[key] = value
    return out


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved configuration that its run id hashes (no NON_IDENTITY_KEYS)."""
    return _identity(cfg)


def run_config(root: DictConfig) -> dict[str, Any]:
    """The resolved configuration a run id is made from (Hydra's own node left out), as plain containers."""
    body = {k: root[k] for k in root if k != "hydra"}
    cfg = OmegaConf.to_container(OmegaConf.create(body), resolve=True)
    assert isinstance(cfg, dict)  # the container of a DictConfig
    return cast(dict[str, Any], cfg)


def run_id(root: DictConfig) -> str:
    """Readable name + 8-hex hash of the resolved configuration (minus NON_IDENTITY_KEYS)."""
    return run_id_of(run_config(root))


def run_id_of(cfg: dict[str, Any]) -> str:
    """`run_id` of a configuration already resolved by `run_config` (a sweep's plan builds it once per structure
    and puts each job's values in: medsweep/typedjobs.py)."""
    digest = hashlib.sha256(json.dumps(_identity(cfg), sort_keys=True, default=str).encode()).hexdigest()[:8]
    m, lo, t = cfg["model"], cfg["lora"], cfg["train"]
    readable = (
        f"{m['name']}_{cfg['data']['name']}_r{lo['r']}_a{lo['alpha']}_d{lo['dropout']}"
        f"_L{t['max_seq_length']}_s{t['seed']}_{cfg['profile']['name']}"
    )
    return f"{safe_name(readable)}-{digest}"


NAME_MAX = 120  # of the readable part; the hash after it keeps names that share a long prefix apart


def safe_name(text: str) -> str:
    """One directory name that stays where it is put: anything but letters, digits and . _ = + , - becomes _,
    no leading dot (so never `..`), at most NAME_MAX characters (file systems stop at 255 bytes)."""
    name = re.sub(r"[^A-Za-z0-9._=+,-]", "_", text).lstrip(".") or "_"
    return name[:NAME_MAX]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda *, _root_: run_id(_root_), use_cache=False)


def axes(cfg: DictConfig | RunConfig) -> dict[str, Any]:
    """The comparison axes of a run, as the report tables name them."""
    return {
        "model": cfg.model.name,
        "lora.r": cfg.lora.r,
        "lora.alpha": cfg.lora.alpha,
        "lora.dropout": cfg.lora.dropout,
        "train.max_seq_length": cfg.train.max_seq_length,
        "data": cfg.data.name,
        "profile": cfg.profile.name,
        "train.seed": cfg.train.seed,
        "train.lr": cfg.train.lr,
        "train.epochs": cfg.train.epochs,
        "model.load_in_4bit": str(cfg.model.load_in_4bit),
    }


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(SECRET_KEY.search(key)) and not NOT_SECRET_KEY.match(key)


_OVERRIDE_SECRETS: set[str] = set()  # values given on the command line for secret-looking keys


def secret_values(overrides: bool = True) -> list[tuple[str, str]]:
    """(name, value) of every secret this process knows: the well-known tokens, any environment variable whose
    name looks secret (MY_SERVICE_TOKEN), and values given for secret-looking keys in overrides."""
    found = [(k, v) for k in SECRET_ENV if len(v := os.environ.get(k, "")) >= 4]
    found += [(k, v) for k, v in os.environ.items() if k not in SECRET_ENV and is_secret_key(k) and len(v) >= 8]
    if overrides:
        found += [("override", v) for v in sorted(_OVERRIDE_SECRETS)]
    return found


def _values_under_secret_keys(obj: Any) -> list[str]:
    """String values held by secret-looking keys anywhere in obj (e.g. a site YAML's `api_key: ...`)."""
    if isinstance(obj, dict):
        found = [v for k, v in obj.items() if is_secret_key(k) and isinstance(v, str) and len(v) >= 4]
        return found + [s for v in obj.values() for s in _values_under_secret_keys(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _values_under_secret_keys(v)]
    return []


def redact(obj: Any, _secrets: list[str] | None = None) -> Any:
    """Replace the values of secret-looking keys, and any secret (of the environment, an override, or a value held
    by a secret-looking key elsewhere in obj) wherever it appears in text."""
    secrets = _secrets if _secrets is not None else \
        sorted({v for _, v in secret_values()} | set(_values_under_secret_keys(obj)), key=len, reverse=True)
    if isinstance(obj, dict):
        return {
            k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v, secrets))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, REDACTED)
    return obj


def redact_override(override: str) -> str:
    """`+data.options.hf_token=abc` -> `+data.options.hf_token=***`; env secret values are masked too."""
    key, sep, value = override.partition("=")
    if sep and is_secret_key(key.lstrip("+~").rsplit(".", 1)[-1]) and value not in ("", "null"):
        if len(value) >= 4:
            _OVERRIDE_SECRETS.add(value)  # also masked wherever it shows up later (override_dirname, argv)
        return f"{key}={REDACTED}"
    return redact(override)


def scrub_yaml_files(paths: list[Path]) -> None:
    """Rewrite Hydra's own saved configs (.hydra/*.yaml, multirun.yaml) with secrets redacted."""
    import yaml

    for path in paths:
        if not path.is_file():
            continue
        data = yaml.safe_load(path.read_text())
        if isinstance(data, list):  # overrides.yaml
            clean = [redact_override(o) if isinstance(o, str) else o for o in data]
        else:
            hydra_node = data.get("hydra", data) if isinstance(data, dict) else {}
            for key in ("task", "hydra"):  # first, so their secret values are masked everywhere below
                for override in (hydra_node.get("overrides") or {}).get(key) or []:
                    redact_override(override)
            clean = redact(data)
        if clean != data:
            atomic_write_text(path, yaml.safe_dump(clean, sort_keys=False))


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory + fsync + rename: readers see all or nothing."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """atomic_write_text for bytes (the report's PNG figures); the text writes come through here too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the record is as readable as the rest of the run
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """This process's umask, read without setting it (os.umask would change it for every thread meanwhile)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(redact(obj), indent=2, default=str, allow_nan=True) + "\n")


def atomic_write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(redact(r), ensure_ascii=False, default=str) + "\n" for r in rows))


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Git commit, package versions, host and device info for the record."""
    import torch

    versions: dict[str, str | None] = {}
    for pkg in ("medsweep", "torch", "transformers", "peft", "datasets", "hydra-core", "omegaconf",
                "submitit", "bitsandbytes", "sacrebleu", "rouge-score", "wandb", "pandas"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    device: dict[str, Any] = {"cuda": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads(),
              "cpu_bf16": bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())}
    if torch.cuda.is_available():
        device["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "packages": versions,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm": {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                                              "SLURM_JOB_PARTITION", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE",
                                              "SLURM_RESTART_COUNT", "SLURM_JOB_CPUS_PER_NODE")
                  if k in os.environ},
        "argv": [redact_override(a) for a in sys.argv],
    }
