"""The base model's evaluation, computed once per set of inputs and reused by every later job (eval.baseline).

A sweep's N jobs fine-tune N adapters on one base model and score them on the same held-out questions; the base
model's answers, scores and perplexity are the same in each. `cached_baseline` keys them by everything they depend
on (`inputs`: the model's identity, quantization and precision, the tokenizer, the questions' content, the prompt,
the settings of generation and perplexity, the library versions and the source of the evaluation code) and keeps
them under `<model.cache_dir>/baseline/<key>/`: metrics.json, predictions.jsonl and manifest.json (the inputs, the
run that computed the entry, and a sha256 of each file). A reused entry's latencies are the computing run's.

Concurrent jobs: one computes while the others wait on the entry's lock (flock on `.<key>.lock` beside it); the
entry is written to a temporary directory beside it and renamed into place, so no reader ever sees half of one
(without a working flock, e.g. on some NFS mounts, every job computes and the first rename wins). A reader checks
the manifest's checksums: a damaged or partial entry counts as missing, and is recomputed and replaced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medsweep import cache, evaluate, generation, hardware, kernels, metrics, models, prompts, record
from medsweep.hardware import Hardware
from medsweep.prompts import PromptStyle

if TYPE_CHECKING:
    from collections.abc import Iterator

    from medsweep.config import ModelConfig, RunConfig

log = logging.getLogger(__name__)

DIR = "baseline"  # under model.cache_dir
FILES = ("metrics.json", "predictions.jsonl")  # what an entry holds besides its manifest
MANIFEST = "manifest.json"  # written last
# The modules whose code computes the result: an edit to any of them invalidates every entry.
CODE = (evaluate, generation, metrics, prompts, kernels, models, hardware, cache)
# ModelConfig fields that do not change the base model's answers: where the cache lives, what the memory estimate
# and LoRA read; and load_in_4bit, whose outcome on this hardware (quantized or not) is in the key instead.
MODEL_NOT_IN_KEY = {"cache_dir", "lora_target_modules", "params_b", "hidden_size", "num_layers", "vocab_size",
                    "kv_width", "tie_word_embeddings", "context_length", "load_in_4bit"}
_FILE_HASH_LIMIT = 1 << 20  # model files up to this size are hashed whole; larger ones by size and mtime


@dataclass(frozen=True)
class BaselineSource:
    """Where a run's baseline came from (the record's `baseline_source`)."""

    reused: bool  # true: read from the cache entry; its latencies (seconds_per_answer ...) are `computed_by`'s
    entry: str | None  # the cache entry; None: not cached (eval.cache_baseline=false, or the cache unwritable)
    computed_by: str  # the run directory whose job computed the result
    computed_at: str
    seconds: float  # this run's time on the baseline stage: evaluating, or waiting for and reading the entry


def cached_baseline(model, tokenizer, records: list[dict[str, Any]], cfg: RunConfig, hw: Hardware, run_dir: Path
                    ) -> tuple[dict[str, float], list[dict[str, Any]], BaselineSource]:
    """evaluate.evaluate's (metrics, rows) of the base model, and where they came from: the cache entry for exactly
    these inputs when there is a sound one, else evaluated (and stored, when eval.cache_baseline)."""
    started = time.perf_counter()
    if not cfg.eval.cache_baseline:
        result, rows = _compute(model, tokenizer, records, cfg, hw)
        return result, rows, BaselineSource(False, None, str(run_dir), record.now(), time.perf_counter() - started)
    described = inputs(model, tokenizer, records, cfg, hw)
    key = digest(described)
    root = Path(os.path.expanduser(str(cfg.model.cache_dir))) / DIR
    entry = root / key
    found = _read(entry, key, len(records))
    if found is None:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("baseline: cannot create the cache %s (%s); evaluating without it", root, exc)
            result, rows = _compute(model, tokenizer, records, cfg, hw)
            return result, rows, BaselineSource(False, None, str(run_dir), record.now(),
                                                time.perf_counter() - started)
        with _locked(root / f".{key}.lock"):
            found = _read(entry, key, len(records))  # the job that held the lock may have just written it
            if found is None:
                result, rows = _compute(model, tokenizer, records, cfg, hw)
                computed_at = record.now()
                manifest = {"key": key, "computed_by": str(run_dir), "computed_at": computed_at, "inputs": described}
                stored = _store(entry, manifest, result, rows)
                return result, rows, BaselineSource(False, str(entry) if stored else None, str(run_dir),
                                                    computed_at, time.perf_counter() - started)
    manifest, result, rows = found
    log.info("baseline: reusing %s (computed by %s)", entry, manifest.get("computed_by"))
    return result, rows, BaselineSource(True, str(entry), str(manifest.get("computed_by")),
                                        str(manifest.get("computed_at")), time.perf_counter() - started)


def _compute(model, tokenizer, records, cfg: RunConfig, hw: Hardware):
    log.info("baseline: evaluating the base model on %d held-out questions", len(records))
    # The evaluation gets its own copy of the random state: a sampled baseline must not move the generator that
    # initializes LoRA next, or a run that reuses the baseline would train from another start than one computing it.
    with torch.random.fork_rng(devices=hw.gpus):
        return evaluate.evaluate(model, tokenizer, records, cfg, hw)


def inputs(model, tokenizer, records: list[dict[str, Any]], cfg: RunConfig, hw: Hardware) -> dict[str, Any]:
    """Everything the base model's evaluation depends on, as JSON: the key's input, kept in the entry's manifest."""
    sample = cfg.eval.decoding == "sample"
    settings = {k: v for k, v in asdict(cfg.eval).items() if k not in {"baseline", "every_epoch", "cache_baseline",
                                                                       "num_examples"}}
    if not sample:  # greedy decoding ignores them (generation.decoding)
        settings.pop("temperature")
        settings.pop("top_p")
    train: dict[str, Any] = {"fast_kernels": cfg.train.fast_kernels}  # evaluation's fast paths follow it
    if cfg.eval.perplexity:
        train["max_seq_length"] = cfg.train.max_seq_length  # the references are truncated to it
    if sample or cfg.model.source == "random":  # the sampling state / the random weights come from the seed
        train["seed"] = cfg.train.seed
    questions = hashlib.sha256(json.dumps(records, sort_keys=True, default=str, ensure_ascii=False).encode())
    return {
        "model": {k: v for k, v in asdict(cfg.model).items() if k not in MODEL_NOT_IN_KEY},
        "weights": weights_fingerprint(cfg.model, hw),
        "model_config": hashlib.sha256(model.config.to_json_string(use_diff=False).encode()).hexdigest(),
        "generation_config": (None if model.generation_config is None else
                              hashlib.sha256(model.generation_config.to_json_string(use_diff=False).encode())
                              .hexdigest()),
        "hardware": {"device": hw.device, "precision": hw.precision, "weight_dtype": str(hw.weight_dtype),
                     "gpu": torch.cuda.get_device_name(hw.local_rank) if hw.device == "cuda" else None,
                     "quantized_4bit": models.use_4bit(cfg.model, hw)},
        "tokenizer": cache.tokenizer_fingerprint(tokenizer),
        "questions": {"count": len(records), "sha256": questions.hexdigest()},
        "prompt": asdict(PromptStyle.of(cfg)),
        "eval": settings,
        "train": train,
        "versions": {pkg: _version(pkg) for pkg in ("torch", "transformers", "bitsandbytes")},
        "code": code_version(),
    }


