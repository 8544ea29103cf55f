"""PubMedQA (Jin et al., 2019), the expert-labelled PQA-L set: a question per PubMed abstract, answered
yes/no/maybe plus a long answer.

Reads the original ``ori_pqal.json`` (pmid -> ``{QUESTION, CONTEXTS, LONG_ANSWER, final_decision}``) with
``test_ground_truth.json`` for the official test ids, the flattened ``pubmedqa_pqal.jsonl`` (with a ``split``
column) or the hub copy (``qiaojin/PubMedQA``, config ``pqa_labeled``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsweep.errors import ConfigError, DataError
from medsweep.loaders.tables import (
    Record,
    Row,
    Stats,
    as_text,
    existing,
    load_json,
    map_rows,
    read_rows,
    require_columns,
    source_rows,
)

PUBMEDQA_HUB = "qiaojin/PubMedQA"
PUBMEDQA_SPLITS = ("all", "train", "test")


def _pubmedqa_original(data: dict[str, Any], where: str) -> tuple[list[Record], Stats]:
    """Records from the original ``ori_pqal.json`` (pmid -> {QUESTION, CONTEXTS, ...})."""
    rows = []
    for pmid, item in data.items():
        if not isinstance(item, dict):
            raise DataError(f"{where}: item {pmid!r} is not a JSON object")
        contexts = item.get("CONTEXTS") or []
        if isinstance(contexts, str):
            contexts = [contexts]
        rows.append({
            "id": pmid,
            "question": item.get("QUESTION"),
            "context": " ".join(as_text(c) for c in contexts),
            "answer": item.get("LONG_ANSWER"),
            "label": item.get("final_decision"),
        })
    columns = ["id", "question", "context", "answer", "label"]
    return map_rows(rows, columns, where, id_col="id", context_col="context", label_col="label")


def _pubmedqa_hub(rows: list[Row], columns: list[str], where: str) -> tuple[list[Record], Stats]:
    """Records from the hub copy: ``pubid, question, context`` (``{"contexts": [...]}``),
    ``long_answer, final_decision``.
    """
    require_columns(where, columns, ["pubid", "context", "long_answer", "final_decision"])
    flat = []
    for row in rows:
        context = row.get("context")
        if isinstance(context, dict):
            context = " ".join(as_text(c) for c in context.get("contexts") or [])
        flat.append({**row, "context": context})
    return map_rows(
        flat, columns, where, answer_col="long_answer", id_col="pubid",
        context_col="context", label_col="final_decision",
    )


def _pmid(value: str) -> str:
    """A PubMed id from a flattened id such as ``pubmedqa-21645374``."""
    return value.removeprefix("pubmedqa-")


def _pubmedqa_flat(
    rows: list[Row], columns: list[str], where: str
) -> tuple[list[Record], Stats, set[str] | None]:
    """Records from the flattened table (``id, question, context, answer, final_decision,
    split``), and the ids its ``split`` column marks ``test`` (None without that column).
    """
    id_col = "pmid" if "pmid" in columns else "id"
    records, stats = map_rows(
        rows, columns, where, id_col=id_col, context_col="context", label_col="final_decision"
    )
    for record in records:
        record["id"] = _pmid(record["id"])
    if "split" not in columns:
        return records, stats, None
    marked = {_pmid(as_text(r.get(id_col))) for r in rows if as_text(r.get("split")) == "test"}
    return records, stats, marked


def _read_test_ids(test_ids_path: str | Path) -> set[str]:
    """Test ids: keys of a JSON object (``test_ground_truth.json``) or items of a JSON list."""
    p = existing(test_ids_path)
    data = load_json(p)
    if isinstance(data, (dict, list)):
        return {as_text(k) for k in data}
    raise DataError(f"{p}: expected a JSON object or list of PubMedQA test ids")


def _pubmedqa_test_ids(
    path: str | None, test_ids_path: str | None, marked: set[str] | None, where: str
) -> set[str]:
    """The official test ids: ``test_ids_path``, else the flattened ``split`` column,
    else ``test_ground_truth.json`` next to ``path``.
    """
    if test_ids_path:
        return _read_test_ids(test_ids_path)
    if marked is not None:
        return marked
    if path is None:
        raise DataError(f"{where}: selecting a split of the hub copy needs test_ids_path")
    default = Path(path).parent / "test_ground_truth.json"
    if not default.exists():
        raise DataError(f"{path}: cannot select a split: {default} not found; set test_ids_path")
    return _read_test_ids(default)


def load_pubmedqa(
    path: str | None = None,
    hub: str | None = PUBMEDQA_HUB,
    hub_config: str | None = "pqa_labeled",
    hub_split: str = "train",
    *,
    split: str = "all",
    test_ids_path: str | None = None,
    decision_first: bool = False,
) -> tuple[list[Record], Stats]:
    """PubMedQA (PQA-L): ``question``, ``context`` (abstract parts joined by a space),
    ``answer`` (the long answer), ``label`` (yes/no/maybe), ``id`` (the PubMed id).

    Accepts the original ``ori_pqal.json``, the flattened ``pubmedqa_pqal.jsonl`` (ids such
    as ``pubmedqa-<pmid>`` become the bare pmid) or the hub copy. ``split="test"`` keeps the
    official 500 test ids, ``"train"`` the other items, ``"all"`` everything; dropped items
    are counted as ``skipped_other_split``. ``decision_first`` starts each answer with its
    decision (``"Yes. <long answer>"``), so a model trained on it answers yes/no/maybe first.
    """
    records, stats = _pubmedqa_split(path, hub, hub_config, hub_split, split, test_ids_path)
    if decision_first:
        for record in records:
            if record.get("label"):
                record["answer"] = f"{record['label'].capitalize()}. {record['answer']}"
    return records, stats


def _pubmedqa_split(
    path: str | None, hub: str | None, hub_config: str | None, hub_split: str, split: str,
    test_ids_path: str | None,
) -> tuple[list[Record], Stats]:
    if split not in PUBMEDQA_SPLITS:
        raise ConfigError(f"pubmedqa split: {split!r} is not one of {', '.join(PUBMEDQA_SPLITS)}")
    marked = None
    if path is None:
        rows, columns, where, _ = source_rows(None, hub, hub_config, hub_split)
        records, stats = _pubmedqa_hub(rows, columns, where)
    else:
        p = existing(path)
        where = str(p)
        raw = load_json(p) if p.suffix.lower() == ".json" else None
        if isinstance(raw, dict) and "data" not in raw:
            records, stats = _pubmedqa_original(raw, where)
        else:
            rows, columns = read_rows(p)
            records, stats, marked = _pubmedqa_flat(rows, columns, where)
    if split == "all":
        return records, stats
    test_ids = _pubmedqa_test_ids(path, test_ids_path, marked, where)
    kept = [r for r in records if (r["id"] in test_ids) == (split == "test")]
    stats["skipped_other_split"] = len(records) - len(kept)
    stats["kept"] = len(kept)
    return kept, stats
