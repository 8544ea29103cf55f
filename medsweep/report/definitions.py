"""The metric definitions of the runs in a report (metrics.MetricDefinitions, stored in each record): printed once in
the report's "Metric definitions" section, and compared field by field. When the runs of a table use different
definitions (another sacreBLEU version or tokenizer, other ROUGE settings, another EM/F1 normalisation or
embedding model), their numbers are not comparable as they stand: the report says which runs use which, one line per
differing field, and the tables refuse their significance marks (the best by mean is marked `*?`, untested, and no
p-value is shown) rather than test one definition against another. Splitting the tables by definition was not
chosen: the runs stay visible side by side, with the warning next to them.

A field that a run did not compute (`semantic` and the embedder's version without eval.semantic) is no
disagreement: the run has no such number. Records written before definitions were recorded have an unknown
definition: the report lists them in a note and does not hold them against the others (a sweep of old records
reports as it always has).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from medsweep.metrics import MetricDefinitions

log = logging.getLogger("medsweep.report")  # one logger for the package, as before it was split

LABELS = {"em_f1": "EM / F1", "bleu": "BLEU (corpus)", "sentence_bleu": "BLEU (per example)", "rouge": "ROUGE",
          "semantic": "Semantic"}  # and `packages.<name>`: that package's version
NAMES_SHOWN = 3  # run names listed per definition in a warning line; the rest are counted
TABLE_NOTE = ("_These runs use different metric definitions (see Metric definitions): no significance marks; "
              "`*?` marks the best by mean, untested._")


@dataclass(frozen=True)
class Definitions:
    """The metric definitions of a set of runs: per field, each text and the runs that use it; runs without any."""

    by_field: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # runs whose record has no (readable) definitions

    @property
    def differing(self) -> list[str]:
        """The fields with more than one text among the runs."""
        return [f for f, texts in self.by_field.items() if len(texts) > 1]

    def warnings(self) -> list[str]:
        """One line per differing field: each text and the runs that use it, the most used first."""
        return [f"`{f}` differs: " + "; ".join(f"`{text}` in {_runs(names)}" for text, names in
                                               sorted(self.by_field[f].items(), key=lambda item: -len(item[1])))
                for f in self.differing]

    def section(self) -> str:
        """The report's "Metric definitions" section (Markdown, without its heading)."""
        parts = []
        agreed = [(f, next(iter(texts))) for f, texts in self.by_field.items() if len(texts) == 1]
        if agreed:
            table = pd.DataFrame({"metric": [LABELS.get(f, f.replace("packages.", "") + " version")
                                             for f, _ in agreed],
                                  "definition": [t.replace("|", "\\|") for _, t in agreed]})  # sacreBLEU's |
            parts.append(table.to_markdown(index=False))
        if self.differing:
            parts.append("**The runs use different metric definitions**: their numbers are not compared by paired "
                         "tests (no significance marks in the tables).\n\n"
                         + "\n".join(f"- {line}" for line in self.warnings()))
        if self.unknown:
            parts.append(f"_{_runs(self.unknown)} record no metric definitions (written before medsweep recorded "
                         "them): unknown definition, not checked against the others._")
        return "\n\n".join(parts) if parts else "_(no runs)_"


def _runs(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN]) + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN
                                              else "")
    return f"{len(names)} run{'s' if len(names) != 1 else ''} ({shown})"


def of(runs: pd.DataFrame) -> Definitions:
    """The definitions of ``runs`` (rows of report.collect's frame, its ``_definitions`` column)."""
    by_field: dict[str, dict[str, list[str]]] = {}
    unknown: list[str] = []
    column = runs["_definitions"] if "_definitions" in runs else pd.Series(None, index=runs.index, dtype=object)
    for name, raw in zip(runs["run_name"], column, strict=True):
        definitions = MetricDefinitions.from_dict(raw)
        if definitions is None:
            unknown.append(str(name))
            continue
        for key, text in definitions.lines().items():
            by_field.setdefault(key, {}).setdefault(text, []).append(str(name))
    return Definitions(by_field, unknown)


def refuse_marks(table: pd.DataFrame, what: str) -> pd.DataFrame:
    """A table's marks when its runs' definitions differ: `*?` (best by mean, untested) for each model's best row,
    nothing else; logged once for the table (``what``)."""
    log.warning("no paired test in %s: the runs use different metric definitions (the report's Metric "
                "definitions section says which)", what)
    table["mark"] = table["best"].map({True: "*?", False: ""})
    return table[[c for c in table.columns if c not in ("best", "mark")] + ["best", "mark"]]