def digest(described: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]


def code_version() -> str:
    """sha256 of the source of the modules that compute a baseline (CODE) and of this one."""
    hashed = hashlib.sha256()
    for path in sorted({str(m.__file__) for m in CODE} | {__file__}):
        hashed.update(Path(path).read_bytes())
    return hashed.hexdigest()


def weights_fingerprint(model_cfg: ModelConfig, hw: Hardware) -> Any:
    """What identifies the base weights beyond the config's names: the hub snapshot (commit) they were loaded from,
    the files of a local directory or of the embedded model's cache (name, size, mtime; small files by content);
    a random model is its config and seed (in `inputs`)."""
    if model_cfg.source == "random":
        return None
    if model_cfg.source == "embedded":
        return _directory(models.embedded_model_dir(model_cfg.cache_dir))
    repo = model_cfg.hub_id_4bit if models.use_4bit(model_cfg, hw) and model_cfg.hub_id_4bit else model_cfg.hub_id
    local = Path(os.path.expanduser(str(repo)))
    if local.is_dir():
        return _directory(local)
    from huggingface_hub import try_to_load_from_cache

    revision = None if repo != model_cfg.hub_id else model_cfg.revision
    found = try_to_load_from_cache(str(repo), "config.json", revision=revision)
    # snapshots/<commit>/config.json; not in the local cache: the names and revision alone
    return {"repo": repo, "commit": Path(found).parent.name if isinstance(found, str) else revision}


