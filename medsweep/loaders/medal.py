"""MeDAL (Wen et al., 2020): abbreviation disambiguation in PubMed abstracts, turned into QA.

Reads ``{abstract_id, text, location, label}`` rows from a local table (the Kaggle CSV uses upper-case
column names and list cells such as ``"[12]"``) or the hub copy (``McGill-NLP/medal``).
"""

from __future__ import annotations

import ast
from typing import Any

from medsweep.errors import ConfigError
from medsweep.loaders.tables import (
    Record,
    Stats,
    as_text,
    existing,
    new_stats,
    read_rows,
    require_columns,
    source_rows,
)

MEDAL_HUB = "McGill-NLP/medal"


def _literal(value: Any) -> Any:
    """A CSV cell such as ``"[12]"`` or ``"['a b']"`` as a Python value; other values unchanged."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return value
    return value


def _single(value: Any) -> Any:
    """The only element of a one-element list, the value itself if it is not a list, else None."""
    if isinstance(value, (list, tuple)):
        return value[0] if len(value) == 1 else None
    return value


def _word_index(value: Any) -> int | None:
    """A location as a non-negative int (from int, ``"12"``, ``"[12]"``, ``[12]``), else None."""
    value = _single(_literal(value))
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    return value if isinstance(value, int) and value >= 0 else None


def load_medal(
    path: str | None = None,
    hub: str | None = MEDAL_HUB,
    hub_config: str | None = None,
    hub_split: str = "train",
    *,
    max_rows: int | None = None,
) -> tuple[list[Record], Stats]:
    """MeDAL abbreviation disambiguation ``{abstract_id, text, location, label}`` as QA.

    The abbreviation is ``text.split()[location]``; the answer is its expansion (``label``),
    ``context`` is the abstract. Column names are matched case-insensitively (the Kaggle CSV
    uses ``ABSTRACT_ID, TEXT, LOCATION, LABEL``). ``location``/``label`` may be scalars or
    one-element lists (also as CSV text ``"[12]"``/``"['x']"``); a location that is not a
    single word index inside the text is skipped as ``skipped_bad_location``. ``max_rows``
    reads only the first rows.
    """
    if max_rows is not None and max_rows < 1:
        raise ConfigError(f"medal max_rows: {max_rows!r} must be a positive integer or None")
    if path is not None:
        p = existing(path)
        rows, columns = read_rows(p, max_rows)
        where, prefix = str(p), f"{p.stem}-"
    else:
        hub_slice = hub_split if max_rows is None else f"{hub_split}[:{max_rows}]"
        rows, columns, where, prefix = source_rows(None, hub, hub_config, hub_slice)
    rows = [{str(k).lower(): v for k, v in row.items()} for row in rows]
    columns = [str(c).lower() for c in columns]
    require_columns(where, columns, ["text", "location", "label"])
    records: list[Record] = []
    stats = new_stats("empty_text", "bad_location", "empty_answer")
    for index, row in enumerate(rows):
        stats["read"] += 1
        text = as_text(row.get("text"))
        words = text.split()
        location = _word_index(row.get("location"))
        expansion = as_text(_single(_literal(row.get("label"))))
        if not text:
            stats["skipped_empty_text"] += 1
        elif location is None or location >= len(words):
            stats["skipped_bad_location"] += 1
        elif not expansion:
            stats["skipped_empty_answer"] += 1
        else:
            question = (
                f'In the following abstract, what does the abbreviation "{words[location]}" '
                f"stand for?\n\n{text}"
            )
            record_id = as_text(row.get("abstract_id")) or f"{prefix}{index}"
            records.append({
                "id": record_id,
                "question": question,
                "answer": expansion,
                "context": text,
                "source": "medal",
            })
    stats["kept"] = len(records)
    return records, stats
