"""The generic readers every loader builds on: local tables, hub splits and the bundled sample.

A local table is a ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet`` file (JSON as a list of objects or
``{"data": [...]}``); a hub split comes from ``datasets.load_dataset``. :func:`map_rows` turns raw rows into
records with counts, :func:`load_local` is the ``local`` loader (any table with named columns) and
:func:`load_sample` reads the bundled ``medsweep/assets/sample_medqa.jsonl``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from medsweep.errors import DataError

Record = dict[str, str]
Stats = dict[str, int]
Row = dict[str, Any]

TABLE_EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


# --------------------------------------------------------------------------- helpers


def one_line(exc: BaseException | str) -> str:
    """An exception message squeezed onto one line."""
    return " ".join(str(exc).split())


def as_text(value: Any) -> str:
    """``str()`` and ``strip()`` a raw value; None and NaN become ``""``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def existing(path: str | Path) -> Path:
    """``path`` as a Path, or DataError if it does not exist."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found")
    return p


def new_stats(*reasons: str) -> Stats:
    """A stats dict with ``read``, ``kept`` and a zero ``skipped_<reason>`` per reason."""
    stats = {"read": 0, "kept": 0}
    stats.update({f"skipped_{reason}": 0 for reason in reasons})
    return stats


# --------------------------------------------------------------------------- raw rows


def read_jsonl(path: Path, max_rows: int | None = None) -> list[Row]:
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
        raise DataError(f"{path}: not valid UTF-8 ({one_line(exc)})") from None
    return rows


def load_json(path: Path) -> Any:
    """Parse a whole JSON file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({one_line(exc)})") from None


def read_json(path: Path) -> list[Row]:
    """A JSON file holding a list of objects, or ``{"data": [...]}``."""
    data = load_json(path)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a JSON list of objects or {{"data": [...]}}')
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {i} is not a JSON object ({type(row).__name__})")
    return data


def read_pandas(path: Path, max_rows: int | None = None) -> tuple[list[Row], list[str]]:
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
        raise DataError(f"{path}: cannot read {path.suffix} file ({one_line(exc)})") from None
    df = df.astype(object).where(df.notna(), None)
    return df.to_dict("records"), [str(c) for c in df.columns]


def read_rows(path: Path, max_rows: int | None = None) -> tuple[list[Row], list[str]]:
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
        rows, columns = read_pandas(path, max_rows)
    else:
        rows = read_jsonl(path, max_rows) if suffix == ".jsonl" else read_json(path)[:max_rows]
        columns = list(dict.fromkeys(key for row in rows for key in row))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows, columns


def hub_rows(
    hub: str, hub_config: str | None = None, hub_split: str = "train"
) -> tuple[list[Row], list[str]]:
    """Rows and column names of a Hugging Face hub dataset split."""
    try:
        import datasets

        ds = datasets.load_dataset(hub, name=hub_config, split=hub_split)
        return [dict(row) for row in ds], list(ds.column_names)
    except Exception as exc:
        raise DataError(
            f"cannot load hub dataset {hub!r}: {one_line(exc)}; set data.path to a local copy "
            "(offline: HF_DATASETS_OFFLINE=1)"
        ) from None


def source_rows(
    path: str | Path | None, hub: str | None, hub_config: str | None, hub_split: str
) -> tuple[list[Row], list[str], str, str]:
    """Rows, columns, a label for messages and an id prefix, from ``path`` or ``hub``.

    The id prefix is ``"<file stem>-"`` for files and empty for the hub (ids are row indices).
    """
    if path is not None:
        p = existing(path)
        rows, columns = read_rows(p)
        return rows, columns, str(p), f"{p.stem}-"
    if hub is not None:
        rows, columns = hub_rows(hub, hub_config, hub_split)
        return rows, columns, f"hub dataset {hub!r}", ""
    raise DataError("no data source: set data.path (a local file) or data.hub (a hub dataset id)")


# --------------------------------------------------------------------------- mapping


def require_columns(where: str, columns: list[str], wanted: list[str | None]) -> None:
    """DataError naming every wanted column that the data lacks."""
    missing = [c for c in dict.fromkeys(wanted) if c is not None and c not in columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}; available columns: {column_list(columns)}")


def column_list(columns: Sequence[str]) -> str:
    """Column names for a one-line message: a name holding a line break or other unprintable character is quoted
    (a CSV header cell may hold anything)."""
    return ", ".join(c if c.isprintable() else repr(c) for c in columns) or "(none)"


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
    require_columns(where, columns, wanted)
    records: list[Record] = []
    stats = new_stats("empty_question", "empty_answer")
    for index, row in enumerate(rows):
        stats["read"] += 1
        question, answer = as_text(row.get(question_col)), as_text(row.get(answer_col))
        if not question:
            stats["skipped_empty_question"] += 1
            continue
        if not answer:
            stats["skipped_empty_answer"] += 1
            continue
        record = {
            "id": (as_text(row.get(id_col)) if id_col else "") or f"{id_prefix}{index}",
            "question": question,
            "answer": answer,
        }
        if context_col:
            record["context"] = as_text(row.get(context_col))
        if label_col:
            record["label"] = as_text(row.get(label_col))
        row_source = as_text(row.get(source_col)) if source_col else ""
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
    return load_local(path, question_col=question_col, answer_col=answer_col, id_col=id_col, context_col=context_col,
                      label_col=label_col, source=source, source_col=source_col)


def load_local(
    path: str | Path | None = None,
    hub: str | None = None,
    hub_config: str | None = None,
    hub_split: str = "train",
    question_col: str = "question",
    answer_col: str = "answer",
    id_col: str | None = None,
    context_col: str | None = None,
    label_col: str | None = None,
    source: str | None = None,
    source_col: str | None = None,
) -> tuple[list[Record], Stats]:
    """Any QA table with named columns, from a local file (as :func:`read_table`) or the hub.

    The column names come from the data group (``data.question_col`` ...), so this loader
    takes no ``data.options``.
    """
    rows, columns, where, prefix = source_rows(path, hub, hub_config, hub_split)
    return map_rows(
        rows, columns, where,
        question_col=question_col, answer_col=answer_col, id_col=id_col,
        context_col=context_col, label_col=label_col, source=source, source_col=source_col,
        id_prefix=prefix,
    )


# --------------------------------------------------------------------------- bundled sample


def sample_path() -> Path:
    """The bundled sample dataset (medsweep/assets/sample_medqa.jsonl)."""
    return Path(str(resources.files("medsweep") / "assets" / "sample_medqa.jsonl"))


def load_sample() -> tuple[list[Record], Stats]:
    """The bundled sample: ``id``, ``question``, ``answer`` columns, source = ``"sample"``."""
    return read_table(sample_path(), question_col="question", answer_col="answer", id_col="id", source="sample")
