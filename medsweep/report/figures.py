"""Figures of the report, each answering one question at a glance: how the metric moves with the epochs (a line per
configuration, its 95% interval over seeds as a band), how it depends on two axes (a heatmap with the mean and the
significance mark of signif.py in every cell), what each profile costs in latency per model (grouped bars with a
95% interval over runs), and which configurations are worth their cost (pareto.py). Each ``plot_*`` function takes
the run frame and returns the matplotlib Figure (None, logged, when there is nothing to draw), so that the tests
read what was drawn; ``write_figures`` renders them to PNG in ``<out>/report/`` through record's atomic writes.
The look (sizes, fonts, palette) is style.py's, for every figure.
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

import medsweep.report.style as style
from medsweep import metrics as registry
from medsweep.record import atomic_write_bytes
from medsweep.report.collect import LATENCY, SEED, _as_dict, _number, complete, config_axes, varying_axes
from medsweep.report.pareto import plot_quality_vs_cost
from medsweep.report.signif import annotate
from medsweep.report.stats import _per_example, bootstrap_interval, summarize, t_interval
from medsweep.report.tables import _check_axes, _mark_best, _num

log = logging.getLogger("medsweep.report")  # one logger for the package, as before it was split

MAX_SERIES = 8  # lines of the epoch figure: the best configurations by their last epoch; more would not be read
MAX_HEATMAPS = 3  # pairs of varying axes drawn when the caller names none


def _save(fig, path: Path) -> Path:
    """Render ``fig`` as PNG and write it to ``path`` through record's atomic write; return ``path``."""
    atomic_write_bytes(path, style.png(fig))
    return path


def _label_axes(done: pd.DataFrame, axes: list[str]) -> list[str]:
    """The axes that tell configurations apart: ``model`` only when more than one was run."""
    shown = [a for a in axes if a != "model" or done[a].nunique(dropna=False) > 1]
    return shown or axes


# --------------------------------------------------------------------------- metric vs epoch

def _epoch_frame(done: pd.DataFrame, metric: str, axes: list[str]) -> pd.DataFrame:
    """Long table (axes..., seed, epoch, value) from the ``epochs`` of the complete runs; value scaled as tables."""
    k = style.scale(metric)
    rows = [{**{a: run[a] for a in axes}, "_seed": run.get(SEED), "epoch": float(e["epoch"]),
             "value": float(_as_dict(e.get("metrics"))[metric]) * k}
            for _, run in done.iterrows() for e in run["_epochs"]
            if isinstance(e, dict) and _number(e.get("epoch")) and _number(_as_dict(e.get("metrics")).get(metric))]
    return pd.DataFrame(rows, columns=[*axes, "_seed", "epoch", "value"])


def _last_epoch_bootstrap(runs: pd.DataFrame, metric: str, last: float) -> tuple[float, float] | None:
    """95% bootstrap over eval examples of a single run, when its final evaluation is its last epoch's."""
    if len(runs) != 1 or metric not in runs or not _number(runs[metric].iloc[0]):
        return None
    k = style.scale(metric)
    if not math.isclose(float(runs[metric].iloc[0]) * k, last, rel_tol=1e-6, abs_tol=1e-9):
        return None
    scores = _per_example(runs, metric, float(runs[metric].iloc[0]))
    if scores is None:
        return None
    low, high = bootstrap_interval(scores)
    return low * k, high * k


