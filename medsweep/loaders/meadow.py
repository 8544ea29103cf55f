"""Instruction-style medical QA tables from the hub: Medical Meadow WikiDoc and MedChat QA.

WikiDoc (``medalpaca/medical_meadow_wikidoc``, from the medAlpaca project) is an
``{instruction, input, output}`` table built from WikiDoc articles; MedChat QA (``ngram/medchat-qa``)
is a plain ``question, answer`` table. Both are read from a local table file or the hub copy.
"""

from __future__ import annotations

from medsweep.errors import DataError
from medsweep.loaders.tables import (
    Record,
    Stats,
    as_text,
    column_list,
    load_local,
    map_rows,
    require_columns,
    source_rows,
)

WIKIDOC_HUB = "medalpaca/medical_meadow_wikidoc"
MEDCHAT_HUB = "ngram/medchat-qa"


def load_wikidoc(
    path: str | None = None,
    hub: str | None = WIKIDOC_HUB,
    hub_config: str | None = None,
    hub_split: str = "train",
) -> tuple[list[Record], Stats]:
    """Medical Meadow WikiDoc ``{instruction, input, output}``: question = input (or the
    instruction when input is empty), answer = output, source = ``"wikidoc"``.
    """
    rows, columns, where, prefix = source_rows(path, hub, hub_config, hub_split)
    require_columns(where, columns, ["output"])
    if "input" not in columns and "instruction" not in columns:
        raise DataError(
            f"{where}: missing column(s) input, instruction (need one); "
            f"available columns: {column_list(columns)}"
        )
    qa_rows = [
        {"question": row.get("input") if as_text(row.get("input")) else row.get("instruction"),
         "answer": row.get("output")}
        for row in rows
    ]
    return map_rows(qa_rows, ["question", "answer"], where, source="wikidoc", id_prefix=prefix)


def load_medchat(
    path: str | None = None,
    hub: str | None = MEDCHAT_HUB,
    hub_config: str | None = None,
    hub_split: str = "train",
    *,
    question_col: str = "question",
    answer_col: str = "answer",
) -> tuple[list[Record], Stats]:
    """MedChat QA: ``question``/``answer`` columns (names set by ``data.options``), source = ``"medchat"``."""
    return load_local(
        path, hub, question_col=question_col, answer_col=answer_col, source="medchat",
        hub_config=hub_config, hub_split=hub_split,
    )
