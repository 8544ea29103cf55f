"""Quality against cost: one point per configuration (the mean over its runs and its 95% interval, as the tables
compute them), against seconds per answer and, where a sweep measured any, GPU-hours; the Pareto front (the
configurations that no other one matches or beats on both, one strictly) drawn as the staircase it bounds, each of
its points named.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

import medsweep.report.style as style
from medsweep import metrics as registry
from medsweep.report.collect import complete, config_axes
from medsweep.report.stats import summarize

log = logging.getLogger("medsweep.report")  # one logger for the package, as before it was split

COSTS = {"seconds_per_answer": "seconds per answer", "gpu_hours": "GPU-hours"}  # lower is cheaper, always
FRONT = "Pareto front"


def pareto_front(cost: Sequence[float], quality: Sequence[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the points on the Pareto front, cheapest first: no other point costs no more and scores no worse
    with one of the two strictly better. Equal points are all on it (neither beats the other); NaN never is."""
    c = np.asarray(cost, dtype=float)
    q = np.asarray(quality, dtype=float) * (1.0 if higher_is_better else -1.0)
    ok = np.isfinite(c) & np.isfinite(q)
    front = []
    for i in np.flatnonzero(ok):
        no_worse = ok & (c <= c[i]) & (q >= q[i])
        if not (no_worse & ((c < c[i]) | (q > q[i]))).any():
            front.append(int(i))
    return sorted(front, key=lambda i: (c[i], -q[i], i))


def _interval(table: pd.DataFrame, name: str) -> np.ndarray | None:
    """The 2×n error bar lengths of a summarize column, None where it has no interval."""
    if f"{name} lo" not in table or table[f"{name} lo"].isna().all():
        return None
    mean = table[name].to_numpy(dtype=float)
    low, high = table[f"{name} lo"].to_numpy(dtype=float), table[f"{name} hi"].to_numpy(dtype=float)
    return np.nan_to_num(np.vstack([mean - low, high - mean]), nan=0.0)


@style.styled
def plot_quality_vs_cost(df: pd.DataFrame, metric: str = "f1"):
    """``metric`` against each measured cost (a panel each), one point per configuration, the front marked."""
    done = complete(df)
    if metric not in done or done[metric].isna().all():
        log.info("skipping quality_vs_cost_%s.png: %s not measured", metric, metric)
        return None
    costs = [c for c in COSTS if c in done and (done[c].fillna(0) > 0).any()]
    if not costs:
        log.info("skipping quality_vs_cost_%s.png: no cost measured (seconds per answer, GPU-hours)", metric)
        return None
    axes = config_axes(done)
    k = style.scale(metric)
    table = summarize(done, axes, {metric: metric, **{c: c for c in costs}}, primary=metric, scale={metric: k})
    shown = [a for a in axes if a != "model" or table[a].nunique(dropna=False) > 1] or axes
    names = [style.config_label({a: row[a] for a in shown}) for _, row in table.iterrows()]
    higher = registry.higher_is_better(metric)
    fig, panels = style.new_figure(style.COLUMN * len(costs), 2.6, ncols=len(costs))
    label = style.metric_label(metric)
    for ax, cost in zip(np.ravel(panels), costs, strict=True):
        x, y = table[cost].to_numpy(dtype=float), table[metric].to_numpy(dtype=float)
        front = pareto_front(x, y, higher)
        ax.errorbar(x, y, xerr=_interval(table, cost), yerr=_interval(table, metric), linestyle="none",
                    marker="o", color="#999999", ecolor="#cccccc", label="configurations")
        ax.plot(x[front], y[front], drawstyle="steps-post", marker="o", color=style.PALETTE[0], label=FRONT,
                zorder=3)
        for n, i in enumerate(front):  # alternately above and below: neighbours on a dense front do not overlap
            ax.annotate(names[i], (x[i], y[i]), xytext=(4, 3 if n % 2 == 0 else -8), textcoords="offset points",
                        fontsize=6)
        spread = [*y, *(y - _bar(table, metric, 0)), *(y + _bar(table, metric, 1))]
        ax.set_ylim(*style.value_limits(spread, metric))
        right = float(np.nanmax(x + _bar(table, cost, 1)))
        ax.set_xlim(0, right * 1.15 if math.isfinite(right) and right > 0 else 1.0)
        ax.set(xlabel=f"{COSTS[cost]} (lower is cheaper)", ylabel=label, title=f"{label} vs {COSTS[cost]}")
        ax.legend(loc="lower right" if higher else "upper right")
    return fig


def _bar(table: pd.DataFrame, name: str, side: int) -> np.ndarray:
    bars = _interval(table, name)
    return bars[side] if bars is not None else np.zeros(len(table))
