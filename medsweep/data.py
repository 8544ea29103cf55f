"""Dataset of QA pairs for one run: load (medsweep/loaders/) -> clean -> deterministic train/eval split.

Every step that removes rows says how many in `stats`, which goes into the run record.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medsweep import loaders
from medsweep.errors import DataError

if TYPE_CHECKING:
    from medsweep.config import DataConfig

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


@dataclass
class Splits:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def question_key(question: str) -> str:
    """Normalised question text used for near-duplicate detection and leakage checks."""
    return " ".join(_NON_WORD.sub(" ", question.lower()).split())


def load_records(data_cfg: DataConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read the configured dataset into records {id, question, answer[, context, source, label]} with the
    registered loader: its ordinary parameters come from the data group, its keyword-only ones from data.options
    (the contract in medsweep/loaders/__init__.py)."""
    kind = data_cfg.loader
    opts = dict(data_cfg.options or {})
    if kind not in loaders.LOADERS:
        raise DataError(f"data.loader={kind!r} is unknown; allowed: {', '.join(loaders.LOADERS)}")
    loader = loaders.LOADERS[kind]
    fields = _given(**{name: _group_value(data_cfg, name) for name in loaders.data_params(loader)})
    return loader(**fields, **opts)


def _group_value(data_cfg: DataConfig, name: str) -> Any:
    """What the data group gives the loader parameter `name`: the same-named field (None when unset or absent, so
    the loader keeps its default), or for `clean` the group's cleaning (the mix cleans each part before its draw)."""
    if name == "clean":
        return lambda records: clean(records, data_cfg.max_question_words, data_cfg.max_answer_words)
    return getattr(data_cfg, name, None)


def _given(**kwargs: Any) -> dict[str, Any]:
    """Only the values that are set, so each loader keeps its own defaults (e.g. its hub name)."""
    return {k: v for k, v in kwargs.items() if v is not None}


def clean(records: list[dict[str, Any]], max_question_words: int, max_answer_words: int
          ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Strip text; drop empty, over-long and duplicate (normalised question) pairs, counting each."""
    kept, seen = [], set()
    counts = {"dropped_empty": 0, "dropped_too_long": 0, "dropped_duplicate": 0}
    for rec in records:
        rec = {**rec, "question": str(rec["question"]).strip(), "answer": str(rec["answer"]).strip()}
        key = question_key(rec["question"])
        if not key or not rec["answer"]:
            counts["dropped_empty"] += 1
        elif len(rec["question"].split()) > max_question_words or len(rec["answer"].split()) > max_answer_words:
            counts["dropped_too_long"] += 1
        elif key in seen:
            counts["dropped_duplicate"] += 1
        else:
            seen.add(key)
            kept.append(rec)
    return kept, counts


def split(records: list[dict[str, Any]], eval_size: int, seed: int, train_size: int | None = None) -> Splits:
    """Shuffle with `seed` and hold out `eval_size` pairs. Questions are unique after `clean`, so no
    question is in both splits."""
    if eval_size >= len(records):
        raise DataError(f"train.eval_split={eval_size} is invalid: the dataset has {len(records)} pairs after "
                        f"cleaning; hold out fewer than that")
    order = list(records)
    random.Random(seed).shuffle(order)
    held_out, train = order[:eval_size], order[eval_size:]
    if train_size is not None:
        train = train[:train_size]
    return Splits(train=train, eval=held_out)


def eval_file(data_cfg: DataConfig, eval_size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The first `eval_size` cleaned pairs of `data.eval_path` (columns question, answer, optional id, label, and
    context, used when the data config uses context): the same held-out questions whatever the training data."""
    assert data_cfg.eval_path, "build() reads an eval file only when data.eval_path is set"
    path = loaders.existing(data_cfg.eval_path)
    rows, columns = loaders.read_rows(path)
    records, stats = loaders.map_rows(
        rows, columns, str(path), id_col="id" if "id" in columns else None, id_prefix=f"{path.stem}-",
        context_col="context" if data_cfg.context_col and "context" in columns else None,
        label_col="label" if "label" in columns else None)
    cleaned, clean_stats = clean(records, data_cfg.max_question_words, data_cfg.max_answer_words)
    if not cleaned:
        raise DataError(f"data.eval_path={str(path)!r} has no usable pair ({stats}, {clean_stats})")
    return cleaned[:eval_size], {"path": str(path), "load": stats, **clean_stats}


def build(data_cfg: DataConfig, eval_size: int, train_size: int | None = None) -> Splits:
    """Load, clean, limit and split the configured dataset; stats hold every count for the record."""
    records, load_stats = load_records(data_cfg)
    cleaned, clean_stats = clean(records, data_cfg.max_question_words, data_cfg.max_answer_words)
    if not cleaned:
        source = f" ({data_cfg.path})" if data_cfg.path else ""
        raise DataError(f"dataset {data_cfg.name!r}{source} is empty after cleaning ({clean_stats}, loader: "
                        f"{load_stats})")
    if data_cfg.limit is not None:
        cleaned = cleaned[: data_cfg.limit]
    if getattr(data_cfg, "eval_path", None):  # fixed held-out file: train on everything else
        held, eval_stats = eval_file(data_cfg, eval_size)
        keys = {question_key(r["question"]) for r in held}
        train = [r for r in cleaned if question_key(r["question"]) not in keys]
        eval_stats["dropped_from_train"] = len(cleaned) - len(train)  # questions also in the eval file
        random.Random(data_cfg.split_seed).shuffle(train)
        splits = Splits(train=train[:train_size] if train_size is not None else train, eval=held)
        splits.stats = {"loaded": len(records), "load": load_stats, **clean_stats, "after_cleaning": len(cleaned),
                        "train": len(splits.train), "eval": len(splits.eval), "eval_file": eval_stats}
        return splits
    splits = split(cleaned, eval_size, seed=data_cfg.split_seed, train_size=train_size)
    splits.stats = {"loaded": len(records), "load": load_stats, **clean_stats, "after_cleaning": len(cleaned),
                    "train": len(splits.train), "eval": len(splits.eval)}
    return splits