@style.styled
def plot_metric_vs_epoch(df: pd.DataFrame, metric: str = "f1"):
    """One line per configuration: the mean ``metric`` over its seeds per epoch, a 95% t band over the seeds (or a
    bootstrap error bar at the last epoch of a single run); the best MAX_SERIES configurations by the last epoch."""
    done = complete(df)
    axes = [a for a in config_axes(done) if a in done]
    long = _epoch_frame(done, metric, axes)
    if long.empty:
        log.info("skipping metric_vs_epoch.png: no run has per-epoch %s (eval.every_epoch)", metric)
        return None
    groups = list(long.groupby(axes, dropna=False, sort=True)) if axes else [((), long)]
    series = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        per_seed = group.groupby(["epoch", "_seed"], dropna=False)["value"].mean()  # a re-run seed counts once
        rows = []
        for epoch, values in per_seed.groupby(level="epoch"):
            mean, low, high = t_interval(values) if len(values) >= 2 else (float(values.iloc[0]), math.nan, math.nan)
            rows.append((epoch, mean, low, high))
        runs = done[np.logical_and.reduce([done[a].eq(v) if pd.notna(v) else done[a].isna()
                                           for a, v in zip(axes, key, strict=True)])] if axes else done
        values = dict(zip(axes, key, strict=True))
        series.append((values, np.array(rows, dtype=float), _last_epoch_bootstrap(runs, metric, rows[-1][1])))
    lower = not registry.higher_is_better(metric)
    series.sort(key=lambda s: s[1][-1, 1] if lower else -s[1][-1, 1])
    shown = series[:MAX_SERIES]
    label_axes = _label_axes(done, axes)
    fig, ax = style.new_figure(style.COLUMN if len(shown) <= 3 else style.PAGE, 2.6)
    limits: list[float] = []
    for values, points, boot in shown:
        epochs, mean, low, high = points.T
        line, = ax.plot(epochs, mean, marker="o", label=style.config_label({a: values[a] for a in label_axes}))
        if np.isfinite(low).any():
            # fainter when many overlap: the lines stay readable through the bands
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2 if len(shown) <= 3 else 0.08,
                            linewidth=0)
        if boot is not None:
            ax.errorbar([epochs[-1]], [mean[-1]], yerr=[[mean[-1] - boot[0]], [boot[1] - mean[-1]]],
                        color=line.get_color(), linestyle="none")
        limits += [*mean, *low, *high, *(boot or ())]
    ax.set_ylim(*style.value_limits(limits, metric))
    epochs = sorted(long["epoch"].unique())
    if len(epochs) <= 12:
        ax.set_xticks(epochs, [_num(e) for e in epochs])
    what = f"best {len(shown)} of {len(series)} configurations" if len(shown) < len(series) else "per configuration"
    ax.set(xlabel="epoch", ylabel=style.metric_label(metric), title=f"{style.metric_label(metric)} per epoch ({what})")
    where: dict = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if len(shown) > 3 else {}
    style.legend_if_many(ax, None, **where)
    return fig


# --------------------------------------------------------------------------- heatmap

