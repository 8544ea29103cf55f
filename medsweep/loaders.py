"""Load medical QA datasets into plain records.

Every loader has the form ``load_<name>(path, hub=..., **opts) -> (records, stats)``:

* ``records`` is a ``list[dict]`` with keys ``id``, ``question``, ``answer`` (all ``str``)
  and optionally ``context``, ``source``, ``label``. Values are only ``str()``-converted
  and stripped; cleaning, de-duplication and splitting happen elsewhere.
* ``stats`` counts what was seen: ``read`` (rows or QA pairs seen), ``kept`` and one
  ``skipped_<reason>`` entry per reason a row can be dropped, so that
  ``kept + sum(skipped_*) == read`` and nothing is lost silently.

``path`` (a local file or folder) wins over ``hub`` (a Hugging Face dataset id).
Every data problem raises :class:`~medsweep.errors.DataError` with a one-line message
that names the file (and the 1-based line for JSONL).
"""

from __future__ import annotations

import ast
import json
import math
import random
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medsweep.errors import ConfigError, DataError

Record = dict[str, str]
Stats = dict[str, int]
Row = dict[str, Any]

TABLE_EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")

MEDQUAD_HUB = "keivalya/MedQuad-MedicalQnADataset"
PUBMEDQA_HUB = "qiaojin/PubMedQA"
WIKIDOC_HUB = "medalpaca/medical_meadow_wikidoc"
MEDCHAT_HUB = "ngram/medchat-qa"
MEDAL_HUB = "McGill-NLP/medal"


# --------------------------------------------------------------------------- helpers


def _one_line(exc: BaseException | str) -> str:
    """An exception message squeezed onto one line."""
    return " ".join(str(exc).split())


def _text(value: Any) -> str:
    """``str()`` and ``strip()`` a raw value; None and NaN become ``""``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _existing(path: str | Path) -> Path:
    """``path`` as a Path, or DataError if it does not exist."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found")
    return p


def _new_stats(*reasons: str) -> Stats:
    """A stats dict with ``read``, ``kept`` and a zero ``skipped_<reason>`` per reason."""
    stats = {"read": 0, "kept": 0}
    stats.update({f"skipped_{reason}": 0 for reason in reasons})
    return stats


# --------------------------------------------------------------------------- raw rows


def _read_jsonl(path: Path, max_rows: int | None = None) -> list[Row]:
    """Parse a JSONL file line by line; blank lines are skipped."""
    rows: list[Row] = []
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if max_rows is not None and len(rows) >= max_rows:
                    break
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(
                        f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
                    )
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({_one_line(exc)})") from None
    return rows


def _load_json(path: Path) -> Any:
    """Parse a whole JSON file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({_one_line(exc)})") from None


def _read_json(path: Path) -> list[Row]:
    """A JSON file holding a list of objects, or ``{"data": [...]}``."""
    data = _load_json(path)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a JSON list of objects or {{"data": [...]}}')
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {i} is not a JSON object ({type(row).__name__})")
    return data


def _read_pandas(path: Path, max_rows: int | None = None) -> tuple[list[Row], list[str]]:
    """CSV/TSV (every cell as text, "NA" kept as text) or parquet, via pandas."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path)
            if max_rows is not None:
                df = df.head(max_rows)
        else:
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, nrows=max_rows)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: no rows") from None
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        raise DataError(f"{path}: cannot read {path.suffix} file ({_one_line(exc)})") from None
    df = df.astype(object).where(df.notna(), None)
    return df.to_dict("records"), [str(c) for c in df.columns]


