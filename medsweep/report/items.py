"""Per-item scores of runs, read from the prediction files a run writes (``predictions.jsonl`` for the fine-tuned
model, ``predictions_baseline.jsonl`` for the base model with ``eval.baseline=true``): one row per evaluation item
(its `scores`, and the judge's scores from its `judge` entry, medsweep/judge.py, graded answers only), keyed by its
identity (the item's id, or its question where the data has no ids), so that two runs are compared item by item only
when they answered the same items. The record's own ``per_example`` lists are not used: they are in evaluation order
without the items' identities.

A run's items are cached by file path, size and modification time: a report asks for the same runs from several
tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import pandas as pd

from medsweep import metrics as registry
from medsweep.errors import MedsweepError

PREDICTIONS = "predictions.jsonl"
BASELINE = "predictions_baseline.jsonl"
TEXT = ("question", "reference", "generated")
# Per-item scores whose mean over the items is the metric the record reports; sentence BLEU (the per-item "bleu")
# is not corpus BLEU, and decision macro-F1 is no mean, so neither ranks a table by a paired test.
JUDGED = tuple(m.name for m in registry.METRICS if m.kind == "judge" and m.per_example)  # judge_correct ...
TESTABLE = ("exact_match", "f1", "rouge1", "rouge2", "rougeL", "semantic", "decision_accuracy", *JUDGED)
SCORES = (*registry.SCORE_KEYS, "semantic")  # the per-item scores a prediction row may hold (semantic: eval.semantic)
ITEM_METRICS = (*SCORES, "decision_accuracy", *JUDGED)


class NoItems(MedsweepError):
    """Why per-item scores cannot be compared: an unreadable prediction file, different items."""


class NoPredictions(NoItems):
    """The run wrote no predictions (an old or hand-made record, or no baseline evaluated): nothing to compare,
    which is no fault of the data."""


def _key(row: dict) -> str:
    return str(row["id"]) if row.get("id") not in (None, "") else str(row.get("question"))


def _score_row(row, where: str) -> dict:
    if not isinstance(row, dict) or not isinstance(row.get("scores"), dict) or "question" not in row:
        raise NoItems(f"{where} is not a prediction row (question, generated, scores)")
    out = {k: row.get(k) for k in TEXT}
    for name in SCORES:
        value = row["scores"].get(name)
        out[name] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    judged = row["judge"] if isinstance(row.get("judge"), dict) else {}
    for name in JUDGED:  # an answer the judge could not grade (unparsed, error) has no score: NaN, as the mean skips it
        value = judged.get(name.removeprefix("judge_")) if judged.get("status") == "ok" else None
        out[name] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if row.get("label"):
        decision = registry.extract_decision(str(row.get("generated") or ""))
        out["decision_accuracy"] = float(decision == row["label"])
    return out


@lru_cache(maxsize=512)
def _read(path: str, size: int, mtime_ns: int) -> pd.DataFrame:
    lines = Path(path).read_text(encoding="utf-8").split("\n")  # not splitlines: answers may hold U+2028
    rows, keys = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise NoItems(f"{path} line {number} is not JSON ({e})") from e
        rows.append(_score_row(row, f"{path} line {number}"))
        keys.append(_key(row))
    if not rows:
        raise NoPredictions(f"{path} holds no predictions")
    frame = pd.DataFrame(rows, index=pd.Index(keys, name="item"))
    twice = frame.index[frame.index.duplicated()]
    if len(twice):
        raise NoItems(f"{path} lists item {twice[0]!r} more than once: items cannot be matched by identity")
    return frame


def read_items(run_dir, baseline: bool = False) -> pd.DataFrame:
    """One row per item of a run (its base model's with ``baseline``): question, reference, generated and the
    ``ITEM_METRICS`` it has; the index is the item's identity. NoItems says why there are none. Not to be
    modified: the frame is shared through the cache."""
    path = Path(run_dir) / (BASELINE if baseline else PREDICTIONS)
    try:
        stat = path.stat()
    except OSError:
        raise NoPredictions(f"{path} does not exist" + (" (eval.baseline=false?)" if baseline else "")) from None
    try:
        return _read(str(path), stat.st_size, stat.st_mtime_ns)
    except (OSError, UnicodeDecodeError) as e:
        raise NoItems(f"{path} is unreadable: {e}") from e


def _difference(a: pd.Index, b: pd.Index, what_a: str, what_b: str) -> str:
    only_a, only_b = a.difference(b), b.difference(a)
    parts = [f"{len(only)} only in {what} (e.g. {str(only[0])[:60]!r})"
             for only, what in ((only_a, what_a), (only_b, what_b)) if len(only)]
    return ", ".join(parts)


def items_of(run_dirs: Sequence, baseline: bool = False) -> pd.DataFrame:
    """The items of several runs of one configuration (its seeds): scores averaged per item, texts from the first
    run. NoItems when a run has none or the runs answered different items."""
    if not run_dirs:
        raise NoItems("no complete run")
    frames = [read_items(d, baseline) for d in run_dirs]
    first = frames[0]
    for d, frame in zip(run_dirs[1:], frames[1:], strict=True):
        if not first.index.sort_values().equals(frame.index.sort_values()):
            raise NoItems(f"{Path(run_dirs[0]).name} and {Path(d).name} were evaluated on different items: "
                          + _difference(first.index, frame.index, Path(run_dirs[0]).name, Path(d).name))
    if len(frames) == 1:
        return first
    scores = [c for c in first.columns if c not in TEXT]
    mean = pd.concat([f[scores] for f in frames]).groupby(level=0).mean()
    return pd.concat([first[list(TEXT)], mean.loc[first.index]], axis=1)


def matched(a: pd.DataFrame, b: pd.DataFrame, what_a: str = "A", what_b: str = "B"
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``a`` and ``b`` on the same items in the same order (sorted by identity, so that the sign vectors a test
    draws meet the items in an order that does not depend on the files); NoItems when the item sets differ."""
    if set(a.index) != set(b.index):
        raise NoItems(f"{what_a} and {what_b} were evaluated on different items: "
                      + _difference(a.index, b.index, what_a, what_b))
    order = a.index.sort_values()
    return a.loc[order], b.loc[order]
