"""Statistics of the report: 95% Student-t critical values and intervals over seeds, the percentile bootstrap over
eval examples, and ``summarize``, which reduces the complete runs of each group (a configuration, a pivot cell) to
a mean, a confidence interval, the number of replicates, the interval's method and the finetuned-minus-baseline
difference of each metric.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from medsweep.report.collect import SEED, axis_columns, complete

log = logging.getLogger("medsweep.report")  # one logger for the package, as before it was split

N_BOOT = 1000


# --------------------------------------------------------------------------- statistics

def t_critical(df: int) -> float:
    """Two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t_critical needs df >= 1, got {df}")
    from scipy.stats import t  # on use: scipy.stats takes a noticeable share of a second to import

    return float(t.ppf(0.975, df))


def t_interval(values) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% Student-t interval; needs at least two values."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    half = t_critical(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def bootstrap_interval(scores, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """(low, high) 95% percentile bootstrap interval of the mean of per-example scores."""
    x = np.asarray(scores, dtype=float)
    x = x[~np.isnan(x)]
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


# --------------------------------------------------------------------------- summaries

def _per_example(group: pd.DataFrame, metric: str, value: float) -> list | None:
    """Per-example scores of ``metric`` from the group's run, if they average to ``value``.

    Scores whose mean is not the reported value (e.g. sentence BLEU against corpus BLEU)
    describe another statistic and are not used for an interval.
    """
    scores = group.loc[group[metric].notna(), "_per_example"].iloc[0].get(metric)
    if not isinstance(scores, list) or len(scores) < 2:
        return None
    mean = float(np.nanmean(np.asarray(scores, dtype=float)))
    if not math.isclose(mean, value, rel_tol=1e-3, abs_tol=1e-4):
        log.debug("per-example %s mean %.4g != reported %.4g: no bootstrap", metric, mean, value)
        return None
    return scores


def _interval(group: pd.DataFrame, values: pd.Series, metric: str) -> tuple:
    """(mean, low, high, method, n) of one metric over a group's replicate ``values``.

    method is "t" (n >= 2 replicates), "bootstrap" (one run with per-example scores;
    n is then the number of eval examples) or "" (no interval).
    """
    values = values.dropna()
    if len(values) >= 2:
        return (*t_interval(values), "t", len(values))
    if len(values) == 1:
        value = float(values.iloc[0])
        scores = _per_example(group, metric, value)
        if scores is not None:
            return (value, *bootstrap_interval(scores), "bootstrap", len(scores))
        return value, math.nan, math.nan, "", 1
    return math.nan, math.nan, math.nan, "", 0


def _ci_label(group: pd.DataFrame, method: str, n: int, axes: list[str]) -> str:
    """Human-readable CI method of a group for the ``CI`` column."""
    if method == "t":
        others = [a for a in axes if a != SEED]
        only_seeds = all(group[a].nunique(dropna=False) <= 1 for a in others)
        return f"t over {'seeds' if only_seeds else 'runs'} (n={n})"
    if method == "bootstrap":
        return f"bootstrap over examples (n={n})"
    return "single run" if n == 1 else ""


def _delta(group: pd.DataFrame, metric: str) -> float:
    """Mean finetuned-minus-baseline difference of ``metric`` in this group."""
    if f"delta.{metric}" in group and group[f"delta.{metric}"].notna().any():
        return float(group[f"delta.{metric}"].mean())
    if f"baseline.{metric}" in group and metric in group:
        return float((group[metric] - group[f"baseline.{metric}"]).mean())
    return math.nan


def summarize(df: pd.DataFrame, by: list[str], metrics: dict[str, str],
              primary: str = "f1", scale: dict[str, float] | None = None) -> pd.DataFrame:
    """Mean and 95% CI of each metric per group of complete runs.

    ``metrics`` maps metric column -> output name; columns ``<name>``, ``<name> lo``,
    ``<name> hi`` (and ``Δ <name>`` where baselines exist) plus ``n`` (replicate runs of
    ``primary``) and ``CI`` (its interval method) are returned, one row per ``by`` group.
    ``scale`` multiplies metrics (e.g. exact_match by 100 for EM %).
    """
    done, axes = complete(df), axis_columns(df)
    measured = [m for m in dict.fromkeys([primary, *metrics]) if m in done]
    rows = []
    groups = done.groupby(by, dropna=False, sort=True) if by else [((), done)]
    for key, group in groups:
        if group.empty:
            continue
        # replicates: one value per distinct axes setting (duplicate runs averaged)
        reps = group.groupby(axes, dropna=False)[measured].mean() if axes else group[measured]
        stats = {m: _interval(group, reps[m], m) for m in measured}
        *_, method, n = stats.get(primary, (math.nan,) * 3 + ("", 0))
        row = dict(zip(by, key, strict=True))
        row.update(n=1 if method == "bootstrap" else n, CI=_ci_label(group, method, n, axes))
        for metric, name in metrics.items():
            mean, low, high, _, _ = stats.get(metric, (math.nan,) * 3 + ("", 0))
            k = (scale or {}).get(metric, 1.0)
            row.update({name: mean * k, f"{name} lo": low * k, f"{name} hi": high * k,
                        f"Δ {name}": _delta(group, metric) * k})
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.dropna(axis="columns", how="all") if not out.empty else out
