"""The answers a reader should see: per metric with per-item scores, the best configuration's items it scores
highest and lowest on, with the question, the answer and the reference. The answers are those of one run of the
configuration (its lowest seed), with that run's own scores, so that each score belongs to the text shown beside
it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medsweep import metrics as registry
from medsweep.report.collect import SEED, complete, config_axes
from medsweep.report.items import TESTABLE, NoItems, read_items
from medsweep.report.stats import summarize
from medsweep.report.tables import _num

log = logging.getLogger("medsweep.report")  # one logger for the package, as before it was split

SHOWN = 3  # items at each end


@dataclass(frozen=True)
class Answer:
    """One evaluation item as a run answered it."""

    item: str
    question: str
    answer: str
    reference: str
    score: float  # scaled as the tables show it (EM in percent)


@dataclass(frozen=True)
class Extremes:
    """The items the best configuration (by ``metric``) of the runs scores highest and lowest on."""

    metric: str
    configuration: str  # axis=value pairs
    run: str  # the run directory the answers come from
    best: tuple[Answer, ...]
    worst: tuple[Answer, ...]


def _answers(items: pd.DataFrame, metric: str, ascending: bool, n: int) -> tuple[Answer, ...]:
    k = registry.SCALE.get(metric, 1.0)
    ranked = items[items[metric].notna()].sort_values(metric, ascending=ascending, kind="stable").head(n)
    return tuple(Answer(str(item), str(row["question"] or ""), str(row["generated"] or ""),
                        str(row["reference"] or ""), float(row[metric]) * k) for item, row in ranked.iterrows())


def extremes(df: pd.DataFrame, metrics: tuple[str, ...] = TESTABLE, n: int = SHOWN) -> list[Extremes]:
    """Per metric of ``metrics`` measured in the runs: the best configuration's ``n`` best and ``n`` worst answered
    items (best first / worst first). A metric whose scores are all equal on those items shows none (nothing tells
    its ends apart); runs without prediction files are logged and left out."""
    done = complete(df)
    axes = config_axes(done)
    found = []
    for metric in [m for m in metrics if m in done and done[m].notna().any()]:
        table = summarize(done, axes, {metric: metric}, primary=metric).dropna(subset=[metric])
        if table.empty:
            continue
        lower = not registry.higher_is_better(metric)
        best = table.loc[table[metric].idxmin() if lower else table[metric].idxmax()]
        mask = pd.Series(True, index=done.index)
        for a in axes:
            mask &= done[a].isna() if pd.isna(best[a]) else done[a].eq(best[a])
        runs = done[mask].sort_values([c for c in (SEED, "run_dir") if c in done], na_position="last")
        run = str(runs["run_dir"].iloc[0])
        try:
            items = read_items(run)
        except NoItems as e:
            log.info("no best and worst answers by %s: %s", metric, e)
            continue
        if metric not in items or items[metric].nunique(dropna=True) < 2:
            continue
        configuration = ", ".join(f"{a}={_num(best[a])}" for a in axes) or "all runs"
        found.append(Extremes(metric, configuration, Path(run).name,
                              best=_answers(items, metric, ascending=lower, n=n),
                              worst=_answers(items, metric, ascending=not lower, n=n)))
    return found
