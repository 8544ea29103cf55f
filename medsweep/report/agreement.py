"""How far the quality metrics agree on which configuration is better: Spearman's rank correlation, across
configurations, between every pair of answer-quality metrics the runs have (metrics.QUALITY: EM, F1, BLEU, ROUGE,
the semantic similarity, the PubMedQA decision scores and the LLM judge's scores and win rate). A
configuration is the mean of its complete runs (its seeds); a pair is shown only where at least MIN_CONFIGS
configurations have both metrics, fewer ranks say nothing.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from medsweep import metrics as registry
from medsweep.report.collect import complete, config_axes

MIN_CONFIGS = 3
HEADING = "Agreement between metrics"
N_ORDERINGS = 9999  # random orderings of the permutation test where there are more than that (8+ configurations)
NOTE = (f"Spearman rank correlation across configurations (each the mean of its seeds) between every pair of quality "
        f"metrics that at least {MIN_CONFIGS} configurations have; ρ = 1: the two rank the configurations alike, "
        f"0: unrelated, −1: reversed. No ρ: one of the two is constant over these configurations. p: two-sided "
        f"permutation test of ρ = 0, exact over every ordering of the configurations (up to 7), else "
        f"{N_ORDERINGS} random orderings (seed 0); with 4 configurations no p is below 1/12.")


def quality_columns(df: pd.DataFrame) -> list[str]:
    """The quality metrics measured in ``df``, in the registry's order."""
    measured = [c for c in df.columns if isinstance(c, str) and pd.to_numeric(df[c], errors="coerce").notna().any()]
    return [c for c in registry.QUALITY if c in measured]


def _rho(x, y, axis=-1):
    """Spearman's ρ along `axis` (vectorized: scipy's permutation_test passes a batch of orderings at once)."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=axis), rankdata(y, axis=axis)
    rx, ry = rx - rx.mean(axis=axis, keepdims=True), ry - ry.mean(axis=axis, keepdims=True)
    return (rx * ry).sum(axis=axis) / np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis))


def spearman(x, y) -> tuple[float, float]:
    """Spearman's ρ of two samples and its two-sided permutation p-value (nan, nan where one is constant). Not
    scipy.stats.spearmanr's p: its t approximation says p = 0 for a perfect ranking of 4 configurations, where
    1 ordering in 24 (two-sided: 1/12) ranks them as well by chance."""
    from scipy.stats import permutation_test

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    # one sample given: "pairings" then reorders x alone against the fixed y, the n! orderings of the null
    result = permutation_test((x,), lambda xs, axis=-1: _rho(xs, y, axis), permutation_type="pairings",
                              vectorized=True, n_resamples=N_ORDERINGS, alternative="two-sided", rng=0)
    return float(result.statistic), float(result.pvalue)


def metric_agreement(df: pd.DataFrame, min_configs: int = MIN_CONFIGS) -> pd.DataFrame:
    """One row per pair of quality metrics with at least ``min_configs`` configurations having both: the two
    metrics, the number of configurations, Spearman's ρ and its permutation p-value (``spearman``)."""
    columns = ["metric A", "metric B", "configs", "Spearman ρ", "p"]
    done = complete(df)
    names = quality_columns(done)
    if len(names) < 2:
        return pd.DataFrame(columns=columns)
    values = done[names].apply(pd.to_numeric, errors="coerce")
    by = [a for a in config_axes(done) if a in done]
    configs = values.groupby([done[a] for a in by], dropna=False).mean() if by else values
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = configs[[a, b]].dropna()
            if len(both) < min_configs:
                continue
            rho, p = spearman(both[a], both[b])
            rows.append({"metric A": registry.label(a), "metric B": registry.label(b), "configs": len(both),
                         "Spearman ρ": rho, "p": p})
    return pd.DataFrame(rows, columns=columns)
