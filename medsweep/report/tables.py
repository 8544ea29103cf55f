"""Tables of the report: the views of a run frame (best configuration per model, i.e. Table 4; all configurations;
a pivot of one metric; latency by profile; failures; the base -> stage 1 -> stage 2 chain), their Markdown, CSV and
LaTeX renderings with confidence intervals merged into one cell, and ``write_tables``, which writes each view and the
combined ``report.md`` through record's atomic writes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from medsweep import metrics as registry
from medsweep.errors import MedsweepError
from medsweep.record import atomic_write_text
from medsweep.report.agreement import HEADING as AGREEMENT
from medsweep.report.agreement import NOTE as AGREEMENT_NOTE
from medsweep.report.agreement import metric_agreement
from medsweep.report.captions import caption
from medsweep.report.collect import (
    LATENCY,
    SCALE,
    TABLE4,
    _as_dict,
    _eval_set,
    axis_columns,
    complete,
    config_axes,
    stage_chain,
)
from medsweep.report.definitions import TABLE_NOTE, refuse_marks
from medsweep.report.definitions import of as definitions_of
from medsweep.report.signif import NOTE as SIGNIF_NOTE
from medsweep.report.signif import P_BEST, annotate
from medsweep.report.stats import N_BOOT, summarize
from medsweep.runrecord import RunRecord

CI_NOTE = (
    "95% confidence intervals: `mean ± half-width` is a Student-t interval over seeds "
    "(t over seeds, df = n − 1) for configurations with ≥ 2 seeds; `mean [low, high]` is "
    f"a percentile bootstrap over eval examples ({N_BOOT} resamples, seed 0) for "
    "configurations with a single run and per-example scores; a bare number is a single "
    "run without an interval. The `CI` column says which was used."
)


# --------------------------------------------------------------------------- views

def _mark_best(table: pd.DataFrame, value: str, lower: bool = False) -> pd.DataFrame:
    """Add a bool ``best`` column: the row with the highest (``lower``: lowest) ``value``
    per model."""
    table["best"] = False
    if value not in table or table[value].isna().all():
        return table
    ranked = table.dropna(subset=[value])
    pick = "idxmin" if lower else "idxmax"
    keys = ranked.groupby("model", dropna=False)[value].agg(pick) if "model" in table \
        else pd.Series([getattr(ranked[value], pick)()])
    table.loc[keys.to_numpy(), "best"] = True
    return table


def _present(df: pd.DataFrame, names: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in names.items() if k in df.columns and df[k].notna().any()}


def by_config(df: pd.DataFrame, metric: str = "f1") -> pd.DataFrame:
    """Every configuration (varying non-seed axes) with Table 4 metrics and a ``best`` flag."""
    _check_metric(df, metric)
    done = complete(df)
    metrics = _present(done, TABLE4)
    if metric not in metrics:
        metrics[metric] = metric
    by = config_axes(done)
    table = summarize(done, by, metrics, primary=metric, scale=SCALE)
    if table.empty:
        return table
    table = _mark_best(table, metrics[metric], lower=not registry.higher_is_better(metric))
    if definitions_of(done).differing:
        return refuse_marks(table, "the table of all configurations")
    return annotate(table, done, by, metric, metrics[metric])


def by_model(df: pd.DataFrame, metric: str = "f1") -> pd.DataFrame:
    """Table 4: per model, its best configuration by mean ``metric`` (default F1).

    Columns: the model and config axes, ``n``, ``CI``, then EM % (exact_match × 100), BLEU,
    ROUGE-1/2/L, F1, Inference s/answer, Perplexity (each with ``lo``/``hi`` CI bounds),
    ``Δ <metric>`` (finetuned − baseline) where baselines were measured, ``p vs base`` where it was tested
    and the ``mark`` of signif.py (``*=``: other configurations are not distinguishable from it).
    """
    table = by_config(df, metric)
    if table.empty:
        return table
    best = table[table["best"]].drop(columns=["best", P_BEST], errors="ignore")
    return best.reset_index(drop=True)


def pivot(df: pd.DataFrame, by: list[str] | None = None, metric: str = "f1") -> pd.DataFrame:
    """``metric`` per combination of the ``by`` axes: mean, 95% CI (lo/hi), n and method.

    Indexed by the ``by`` axes (default: the varying non-seed axes). With ``model`` in
    ``by`` a ``best`` column marks the best row per model, and signif.py's paired tests and ``mark`` are added.
    """
    _check_metric(df, metric)
    by = _check_axes(df, by) if by else config_axes(complete(df))
    table = summarize(df, by, {metric: metric}, primary=metric)
    if table.empty:
        return table
    if "model" in by:
        table = _mark_best(table, metric, lower=not registry.higher_is_better(metric))
        table = refuse_marks(table, f"the {metric} pivot") if definitions_of(complete(df)).differing \
            else annotate(table, df, by, metric, metric)
    return table.set_index(by) if by else table


def by_profile(df: pd.DataFrame) -> pd.DataFrame:
    """Mean latency per ``profile`` × ``model`` over complete runs."""
    done = complete(df)
    keys = [k for k in ("profile", "model") if k in done.columns]
    cols = _present(done, LATENCY)
    if done.empty or not keys or not cols:
        return pd.DataFrame(columns=keys + ["n"] + list(cols.values()))
    grouped = done.groupby(keys, dropna=False)
    table = grouped[list(cols)].mean().rename(columns=cols)
    table.insert(0, "n", grouped.size())
    return table.reset_index()


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """run_dir, status and error of every run that is not complete."""
    return df.loc[df["status"] != "complete", ["run_dir", "status", "error"]] \
        .reset_index(drop=True)


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    """The full run table without the private nested columns."""
    return df[[c for c in df.columns if not c.startswith("_")]]


def _check_axes(df: pd.DataFrame, axes) -> list[str]:
    """``axes`` as a list; MedsweepError naming the known axes if one is unknown."""
    unknown = [a for a in axes if a not in axis_columns(df)]
    if unknown:
        raise MedsweepError(f"unknown axis {', '.join(unknown)}; axes in these runs: "
                            f"{', '.join(axis_columns(df)) or 'none'}")
    return list(axes)


def _check_metric(df: pd.DataFrame, metric: str) -> None:
    """Raise MedsweepError for a metric that is neither measured nor a known metric name."""
    if metric not in df.columns and metric not in {*TABLE4, *LATENCY}:
        known = [m for m in df.columns if m in TABLE4 or m in LATENCY]
        raise MedsweepError(f"unknown metric {metric!r}; metrics in these runs: "
                            f"{', '.join(known) or 'none'}")


def stages(run_dir, metrics: dict[str, str] | None = None) -> pd.DataFrame:
    """Base -> stage 1 -> stage 2 ...: one row per stage of a continued fine-tuning chain ending at ``run_dir``
    (the base row is the first stage's baseline), with the headline metrics and the hash of the evaluated
    questions (``eval set``: equal hashes = the same held-out questions)."""
    metrics = metrics or {k: v for k, v in TABLE4.items() if registry.BY_NAME[k].kind != "decision"}
    rows = []
    for i, d in enumerate(stage_chain(run_dir), start=1):
        rec = RunRecord.read(d)
        axes = _as_dict(rec.axes)
        if i == 1 and rec.baseline:
            rows.append({"stage": "base", "model": axes.get("model"), "data": "", "run": "",
                         "eval set": _eval_set(d, "predictions_baseline.jsonl"),
                         **{name: _as_dict(rec.baseline).get(k) for k, name in metrics.items()}})
        rows.append({"stage": f"stage {i}", "model": axes.get("model"), "data": axes.get("data"), "run": d.name,
                     "eval set": _eval_set(d, "predictions.jsonl"),
                     **{name: _as_dict(rec.metrics).get(k) for k, name in metrics.items()}})
    table = pd.DataFrame(rows)
    scale = {metrics[k]: v for k, v in SCALE.items() if k in metrics}
    for name, k in scale.items():
        table[name] = pd.to_numeric(table[name], errors="coerce") * k
    return table.dropna(axis="columns", how="all")


# --------------------------------------------------------------------------- formatting

def _num(x) -> str:
    """Compact number formatting for markdown/LaTeX cells."""
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, (bool, np.bool_)):
        return str(x)
    if isinstance(x, (int, np.integer)) or (isinstance(x, float) and x.is_integer()):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{x:.4g}"
    return str(x)


def _cell(mean, low, high, method: str) -> str:
    if pd.isna(low) or pd.isna(high):
        return _num(mean)
    if method.startswith("t"):
        return f"{_num(mean)} ± {float(high - low) / 2:.2g}"
    return f"{_num(mean)} [{_num(low)}, {_num(high)}]"


def display(view: pd.DataFrame) -> pd.DataFrame:
    """Readable copy of a view: ``X``, ``X lo``, ``X hi`` merged into one cell; the ``best`` column shows the
    ``mark`` of signif.py (``*`` where a view has no mark); p-values with two significant digits."""
    table = view.reset_index() if view.index.names[0] is not None else view.copy()
    for name in [c for c in table.columns if f"{c} lo" in table and f"{c} hi" in table]:
        method = table["CI"] if "CI" in table else pd.Series("", index=table.index)
        table[name] = [_cell(m, lo, hi, str(k)) for m, lo, hi, k in
                       zip(table[name], table[f"{name} lo"], table[f"{name} hi"], method, strict=True)]
        table = table.drop(columns=[f"{name} lo", f"{name} hi"])
    if "mark" in table:
        table["best"] = table.pop("mark")
    elif "best" in table:
        table["best"] = table["best"].map({True: "*", False: ""})
    for column in [c for c in table.columns if str(c).startswith("p vs ")]:
        table[column] = [f"{p:.2g}" if pd.notna(p) else "" for p in table[column]]
    return table.map(_num) if not table.empty else table.astype(str)


def to_markdown(view: pd.DataFrame) -> str:
    """Markdown table of a view (or a note when it is empty)."""
    if view.empty:
        return "_(none)_"
    return display(view).to_markdown(index=False)


def to_latex(view: pd.DataFrame) -> str:
    """booktabs LaTeX table of a view."""
    tex = display(view).to_latex(index=False, escape=True)
    return tex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("†", r"\textdagger{}")


# --------------------------------------------------------------------------- writing

def _atomic_write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through record's atomic write (temp file, fsync, rename); return ``path``."""
    atomic_write_text(path, text)
    return path


def views(df: pd.DataFrame, by: list[str] | None = None, metric: str = "f1") -> dict:
    """The report views by file stem, in report order: (heading, DataFrame)."""
    return {
        "by_model": ("Best configuration per model (Table 4)", by_model(df, metric)),
        "by_config": ("All configurations", by_config(df, metric)),
        f"pivot_{metric}": (f"{metric} by {', '.join(by or config_axes(complete(df)))}",
                            pivot(df, by, metric)),
        "by_profile": ("Latency by profile and model", by_profile(df)),
        "failures": ("Failed, unfinished and corrupt runs", failures(df)),
    }


def _summary_line(df: pd.DataFrame) -> str:
    counts = df["status"].value_counts()
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    gpu = df["gpu_hours"].sum() if "gpu_hours" in df else 0.0
    return f"{len(df)} runs ({parts}); {gpu:.2f} GPU hours in total."


def write_tables(df: pd.DataFrame, out_dir, by: list[str] | None = None,
                 metric: str = "f1", figures=(), computed: dict | None = None) -> list[Path]:
    """Write each view as .md/.csv/.tex, ``runs.csv`` and a combined ``report.md``; ``computed``: the ``views``
    already computed (the HTML report shows the same ones; their paired tests are not run twice).

    Files go to ``out_dir/report/``; returns the written paths (report.md last).
    """
    report_dir = Path(out_dir) / "report"
    written, sections = [], []
    defined = definitions_of(complete(df))
    for stem, (heading, view) in (computed if computed is not None else views(df, by, metric)).items():
        markdown = to_markdown(view)
        written.append(_atomic_write(report_dir / f"{stem}.md", markdown + "\n"))
        written.append(_atomic_write(report_dir / f"{stem}.csv", view.to_csv()
                                     if view.index.names[0] is not None
                                     else view.to_csv(index=False)))
        written.append(_atomic_write(report_dir / f"{stem}.tex", to_latex(view)))
        marked = "mark" in view or "best" in view  # the tables whose marks the definitions decide
        note = f"{TABLE_NOTE}\n\n" if defined.differing and marked and not view.empty else ""
        sections.append(f"## {heading}\n\n{note}{markdown}\n")
    agree = metric_agreement(df)
    if not agree.empty:
        written.append(_atomic_write(report_dir / "agreement.csv", agree.to_csv(index=False)))
        sections.append(f"## {AGREEMENT}\n\n{AGREEMENT_NOTE}\n\n{to_markdown(agree)}\n")
    if not complete(df).empty:
        sections.append(f"## Metric definitions\n\n{defined.section()}\n")
    written.append(_atomic_write(report_dir / "runs.csv", runs_table(df).to_csv(index=False)))
    images = [line for f in figures for line in (f"![{Path(f).stem}]({Path(f).name})", "",
                                                 *([f"*{caption(f)}*", ""] if caption(f) else []))]
    text = "\n".join([
        "# medsweep report", "", _summary_line(df), "", CI_NOTE, "", SIGNIF_NOTE, "", *sections,
        *(["## Figures", "", *images] if images else []),
        "Full run table: `runs.csv`.", "",
    ])
    written.append(_atomic_write(report_dir / "report.md", text))
    return written
