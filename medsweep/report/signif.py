"""Significance in the report's tables: each row of a table (a configuration, a pivot cell) is compared, item by
item on the ranking metric, with its model's best row and with its own base model, by paired.py's sign-flip test;
the p-values of one table are one family for Holm's adjustment. ``annotate`` adds the adjusted p-values and the
``mark`` that the tables print in their ``best`` column:

``*``   the best row of its model by mean, and every other row of the model is worse (adjusted p < ALPHA);
``*=``  the best by mean, but tied: the rows marked ``†`` are not distinguishable from it;
``*?``  the best by mean, not tested against every other row (why is logged: no per-item predictions, different
        items, a metric without per-item scores);
``†``   not distinguishable from its model's best (adjusted p >= ALPHA).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from medsweep.report.collect import SEED, complete
from medsweep.report.items import TESTABLE, NoItems, NoPredictions, items_of, matched
from medsweep.report.paired import ALPHA, N_RESAMPLES, RNG_SEED, holm, sign_flip_p

log = logging.getLogger("medsweep.report")  # one logger for the package, as before it was split

P_BEST, P_BASE = "p vs best", "p vs base"
NOTE = (
    f"Paired tests on the same eval items (matched by id or question): a sign-flip (approximate randomization) "
    f"test of the mean per-item difference of the ranking metric, {N_RESAMPLES} sign vectors (all of them when "
    f"there are fewer), seed {RNG_SEED}; seeds are averaged per item first. `{P_BEST}`: against the best "
    f"configuration of the model, `{P_BASE}`: against its own base model; Holm-adjusted over the comparisons of "
    f"the table. `*` the best configuration of its model, every other one worse at alpha = {ALPHA}; `*=` the best "
    f"by mean, tied with those marked `†` (not distinguishable from it); `*?` the best by mean, untested."
)


def _key(values) -> tuple:
    return tuple(None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else v
                 for v in values)


def _runs(done: pd.DataFrame, by: list[str]) -> dict[tuple, list[str]]:
    """Group key -> its run dirs, lowest seed first."""
    order = done.sort_values([c for c in (SEED, "run_dir") if c in done], na_position="last")
    if not by:
        return {(): list(order["run_dir"])}
    return {_key(k if isinstance(k, tuple) else (k,)): list(g["run_dir"])
            for k, g in order.groupby(by, dropna=False, sort=False)}


def _describe(row: pd.Series, by: list[str]) -> str:
    return " ".join(f"{a}={row[a]}" for a in by) or "the runs"


class _Items:
    """Per-item scores of the table's rows, read once; a refusal's reason is logged once per table."""

    def __init__(self, table: pd.DataFrame, done: pd.DataFrame, by: list[str]):
        runs = _runs(done, by)
        self.runs = {i: runs.get(_key(table.loc[i, by]) if by else (), []) for i in table.index}
        self.names = {i: _describe(table.loc[i], by) for i in table.index}
        self.reasons: dict[str, None] = {}
        self.missing: dict[str, None] = {}  # rows without prediction files: one line for all of them
        self._cache: dict[tuple, pd.DataFrame | None] = {}

    def get(self, i, baseline: bool = False) -> pd.DataFrame | None:
        if (i, baseline) not in self._cache:
            try:
                self._cache[i, baseline] = items_of(self.runs[i], baseline)
            except NoItems as e:
                self._cache[i, baseline] = None
                reason = f"{self.names[i]}{' (base model)' if baseline else ''}: {e}"
                self.missing.setdefault(reason, None) if isinstance(e, NoPredictions) else self.refuse(reason)
        return self._cache[i, baseline]

    def refuse(self, reason: str) -> None:
        self.reasons.setdefault(reason, None)

    def diff(self, i, j, metric: str, baseline: bool = False) -> np.ndarray | None:
        """Per-item ``metric`` of row i minus that of row j (of row i's base model with ``baseline``)."""
        a, b = self.get(j, baseline), self.get(i)
        if a is None or b is None or metric not in a or metric not in b:
            return None
        try:
            a, b = matched(a, b, self.names[j] + (" (base model)" if baseline else ""), self.names[i])
        except NoItems as e:
            self.refuse(str(e))
            return None
        return b[metric].to_numpy(dtype=float) - a[metric].to_numpy(dtype=float)


def annotate(table: pd.DataFrame, df: pd.DataFrame, by: list[str], metric: str, value: str) -> pd.DataFrame:
    """Add ``p vs best``, ``p vs base`` (Holm-adjusted over the table) and ``mark`` to a table of groups of runs.

    ``table`` has one row per combination of the ``by`` axes of the complete runs of ``df``, the mean ``metric``
    in column ``value`` and the bool ``best`` of each model's best row; its p columns are left out when nothing
    could be tested.
    """
    table[P_BASE], table[P_BEST] = math.nan, math.nan
    models = table.groupby("model", dropna=False, sort=False).groups.values() if "model" in table \
        else [table.index]
    ranked = table[value].notna() if value in table else pd.Series(False, index=table.index)
    items = _Items(table, complete(df), by)
    pairs: list[tuple[object, str]] = []
    diffs: list[np.ndarray | None] = []
    if metric not in TESTABLE:  # the table's own choice of metric, not a fault: no warning
        log.info("no paired test: %s has no per-item scores whose mean is the reported value", metric)
    else:
        for group in models:
            rows = [i for i in group if ranked[i]]
            best = [i for i in rows if table.loc[i, "best"]]
            for i in rows:
                if best and i != best[0]:
                    pairs.append((i, P_BEST))
                    diffs.append(items.diff(i, best[0], metric))
                if f"Δ {value}" in table and pd.notna(table.loc[i, f"Δ {value}"]):
                    pairs.append((i, P_BASE))
                    diffs.append(items.diff(i, i, metric, baseline=True))
    tested = [k for k, d in enumerate(diffs) if d is not None]
    raw = np.full(len(pairs), math.nan)
    raw[tested] = sign_flip_p([d for d in diffs if d is not None])
    for (i, column), p in zip(pairs, holm(raw), strict=True):
        table.loc[i, column] = p
    for reason in items.reasons:
        log.warning("no paired test: %s", reason)
    if items.missing:
        log.info("no paired test for %d of %d comparisons: no per-item predictions (%s)", len(pairs) - len(tested),
                 len(pairs), next(iter(items.missing)))
    table["mark"] = ""
    for group in models:
        rows = [i for i in group if ranked[i]]
        for i in rows:
            if not table.loc[i, "best"]:
                table.loc[i, "mark"] = "†" if table.loc[i, P_BEST] >= ALPHA else ""
                continue
            others = table.loc[[j for j in rows if j != i], P_BEST]
            table.loc[i, "mark"] = "*?" if others.isna().any() else "*=" if (others >= ALPHA).any() else "*"
    table = table.drop(columns=[c for c in (P_BASE, P_BEST) if table[c].isna().all()])
    return table[[c for c in table.columns if c not in ("best", "mark")] + ["best", "mark"]]
