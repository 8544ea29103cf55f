"""Figures of the report (matplotlib's Agg canvas, no pyplot state): the metric per epoch of each model's best
configuration, inference latency by profile and model, and a heatmap of the mean metric over two hyperparameter
axes. Each is rendered to PNG in memory and written through record's atomic writes; a figure without data is
skipped and logged.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from medsweep.record import atomic_write_bytes
from medsweep.report.collect import LATENCY, SEED, _as_dict, complete, config_axes, varying_axes
from medsweep.report.tables import _check_axes, _num, by_config, by_profile

log = logging.getLogger("medsweep.report")  # one logger for the package, as before it was split


def _save(fig, path: Path) -> Path:
    """Render ``fig`` as PNG and write it to ``path`` through record's atomic write; return ``path``."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, png.getvalue())
    return path


def _figure():
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state
    fig = Figure(figsize=(6.4, 4.2))
    return fig, fig.subplots()


def _epoch_frame(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Long table (run_dir, model, epoch, metric) from the ``epochs`` of complete runs.

    Per model, only runs of its best configuration are used when they have epochs.
    """
    done = complete(df)
    models = done["model"] if "model" in done else pd.Series("run", index=done.index)
    rows = [{"run_dir": run_dir, "model": model, "epoch": e.get("epoch"),
             metric: _as_dict(e.get("metrics")).get(metric)}
            for run_dir, model, epochs in zip(done["run_dir"], models, done["_epochs"], strict=True)
            for e in epochs if isinstance(e, dict)]
    long = pd.DataFrame(rows, columns=["run_dir", "model", "epoch", metric]).dropna()
    if long.empty or "f1" not in done:
        return long
    best = by_config(done).query("best")
    axes = [a for a in config_axes(done) if a in best]
    best_runs = done.merge(best[axes], on=axes)["run_dir"] if axes else done["run_dir"]
    preferred = long[long["run_dir"].isin(best_runs)]
    return pd.concat([preferred, long[~long["model"].isin(preferred["model"])]])


def plot_metric_vs_epoch(df: pd.DataFrame, path: Path, metric: str = "f1") -> Path | None:
    """One line per model: ``metric`` (mean over runs) against epoch."""
    long = _epoch_frame(df, metric)
    if long.empty:
        log.info("skipping %s: no run has per-epoch %s (eval.every_epoch)", path.name, metric)
        return None
    table = long.pivot_table(index="epoch", columns="model", values=metric, aggfunc="mean")
    fig, ax = _figure()
    table.plot(ax=ax, marker="o")
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch (best config per model)")
    ax.set_xticks(table.index)
    return _save(fig, path)


def plot_latency_by_profile(df: pd.DataFrame, path: Path) -> Path | None:
    """Grouped bars: mean seconds per answer per profile, one bar per model."""
    table = by_profile(df)
    per_answer = LATENCY["seconds_per_answer"]
    if table.empty or per_answer not in table:
        log.info("skipping %s: no latency measured", path.name)
        return None
    index = "profile" if "profile" in table else None
    columns = "model" if "model" in table else None
    if index is None:
        table, index = table.assign(profile="all"), "profile"
    bars = table.pivot_table(index=index, columns=columns, values=per_answer, aggfunc="mean") \
        if columns else table.set_index(index)[[per_answer]]
    fig, ax = _figure()
    bars.plot.bar(ax=ax, rot=0)
    ax.set(xlabel="profile", ylabel="seconds per answer", title="Inference latency")
    return _save(fig, path)


def plot_heatmap(df: pd.DataFrame, path: Path, metric: str, ax1: str, ax2: str) -> Path:
    """Mean ``metric`` over two axes as an annotated heatmap."""
    table = complete(df).pivot_table(index=ax1, columns=ax2, values=metric, aggfunc="mean")
    fig, ax = _figure()
    image = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [_num(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [_num(i) for i in table.index])
    for (i, j), v in np.ndenumerate(table.to_numpy(dtype=float)):
        if not math.isnan(v):
            color = "black" if image.norm(v) > 0.6 else "white"  # readable on viridis
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", color=color)
    ax.set(xlabel=ax2, ylabel=ax1, title=f"mean {metric}")
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def write_figures(df: pd.DataFrame, out_dir, metric: str = "f1",
                  heat_axes: list[str] | None = None) -> list[Path]:
    """PNG figures in ``out_dir/report/``; skipped figures are logged. Returns written paths."""
    report_dir = Path(out_dir) / "report"
    written = [plot_metric_vs_epoch(df, report_dir / "metric_vs_epoch.png", metric),
               plot_latency_by_profile(df, report_dir / "latency_by_profile.png")]
    axes = _check_axes(df, heat_axes or [])[:2]
    if len(axes) < 2:
        axes = [a for a in varying_axes(complete(df)) if a != SEED][:2]
    if len(axes) == 2 and metric in df and complete(df)[metric].notna().any():
        name = f"heatmap_{metric}_{axes[0]}_{axes[1]}.png"
        written.append(plot_heatmap(df, report_dir / name, metric, *axes))
    else:
        log.info("skipping heatmap: fewer than two hyperparameter axes vary")
    return [p for p in written if p is not None]