def _directory(path: Path) -> list[Any]:
    out: list[Any] = []
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        stat = file.stat()
        content = hashlib.sha256(file.read_bytes()).hexdigest() if stat.st_size <= _FILE_HASH_LIMIT else None
        out.append([str(file.relative_to(path)), stat.st_size, None if content else stat.st_mtime_ns, content])
    return out


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` for the block (waiting for another holder); a file system without
    working locks runs the block unlocked."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                log.info("baseline: another job is evaluating the base model on these inputs; waiting for it (%s)",
                         path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                log.warning("baseline: no lock on %s (%s); evaluating unlocked (the first complete entry wins)",
                            path, exc)
        yield
    finally:
        os.close(fd)  # releases the flock; the file stays (unlinking it would race a new holder)


def _read(entry: Path, key: str, n_records: int):
    """(manifest, metrics, rows) of a sound entry; None when there is none or it is damaged (logged)."""
    if not entry.exists():
        return None
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        bad = [name for name in FILES if _sha256(entry / name) != files[name]]
        if bad or manifest["key"] != key:
            raise ValueError(f"checksum mismatch: {', '.join(bad) or 'key'}")
        result = json.loads((entry / FILES[0]).read_text(encoding="utf-8"))
        rows = [json.loads(line) for line in (entry / FILES[1]).read_text(encoding="utf-8").splitlines()]
        if not isinstance(result, dict) or len(rows) != n_records:
            raise ValueError(f"{len(rows)} predictions for {n_records} questions")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("baseline: cache entry %s is damaged or incomplete (%s); evaluating again", entry, exc)
        return None
    return manifest, result, rows


def _store(entry: Path, manifest: dict[str, Any], result: dict[str, Any], rows: list[dict[str, Any]]) -> bool:
    """Write the entry beside its place and rename it there (replacing a damaged one); False if it could not be
    written (a read-only or full cache: not fatal)."""
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp"))
        # redacted as the run directory's copies are (record.atomic_write_jsonl): no secret reaches the cache either
        texts = {FILES[0]: json.dumps(result, indent=2, allow_nan=True) + "\n",
                 FILES[1]: "".join(json.dumps(record.redact(r), ensure_ascii=False, default=str) + "\n" for r in rows)}
        for name, text in texts.items():
            _write(tmp / name, text.encode("utf-8"))
        manifest = {**record.redact(manifest), "files": {name: _sha256(tmp / name) for name in FILES}}
        _write(tmp / MANIFEST, (json.dumps(manifest, indent=2, default=str) + "\n").encode("utf-8"))
        os.chmod(tmp, 0o777 & ~record._umask())  # mkdtemp makes 0700; the entry is for every job of the site
        if entry.exists():  # damaged (the caller read it): moved aside in one rename, then removed
            aside = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".damaged"))
            os.rename(entry, aside / "entry")
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            log.info("baseline: another job stored %s first; keeping its copy", entry)
        return True
    except OSError as exc:
        log.warning("baseline: could not store the base model's evaluation in %s: %s", entry, exc)
        return False
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
