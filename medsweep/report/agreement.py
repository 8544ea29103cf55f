"""How far the quality metrics agree on which configuration is better: Spearman's rank correlation, across
configurations, between every pair of answer-quality metrics the runs have (metrics.QUALITY: EM, F1, BLEU, ROUGE,
the semantic similarity, the PubMedQA decision scores and the LLM judge's scores and win rate). A
configuration is the mean of its complete runs (its seeds); a pair is shown only where at least MIN_CONFIGS
configurations have both metrics, fewer ranks say nothing.
"""

from __future__ import annotations

import math
import warnings

import pandas as pd

from medsweep import metrics as registry
from medsweep.report.collect import complete, config_axes

MIN_CONFIGS = 3
HEADING = "Agreement between metrics"
NOTE = (f"Spearman rank correlation across configurations (each the mean of its seeds) between every pair of quality "
        f"metrics that at least {MIN_CONFIGS} configurations have; ρ = 1: the two rank the configurations alike, "
        f"0: unrelated, −1: reversed. No ρ: one of the two is constant over these configurations.")


def quality_columns(df: pd.DataFrame) -> list[str]:
    """The quality metrics measured in ``df``, in the registry's order."""
    measured = [c for c in df.columns if isinstance(c, str) and pd.to_numeric(df[c], errors="coerce").notna().any()]
    return [c for c in registry.QUALITY if c in measured]


def metric_agreement(df: pd.DataFrame, min_configs: int = MIN_CONFIGS) -> pd.DataFrame:
    """One row per pair of quality metrics with at least ``min_configs`` configurations having both: the two
    metrics, the number of configurations, Spearman's ρ and its p-value (scipy.stats.spearmanr)."""
    from scipy.stats import spearmanr  # on use: scipy.stats takes a noticeable share of a second to import

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
            with warnings.catch_warnings():  # a constant column: rho is undefined (nan), said in NOTE
                warnings.simplefilter("ignore")
                result = spearmanr(both[a], both[b])
            rho, p = float(result.statistic), float(result.pvalue)
            rows.append({"metric A": registry.label(a), "metric B": registry.label(b), "configs": len(both),
                         "Spearman ρ": rho, "p": p if not math.isnan(rho) else math.nan})
    return pd.DataFrame(rows, columns=columns)
