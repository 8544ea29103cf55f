"""``medsweep-report --compare A B``: two runs, two configurations of a sweep, or a configuration and its base model,
compared item by item: per metric the mean difference B − A, its 95% interval, the sign-flip p-value (raw and
Holm-adjusted over the metrics), then the items where the two differ most, with both answers and the reference.

A side is a run directory (or a directory of runs of one configuration: its seeds), ``axis=value[,axis=value]``
selecting one configuration among the runs of the given sweep paths, or ``base``: the base model of the other
side's runs (their predictions_baseline.jsonl). Unknown runs, a selection matching no run or several
configurations, and different item sets are one-line MedsweepErrors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medsweep import metrics as registry
from medsweep.errors import MedsweepError
from medsweep.report.collect import SEED, axis_columns, collect, complete, varying_axes
from medsweep.report.definitions import of as definitions_of
from medsweep.report.items import ITEM_METRICS, TESTABLE, items_of, matched, read_items
from medsweep.report.paired import CONFIDENCE, N_RESAMPLES, RNG_SEED, Paired, holm, paired_test
from medsweep.report.tables import _atomic_write, _num
from medsweep.runrecord import RunRecord

BASE = "base"
TOP = 5
_TEXT = 400  # characters of a question, reference or answer shown


@dataclass
class Side:
    """One side of a comparison: its runs (lowest seed first) and whether it is their base model."""

    label: str
    runs: list[str] = field(default_factory=list)
    seeds: list = field(default_factory=list)  # train.seed of each run, None where it has none
    baseline: bool = False

    def describe(self) -> str:
        names = ", ".join(Path(r).name for r in self.runs)
        what = "the base model of " if self.baseline else ""
        return f"{what}{len(self.runs)} run{'s' * (len(self.runs) != 1)} ({names})"


def _values(column: pd.Series) -> str:
    """The distinct values of an axis, in order (numbers as numbers), as the tables print them."""
    values = list(column.dropna().unique())
    try:
        values.sort()
    except TypeError:
        values.sort(key=str)
    return ", ".join(_num(v) for v in values)


def _one_configuration(done: pd.DataFrame, spec: str) -> Side:
    """The runs of ``done``, lowest seed first; MedsweepError when they are no single configuration."""
    differ = [a for a in varying_axes(done) if a != SEED]
    if differ:
        values = "; ".join(f"{a}: {_values(done[a])}" for a in differ)
        raise MedsweepError(f"{spec} matches {len(done)} runs of more than one configuration ({values}); "
                            f"narrow it with axis=value")
    order = done.sort_values([c for c in (SEED, "run_dir") if c in done], na_position="last")
    seeds = [None if pd.isna(v) else v for v in order[SEED]] if SEED in order else [None] * len(order)
    return Side(spec, list(order["run_dir"]), seeds)


def _parse(spec: str) -> dict[str, str] | None:
    pairs = [p.partition("=") for p in spec.split(",")]
    if not all(key.strip() and sep for key, sep, _ in pairs):
        return None
    return {key.strip(): value.strip() for key, _, value in pairs}


def _matches(values: pd.Series, wanted: str) -> pd.Series:
    return values.map(lambda v: pd.notna(v) and (str(v) == wanted or _num(v) == wanted))


def select(df: pd.DataFrame | None, spec: str) -> Side:
    """The runs a spec names: an existing directory, or axis=value[,axis=value] among the runs of ``df``."""
    if Path(spec).is_dir():
        done = complete(collect([spec]))
        if done.empty:
            raise MedsweepError(f"{spec}: no complete run")
        return _one_configuration(done, spec.rstrip("/"))
    wanted = _parse(spec)
    if wanted is None:
        raise MedsweepError(f"unknown run or selection {spec!r}: give a run dir, axis=value[,axis=value] "
                            f"or {BASE}")
    if df is None:
        raise MedsweepError(f"{spec} selects by axis values: give the sweep dir(s) it selects from")
    unknown = [a for a in wanted if a not in axis_columns(df)]
    if unknown:
        raise MedsweepError(f"{spec}: unknown axis {', '.join(unknown)}; axes in these runs: "
                            f"{', '.join(axis_columns(df)) or 'none'}")
    done = complete(df)
    mask = np.logical_and.reduce([_matches(done[a], v) for a, v in wanted.items()])
    if not mask.any():
        values = "; ".join(f"{a}: {_values(done[a])}" for a in wanted)
        raise MedsweepError(f"{spec} matches no complete run; values in these runs: {values or 'none'}")
    return _one_configuration(done[mask], spec)


def sides(paths: list[str], a: str, b: str) -> tuple[Side, Side]:
    """Resolve the two specs; ``base`` is the base model of the other side."""
    if a == BASE and b == BASE:
        raise MedsweepError(f"--compare {BASE} {BASE}: one side must be runs")
    df = collect(paths) if paths else None
    known = {s: select(df, s) for s in (a, b) if s != BASE}
    if a == BASE:
        return Side(f"{BASE} ({b})", known[b].runs, known[b].seeds, baseline=True), known[b]
    if b == BASE:
        return known[a], Side(f"{BASE} ({a})", known[a].runs, known[a].seeds, baseline=True)
    return known[a], known[b]


def _label(metric: str) -> str:
    return "sentence BLEU" if metric == "bleu" else registry.label(metric)


def _text(value) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= _TEXT else text[: _TEXT - 1] + "…"


def _results(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Paired]:
    shared = [m for m in ITEM_METRICS if m in a and m in b and a[m].notna().any() and b[m].notna().any()]
    return {m: paired_test(a[m], b[m]) for m in shared}


def _table(a: pd.DataFrame, b: pd.DataFrame, results: dict[str, Paired]) -> str:
    adjusted = holm([r.p for r in results.values()])
    rows = []
    for (m, r), p_holm in zip(results.items(), adjusted, strict=True):
        k = registry.SCALE.get(m, 1.0)
        both = a[m].notna() & b[m].notna()
        rows.append({"metric": _label(m), "A": _num(a.loc[both, m].mean() * k), "B": _num(b.loc[both, m].mean() * k),
                     "B − A": _num(r.diff * k), f"{CONFIDENCE:.0%} CI": f"[{_num(r.low * k)}, {_num(r.high * k)}]",
                     "p": f"{r.p:.2g}", "p (Holm)": f"{p_holm:.2g}", "items": str(r.n),
                     "differ": str(int((a.loc[both, m] != b.loc[both, m]).sum()))})
    return pd.DataFrame(rows).to_markdown(index=False)


def _answers(side: Side, name: str, item: str, metric: str) -> list[str]:
    """One line per run of a side: its answer to ``item`` and its score (the seeds' answers differ)."""
    k = registry.SCALE.get(metric, 1.0)
    lines = []
    for run, seed in zip(side.runs, side.seeds, strict=True):
        row = read_items(run, side.baseline).loc[item]
        where = f", seed {_num(seed)}" if len(side.runs) > 1 and seed is not None else ""
        answer = _text(row["generated"]) or "_(empty)_"
        lines.append(f"- {name}{where} ({_label(metric)} {_num(row[metric] * k)}): {answer}")
    return lines


def _items(a: Side, b: Side, items_a: pd.DataFrame, items_b: pd.DataFrame, metric: str, top: int) -> list[str]:
    """The ``top`` items with the largest absolute difference in ``metric`` (ties in identity order): question,
    reference and every run's answer."""
    gap = (items_b[metric] - items_a[metric]).abs()
    order = gap[gap > 0].sort_values(ascending=False, kind="stable").index[:top]
    what = "The item where they differ" if len(order) == 1 else f"The {len(order)} items where they differ"
    heading = f"## {what} most in {_label(metric)}"
    if not len(order):
        return [heading, "", f"_(no item differs in {_label(metric)})_", ""]
    k = registry.SCALE.get(metric, 1.0)
    lines = [heading, ""]
    for rank, item in enumerate(order, start=1):
        lines += [f"### {rank}. {_text(item)} ({_label(metric)}: A {_num(items_a.loc[item, metric] * k)}, "
                  f"B {_num(items_b.loc[item, metric] * k)})", "",
                  f"- question: {_text(items_a.loc[item, 'question'])}",
                  f"- reference: {_text(items_a.loc[item, 'reference'])}",
                  *_answers(a, "A", item, metric), *_answers(b, "B", item, metric), ""]
    return lines


def compare(a: Side, b: Side, metric: str = "f1", top: int = TOP) -> str:
    """The Markdown comparison of two sides (see the module docstring)."""
    items_a, items_b = matched(items_of(a.runs, a.baseline), items_of(b.runs, b.baseline), a.label, b.label)
    results = _results(items_a, items_b)
    if not results:
        raise MedsweepError(f"{a.label} and {b.label} share no per-item metric")
    shown = metric if metric in results else next(m for m in ("f1", *results) if m in results)
    notes = [
        f"A: {a.label}: {a.describe()}", f"B: {b.label}: {b.describe()}", "",
        f"{len(items_a)} items, matched by id (by question where the data has no ids); each side's scores are "
        f"averaged over its runs (seeds) per item first. B − A is the mean per-item difference; {CONFIDENCE:.0%} CI: "
        f"BCa bootstrap over items ({N_RESAMPLES} resamples, seed {RNG_SEED}); p: two-sided paired sign-flip test "
        f"(all 2^n sign vectors of n items when 2^n <= {N_RESAMPLES}, else {N_RESAMPLES} random ones, seed "
        f"{RNG_SEED}); p (Holm): adjusted over the {len(results)} metrics."
        + (" Sentence BLEU is the mean over items, not the records' corpus BLEU." if "bleu" in results else "")
        + ("" if shown == metric else f" {metric} has no per-item scores: the items are ranked by {_label(shown)}."),
    ]
    return "\n".join([f"# {a.label} vs {b.label}", "", *notes, "", *_definitions(a, b),
                      _table(items_a, items_b, results), "", *_items(a, b, items_a, items_b, shown, top)])


def _definitions(a: Side, b: Side) -> list[str]:
    """A warning, one line per differing field, when the two sides' runs use different metric definitions: asked
    for explicitly, the comparison is still made, but not silently."""
    runs = list(dict.fromkeys([*a.runs, *b.runs]))
    records = [RunRecord.load(r) for r in runs]
    found = definitions_of(pd.DataFrame({"run_name": [Path(r).name for r in runs],
                                         "_definitions": [rec.metric_definitions if rec else None for rec in records]}))
    if not found.differing:
        return []
    return ["**The runs use different metric definitions**: the differences below compare numbers of different "
            "definitions.", "", *(f"- {line}" for line in found.warnings()), ""]


def _slug(label: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", Path(label).name if Path(label).is_dir() else label).strip("_")


def run_compare(paths: list[str], a: str, b: str, metric: str = "f1", top: int = TOP,
                out: Path | None = None) -> tuple[str, Path | None]:
    """Compare specs ``a`` and ``b`` (selected among ``paths``); the Markdown, and where it was written: as
    ``<out>/report/compare_<A>_vs_<B>.md`` when ``out`` is given."""
    if metric not in (*ITEM_METRICS, *registry.BY_NAME):
        raise MedsweepError(f"unknown metric {metric!r}; per-item metrics: {', '.join(TESTABLE)}")
    side_a, side_b = sides(paths, a, b)
    text = compare(side_a, side_b, metric, top)
    if out is None:
        return text, None
    path = Path(out) / "report" / f"compare_{_slug(side_a.label)}_vs_{_slug(side_b.label)}.md"
    return text, _atomic_write(path, text)
