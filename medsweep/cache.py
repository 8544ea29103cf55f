"""On-disk cache of tokenized training sets, shared by the jobs of a sweep.

Most axes of a sweep (LoRA rank / alpha / dropout, learning rate, seed, profile) leave the tokenized training
set unchanged, and tokenizing ~2,000 MedQuAD pairs takes ~1 s of every job's start-up. `tokenize_cached`
keys the result by everything that determines it: the records' text, the tokenizer (its full serialized
vocabulary and rules, special tokens, chat template), the prompt settings, max_seq_length and the version of
the tokenization code; a hit loads the Arrow files memory-mapped. Entries are written to a temporary
directory and renamed into place, so concurrent jobs never read a half-written entry (the first rename wins).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from medsweep.prompts import PromptStyle, tokenize

log = logging.getLogger(__name__)
VERSION = 1  # bump when prompts.tokenize changes what it produces


def tokenize_cached(records: list[dict[str, Any]], tokenizer, style: PromptStyle, max_seq_length: int,
                    cache_dir: str | os.PathLike | None):
    """prompts.tokenize's (dataset, stats), from `cache_dir`/tokenized when an entry for exactly these inputs is
    there, else computed and stored. `cache_dir=None` turns the cache off. stats["cache"]: hit | miss | off."""
    if cache_dir is None:
        dataset, stats = tokenize(records, tokenizer, style, max_seq_length)
        return dataset, {**stats, "cache": "off"}
    entry = Path(os.path.expanduser(str(cache_dir))) / "tokenized" / key(records, tokenizer, style, max_seq_length)
    hit = _load(entry)
    if hit is not None:
        return hit[0], {**hit[1], "cache": "hit"}
    dataset, stats = tokenize(records, tokenizer, style, max_seq_length)
    _store(entry, dataset, stats)
    return dataset, {**stats, "cache": "miss"}


def key(records: list[dict[str, Any]], tokenizer, style: PromptStyle, max_seq_length: int) -> str:
    digest = hashlib.sha256()
    parts = {
        "version": VERSION,
        "max_seq_length": max_seq_length,
        "prompt": [style.instruction, style.format, style.system_prompt],
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    digest.update(json.dumps(parts, sort_keys=True, default=str).encode())
    for rec in records:  # only what prompts.render reads
        digest.update(json.dumps([rec.get("question"), rec.get("context"), rec.get("answer")]).encode())
    return digest.hexdigest()[:32]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides what `tokenizer` makes of a text and of a chat: its class, special tokens,
    chat template and the whole serialized tokenizer (vocabulary, merges, normalizer, pre-tokenizer,
    post-processor). The tokenized-set cache and the baseline cache (baseline.py) key on it."""
    digest = hashlib.sha256()
    special = [type(tokenizer).__name__, tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token,
               tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token, tokenizer.pad_token_id,
               len(tokenizer)]
    digest.update(json.dumps(special, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    return digest.hexdigest()


def _load(entry: Path):
    if not (entry / "stats.json").is_file():
        return None
    from datasets import load_from_disk

    try:
        return load_from_disk(str(entry / "dataset")), json.loads((entry / "stats.json").read_text())
    except Exception as exc:  # a damaged entry is recomputed (and replaced below), never fatal
        log.warning("tokenized cache entry %s unreadable (%s); tokenizing again", entry, exc)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def _store(entry: Path, dataset, stats: dict[str, Any]) -> None:
    tmp = entry.parent / f".{entry.name}.{os.getpid()}.tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        dataset.save_to_disk(str(tmp / "dataset"))
        (tmp / "stats.json").write_text(json.dumps(stats))  # last: its presence marks a complete entry
        os.replace(tmp, entry)
    except OSError as exc:  # read-only or full cache, or another job renamed its copy first: not fatal
        if not (entry / "stats.json").is_file():
            log.warning("could not cache the tokenized training set in %s: %s", entry, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