def _read_rows(path: Path, max_rows: int | None = None) -> tuple[list[Row], list[str]]:
    """Raw rows and column names of a local table file, chosen by extension."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_EXTENSIONS:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; "
            f"allowed: {', '.join(TABLE_EXTENSIONS)}"
        )
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a {'/'.join(TABLE_EXTENSIONS)} file")
    if suffix in (".csv", ".tsv", ".parquet"):
        rows, columns = _read_pandas(path, max_rows)
    else:
        rows = _read_jsonl(path, max_rows) if suffix == ".jsonl" else _read_json(path)[:max_rows]
        columns = list(dict.fromkeys(key for row in rows for key in row))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows, columns


def _hub_rows(
    hub: str, hub_config: str | None = None, hub_split: str = "train"
) -> tuple[list[Row], list[str]]:
    """Rows and column names of a Hugging Face hub dataset split."""
    try:
        import datasets

        ds = datasets.load_dataset(hub, name=hub_config, split=hub_split)
        return [dict(row) for row in ds], list(ds.column_names)
    except Exception as exc:
        raise DataError(
            f"cannot load hub dataset {hub!r}: {_one_line(exc)}; set data.path to a local copy "
            "(offline: HF_DATASETS_OFFLINE=1)"
        ) from None


def _source_rows(
    path: str | None, hub: str | None, hub_config: str | None, hub_split: str
) -> tuple[list[Row], list[str], str, str]:
    """Rows, columns, a label for messages and an id prefix, from ``path`` or ``hub``.

    The id prefix is ``"<file stem>-"`` for files and empty for the hub (ids are row indices).
    """
    if path is not None:
        p = _existing(path)
        rows, columns = _read_rows(p)
        return rows, columns, str(p), f"{p.stem}-"
    if hub is not None:
        rows, columns = _hub_rows(hub, hub_config, hub_split)
        return rows, columns, f"hub dataset {hub!r}", ""
    raise DataError("no data source: set data.path (a local file) or data.hub (a hub dataset id)")


# --------------------------------------------------------------------------- mapping


def _require_columns(where: str, columns: list[str], wanted: list[str | None]) -> None:
    """DataError naming every wanted column that the data lacks."""
    missing = [c for c in dict.fromkeys(wanted) if c is not None and c not in columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(missing)}; "
            f"available columns: {', '.join(columns) or '(none)'}"
        )


def map_rows(
    rows: list[Row],
    columns: list[str],
    where: str,
    *,
    question_col: str = "question",
    answer_col: str = "answer",
    id_col: str | None = None,
    context_col: str | None = None,
    label_col: str | None = None,
    source: str | None = None,
    source_col: str | None = None,
    id_prefix: str = "",
) -> tuple[list[Record], Stats]:
    """Map raw rows (from a file or the hub) to records, skipping and counting empty ones.

    A row whose question is empty is counted as ``skipped_empty_question`` (even if its
    answer is empty too); otherwise an empty answer counts as ``skipped_empty_answer``.
    The id is the ``id_col`` value, else ``f"{id_prefix}{row index}"`` (0-based).
    """
    wanted = [question_col, answer_col, id_col, context_col, label_col, source_col]
    _require_columns(where, columns, wanted)
    records: list[Record] = []
    stats = _new_stats("empty_question", "empty_answer")
    for index, row in enumerate(rows):
        stats["read"] += 1
        question, answer = _text(row.get(question_col)), _text(row.get(answer_col))
        if not question:
            stats["skipped_empty_question"] += 1
            continue
        if not answer:
            stats["skipped_empty_answer"] += 1
            continue
        record = {
            "id": (_text(row.get(id_col)) if id_col else "") or f"{id_prefix}{index}",
            "question": question,
            "answer": answer,
        }
        if context_col:
            record["context"] = _text(row.get(context_col))
        if label_col:
            record["label"] = _text(row.get(label_col))
        row_source = _text(row.get(source_col)) if source_col else ""
        if row_source or source:
            record["source"] = row_source or str(source)
        records.append(record)
    stats["kept"] = len(records)
    return records, stats


# --------------------------------------------------------------------------- generic table


def read_table(
    path: str | Path,
    question_col: str = "question",
    answer_col: str = "answer",
    id_col: str | None = None,
    context_col: str | None = None,
    label_col: str | None = None,
    source: str | None = None,
    source_col: str | None = None,
) -> tuple[list[Record], Stats]:
    """Load a local ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet`` QA table.

    ``source`` is a fixed source for every record; ``source_col`` takes it from a column
    (falling back to ``source`` where that cell is empty).
    """
    p = _existing(path)
    rows, columns = _read_rows(p)
    return map_rows(
        rows, columns, str(p),
        question_col=question_col, answer_col=answer_col, id_col=id_col,
        context_col=context_col, label_col=label_col, source=source, source_col=source_col,
        id_prefix=f"{p.stem}-",
    )


def load_local(
    path: str | None,
    hub: str | None = None,
    *,
    question_col: str = "question",
    answer_col: str = "answer",
    id_col: str | None = None,
    context_col: str | None = None,
    label_col: str | None = None,
    source: str | None = None,
    source_col: str | None = None,
    hub_config: str | None = None,
    hub_split: str = "train",
) -> tuple[list[Record], Stats]:
    """Any QA table with named columns, from a local file (:func:`read_table`) or the hub."""
    rows, columns, where, prefix = _source_rows(path, hub, hub_config, hub_split)
    return map_rows(
        rows, columns, where,
        question_col=question_col, answer_col=answer_col, id_col=id_col,
        context_col=context_col, label_col=label_col, source=source, source_col=source_col,
        id_prefix=prefix,
    )


# --------------------------------------------------------------------------- MedQuAD


def _parse_xml(file: Path) -> ET.Element:
    """Parse a local XML file, refusing DOCTYPE/ENTITY declarations (entity expansion)."""
    raw = file.read_bytes()
    if b"<!ENTITY" in raw or b"<!DOCTYPE" in raw:
        raise DataError(f"{file}: DOCTYPE/ENTITY declarations are not allowed in XML input")
    try:
        return ET.fromstring(raw)
    except ET.ParseError as exc:
        raise DataError(
            f"{file}: not a MedQuAD document (XML parse error: {_one_line(exc)})"
        ) from None


def _element_text(element: ET.Element | None) -> str:
    """All text inside an element, stripped; ``""`` when the element is absent."""
    return "".join(element.itertext()).strip() if element is not None else ""


def _medquad_document(file: Path, collection: str, stats: Stats) -> list[Record]:
    """The QA pairs of one MedQuAD XML file; empty ones are skipped and counted in ``stats``.

    The id is ``"<collection>/<qid>"`` (qid falls back to ``<docid>_<pid>``): bare qids
    repeat across collections, so the collection keeps ids unique.
    """
    root = _parse_xml(file)
    pairs = root.find("QAPairs")
    if root.tag != "Document" or pairs is None:
        raise DataError(
            f"{file}: not a MedQuAD document "
            f"(root <{root.tag}>, expected <Document> with <QAPairs>)"
        )
    doc_id = root.get("id") or file.stem
    records: list[Record] = []
    for pair in pairs.iter("QAPair"):
        stats["read"] += 1
        q_el = pair.find("Question")
        question, answer = _element_text(q_el), _element_text(pair.find("Answer"))
        if not question:
            stats["skipped_empty_question"] += 1
        elif not answer:
            stats["skipped_empty_answer"] += 1
        else:
            qid = (q_el.get("qid") if q_el is not None else None) or f"{doc_id}_{pair.get('pid')}"
            records.append({
                "id": f"{collection}/{qid}",
                "question": question,
                "answer": answer,
                "source": collection,
            })
    return records


def _medquad_xml(path: Path) -> tuple[list[Record], Stats]:
    """A MedQuAD XML tree (``<collection>/*.xml``, searched recursively) or one XML file."""
    files = [path] if path.is_file() else sorted(path.rglob("*.xml"))
    if not files:
        raise DataError(f"{path}: no *.xml files found (expected the MedQuAD XML tree)")
    records: list[Record] = []
    stats = _new_stats("empty_question", "empty_answer")
    for file in files:
        records.extend(_medquad_document(file, file.parent.name, stats))
    stats["files"] = len(files)
    stats["kept"] = len(records)
    return records, stats


def load_medquad(
    path: str | None,
    hub: str | None = MEDQUAD_HUB,
    *,
    hub_config: str | None = None,
    hub_split: str = "train",
) -> tuple[list[Record], Stats]:
    """MedQuAD: the original XML tree (a folder, or one ``.xml`` file), a flattened table
    (``id, question, answer, source, ...``), or the hub copy (``qtype, Question, Answer``).
    """
    if path is not None:
        p = _existing(path)
        if p.is_dir() or p.suffix.lower() == ".xml":
            return _medquad_xml(p)
        return read_table(p, id_col="id", source_col="source")
    rows, columns, where, prefix = _source_rows(None, hub, hub_config, hub_split)
    return map_rows(
        rows, columns, where, question_col="Question", answer_col="Answer", id_prefix=prefix
    )


# --------------------------------------------------------------------------- PubMedQA

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
            "context": " ".join(_text(c) for c in contexts),
            "answer": item.get("LONG_ANSWER"),
            "label": item.get("final_decision"),
        })
    columns = ["id", "question", "context", "answer", "label"]
    return map_rows(rows, columns, where, id_col="id", context_col="context", label_col="label")


def _pubmedqa_hub(rows: list[Row], columns: list[str], where: str) -> tuple[list[Record], Stats]:
    """Records from the hub copy: ``pubid, question, context`` (``{"contexts": [...]}``),
    ``long_answer, final_decision``.
    """
    _require_columns(where, columns, ["pubid", "context", "long_answer", "final_decision"])
    flat = []
    for row in rows:
        context = row.get("context")
        if isinstance(context, dict):
            context = " ".join(_text(c) for c in context.get("contexts") or [])
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
    marked = {_pmid(_text(r.get(id_col))) for r in rows if _text(r.get("split")) == "test"}
    return records, stats, marked


def _read_test_ids(test_ids_path: str | Path) -> set[str]:
    """Test ids: keys of a JSON object (``test_ground_truth.json``) or items of a JSON list."""
    p = _existing(test_ids_path)
    data = _load_json(p)
    if isinstance(data, (dict, list)):
        return {_text(k) for k in data}
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
    path: str | None,
    hub: str | None = PUBMEDQA_HUB,
    *,
    hub_config: str | None = "pqa_labeled",
    hub_split: str = "train",
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
        rows, columns, where, _ = _source_rows(None, hub, hub_config, hub_split)
        records, stats = _pubmedqa_hub(rows, columns, where)
    else:
        p = _existing(path)
        where = str(p)
        raw = _load_json(p) if p.suffix.lower() == ".json" else None
        if isinstance(raw, dict) and "data" not in raw:
            records, stats = _pubmedqa_original(raw, where)
        else:
            rows, columns = _read_rows(p)
            records, stats, marked = _pubmedqa_flat(rows, columns, where)
    if split == "all":
        return records, stats
    test_ids = _pubmedqa_test_ids(path, test_ids_path, marked, where)
    kept = [r for r in records if (r["id"] in test_ids) == (split == "test")]
    stats["skipped_other_split"] = len(records) - len(kept)
    stats["kept"] = len(kept)
    return kept, stats


# --------------------------------------------------------------------------- WikiDoc, MedChat


def load_wikidoc(
    path: str | None,
    hub: str | None = WIKIDOC_HUB,
    *,
    hub_config: str | None = None,
    hub_split: str = "train",
) -> tuple[list[Record], Stats]:
    """Medical Meadow WikiDoc ``{instruction, input, output}``: question = input (or the
    instruction when input is empty), answer = output, source = ``"wikidoc"``.
    """
    rows, columns, where, prefix = _source_rows(path, hub, hub_config, hub_split)
    _require_columns(where, columns, ["output"])
    if "input" not in columns and "instruction" not in columns:
        raise DataError(
            f"{where}: missing column(s) input, instruction (need one); "
            f"available columns: {', '.join(columns)}"
        )
    qa_rows = [
        {"question": row.get("input") if _text(row.get("input")) else row.get("instruction"),
         "answer": row.get("output")}
        for row in rows
    ]
    return map_rows(qa_rows, ["question", "answer"], where, source="wikidoc", id_prefix=prefix)


def load_medchat(
    path: str | None,
    hub: str | None = MEDCHAT_HUB,
    *,
    question_col: str = "question",
    answer_col: str = "answer",
    hub_config: str | None = None,
    hub_split: str = "train",
) -> tuple[list[Record], Stats]:
    """MedChat QA: ``question``/``answer`` columns, source = ``"medchat"``."""
    return load_local(
        path, hub, question_col=question_col, answer_col=answer_col, source="medchat",
        hub_config=hub_config, hub_split=hub_split,
    )


# --------------------------------------------------------------------------- MeDAL


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
    path: str | None,
    hub: str | None = MEDAL_HUB,
    *,
    hub_config: str | None = None,
    hub_split: str = "train",
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
        p = _existing(path)
        rows, columns = _read_rows(p, max_rows)
        where, prefix = str(p), f"{p.stem}-"
    else:
        hub_slice = hub_split if max_rows is None else f"{hub_split}[:{max_rows}]"
        rows, columns, where, prefix = _source_rows(None, hub, hub_config, hub_slice)
    rows = [{str(k).lower(): v for k, v in row.items()} for row in rows]
    columns = [str(c).lower() for c in columns]
    _require_columns(where, columns, ["text", "location", "label"])
    records: list[Record] = []
    stats = _new_stats("empty_text", "bad_location", "empty_answer")
    for index, row in enumerate(rows):
        stats["read"] += 1
        text = _text(row.get("text"))
        words = text.split()
        location = _word_index(row.get("location"))
        expansion = _text(_single(_literal(row.get("label"))))
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
            record_id = _text(row.get("abstract_id")) or f"{prefix}{index}"
            records.append({
                "id": record_id,
                "question": question,
                "answer": expansion,
                "context": text,
                "source": "medal",
            })
    stats["kept"] = len(records)
    return records, stats


# --------------------------------------------------------------------------- mixing and registry


def load_mix(parts: list[tuple[list[Record], int]], seed: int) -> list[Record]:
    """Draw ``n`` records without replacement from each ``(records, n)`` part, concatenate and
    shuffle, all with ``random.Random(seed)`` (same inputs and seed, same output).
    Records are copied, so the inputs are not aliased.
    """
    rng = random.Random(seed)
    mixed: list[Record] = []
    for index, (records, n) in enumerate(parts, start=1):
        if n < 0 or n > len(records):
            raise DataError(f"mix part {index}: asked for {n} records but it has {len(records)}")
        mixed.extend(dict(r) for r in rng.sample(records, n))
    rng.shuffle(mixed)
    return mixed


Loader = Callable[..., tuple[list[Record], Stats]]

LOADERS: dict[str, Loader] = {
    "local": load_local,
    "medquad": load_medquad,
    "pubmedqa": load_pubmedqa,
    "wikidoc": load_wikidoc,
    "medchat": load_medchat,
    "medal": load_medal,
}
