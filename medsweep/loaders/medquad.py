"""MedQuAD (Ben Abacha & Demner-Fushman, 2019): consumer health QA pairs from NIH websites.

Reads the original XML tree (``<collection>/*.xml``, one ``<Document>`` of ``<QAPairs>`` per file),
a flattened table (``id, question, answer, source, ...``) or the hub copy
(``keivalya/MedQuad-MedicalQnADataset``: ``qtype, Question, Answer``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from medsweep.errors import DataError
from medsweep.loaders.tables import (
    Record,
    Stats,
    existing,
    map_rows,
    new_stats,
    one_line,
    read_table,
    source_rows,
)

MEDQUAD_HUB = "keivalya/MedQuad-MedicalQnADataset"


def _parse_xml(file: Path) -> ET.Element:
    """Parse a local XML file, refusing DOCTYPE/ENTITY declarations (entity expansion)."""
    raw = file.read_bytes()
    if b"<!ENTITY" in raw or b"<!DOCTYPE" in raw:
        raise DataError(f"{file}: DOCTYPE/ENTITY declarations are not allowed in XML input")
    try:
        return ET.fromstring(raw)
    except ET.ParseError as exc:
        raise DataError(
            f"{file}: not a MedQuAD document (XML parse error: {one_line(exc)})"
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
    stats = new_stats("empty_question", "empty_answer")
    for file in files:
        records.extend(_medquad_document(file, file.parent.name, stats))
    stats["files"] = len(files)
    stats["kept"] = len(records)
    return records, stats


def load_medquad(
    path: str | None = None,
    hub: str | None = MEDQUAD_HUB,
    hub_config: str | None = None,
    hub_split: str = "train",
) -> tuple[list[Record], Stats]:
    """MedQuAD: the original XML tree (a folder, or one ``.xml`` file), a flattened table
    (``id, question, answer, source, ...``), or the hub copy (``qtype, Question, Answer``).
    """
    if path is not None:
        p = existing(path)
        if p.is_dir() or p.suffix.lower() == ".xml":
            return _medquad_xml(p)
        return read_table(p, id_col="id", source_col="source")
    rows, columns, where, prefix = source_rows(None, hub, hub_config, hub_split)
    return map_rows(
        rows, columns, where, question_col="Question", answer_col="Answer", id_prefix=prefix
    )