def heatmap_cells(df: pd.DataFrame, metric: str, rows: str, columns: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(means, marks): the mean ``metric`` (scaled as the tables) and signif.py's mark of every combination of the
    two axes, rows × columns. Cells are compared with the best of their model where ``model`` is an axis, else
    with the best cell."""
    done = complete(df)
    by = [rows, columns]
    table = summarize(done, by, {metric: metric}, primary=metric, scale={metric: style.scale(metric)})
    table = _mark_best(table, metric, lower=not registry.higher_is_better(metric))
    table = annotate(table, done, by, metric, metric)
    means = table.pivot(index=rows, columns=columns, values=metric)
    marks = table.pivot(index=rows, columns=columns, values="mark").reindex_like(means).fillna("")
    return means, marks


@style.styled
def plot_heatmap(df: pd.DataFrame, metric: str, rows: str, columns: str):
    """The mean ``metric`` over two axes, each cell with its value and significance mark; a labelled colour bar,
    brighter is better (the scale is reversed for a lower-is-better metric)."""
    import matplotlib

    means, marks = heatmap_cells(df, metric, rows, columns)
    values = means.to_numpy(dtype=float)
    width = style.COLUMN if values.shape[1] <= 4 else style.PAGE
    fig, ax = style.new_figure(width, max(1.8, 0.9 + 0.32 * values.shape[0]))
    cmap = matplotlib.colormaps[style.CMAP if registry.higher_is_better(metric) else style.CMAP + "_r"]
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap.with_extremes(bad="#eeeeee"), aspect="auto")
    ax.grid(False)
    ax.set_xticks(range(values.shape[1]), [_num(c) for c in means.columns])
    ax.set_yticks(range(values.shape[0]), [_num(i) for i in means.index])
    for (i, j), v in np.ndenumerate(values):
        if math.isnan(v):
            continue
        r, g, b, _ = cmap(image.norm(v))
        mark = marks.iat[i, j]
        ax.text(j, i, f"{v:.3g}" + (f" {mark}" if mark else ""), ha="center", va="center", fontsize=7,
                color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")  # readable on the cell
    label = style.metric_label(metric)
    ax.set(xlabel=columns, ylabel=rows, title=f"{label} by {rows} and {columns}")
    fig.colorbar(image, ax=ax, label=f"mean {label}")
    return fig


# --------------------------------------------------------------------------- latency

@style.styled
def plot_latency_by_profile(df: pd.DataFrame):
    """Grouped bars: mean seconds per answer per profile (x) and model (bars), a 95% t interval over the runs."""
    done = complete(df)
    metric = "seconds_per_answer"
    if metric not in done or done[metric].isna().all():
        log.info("skipping latency_by_profile.png: no latency measured")
        return None
    done = done[done[metric].notna()].assign(
        _profile=done["profile"].astype(str) if "profile" in done else "all",
        _model=done["model"].astype(str) if "model" in done else LATENCY[metric])
    profiles, models = sorted(done["_profile"].unique()), sorted(done["_model"].unique())
    fig, ax = style.new_figure(style.COLUMN if len(profiles) * len(models) <= 6 else style.PAGE, 2.4)
    width = 0.8 / max(len(models), 2)  # one model: a bar of half a slot, not a slab
    top = 0.0
    for m, model in enumerate(models):
        x: list[float] = []
        heights: list[float] = []
        errors: list[list[float]] = [[], []]
        dots: tuple[list[float], list[float]] = ([], [])
        for p, profile in enumerate(profiles):
            runs = done.loc[(done["_profile"] == profile) & (done["_model"] == model), metric].astype(float)
            if runs.empty:
                continue
            mean, low, high = t_interval(runs) if len(runs) >= 2 else (float(runs.iloc[0]),) * 3
            x.append(p + (m - (len(models) - 1) / 2) * width)
            heights.append(mean)
            errors[0].append(mean - max(low, 0.0))
            errors[1].append(high - mean)
            dots[0].extend([x[-1]] * len(runs))
            dots[1].extend(runs)
            top = max(top, high, *runs)
        ax.bar(x, heights, width * 0.9, yerr=errors, label=model)
        ax.plot(*dots, linestyle="none", marker="o", markersize=2.5, color="black", alpha=0.6, label="_runs")
    ax.set_xticks(range(len(profiles)), profiles)
    ax.set_xlim(-0.6, len(profiles) - 0.4)  # a slot per profile, whatever the bars' widths
    ax.set_ylim(0, top * 1.08 or 1.0)
    title = "Inference latency per profile" + (f": {models[0]}" if len(models) == 1 and "model" in done else
                                                " and model")
    ax.set(xlabel="profile", ylabel="seconds per answer", title=title)
    style.legend_if_many(ax, title="model")
    return fig


# --------------------------------------------------------------------------- writing

def heatmap_pairs(df: pd.DataFrame, heat_axes: list[str] | None = None) -> list[tuple[str, str]]:
    """The pairs of axes drawn as heatmaps: the caller's first two, else pairs of the varying non-seed axes."""
    chosen = _check_axes(df, heat_axes or [])[:2]
    if len(chosen) == 2:
        return [(chosen[0], chosen[1])]
    varying = [a for a in varying_axes(complete(df)) if a != SEED]
    return list(itertools.combinations(varying, 2))[:MAX_HEATMAPS]


def write_figures(df: pd.DataFrame, out_dir, metric: str = "f1",
                  heat_axes: list[str] | None = None) -> list[Path]:
    """PNG figures in ``out_dir/report/``; skipped figures are logged. Returns written paths."""
    report_dir = Path(out_dir) / "report"
    drawn = {"metric_vs_epoch.png": plot_metric_vs_epoch(df, metric),
             f"quality_vs_cost_{metric}.png": plot_quality_vs_cost(df, metric),
             "latency_by_profile.png": plot_latency_by_profile(df)}
    pairs = heatmap_pairs(df, heat_axes)
    if pairs and metric in df and complete(df)[metric].notna().any():
        for rows, columns in pairs:
            drawn[f"heatmap_{metric}_{rows}_{columns}.png"] = plot_heatmap(df, metric, rows, columns)
    else:
        log.info("skipping heatmap: fewer than two hyperparameter axes vary")
    return [_save(fig, report_dir / name) for name, fig in drawn.items() if fig is not None]
