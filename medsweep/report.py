"""Reporting: collect run records of a sweep into tables, figures and a markdown report.

A run directory holds ``metrics.json`` (written by the training entrypoint). A directory
with ``.hydra/config.yaml`` (or ``config.yaml``) but no ``metrics.json`` is an unfinished
run; a ``metrics.json`` that does not parse or has no ``status`` is corrupt. Both are
listed as failures, never crash the report.

Public API::

    collect(paths) -> DataFrame            one row per run dir
    varying_axes(df) -> list[str]          axes taking more than one value
    by_model(df), by_config(df), pivot(df, by, metric), by_profile(df), failures(df)
    write_tables(df, out_dir, by=None, metric="f1", figures=()) -> list[Path]
    write_figures(df, out_dir, metric="f1", heat_axes=None) -> list[Path]
    report_sweep(sweep_dir) -> Path        collect + figures + tables, returns report.md
    main(argv=None) -> int                 the ``medsweep-report`` CLI

Confidence intervals (95%): where a configuration (all non-seed axes equal) has >= 2
complete runs with different ``train.seed``, a Student-t interval over seeds; where it
has a single run with ``per_example`` scores, a percentile bootstrap over eval examples
(1000 resamples, seed 0).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import sys
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from medsweep import metrics as registry
from medsweep.errors import MedsweepError
from medsweep.runrecord import STATUSES, TRAIN_COLUMNS, NotARecord, RunRecord

log = logging.getLogger(__name__)

SEED = "train.seed"
# Table 4 metrics: column name in the run table -> display name (in this order).
TABLE4 = {name: registry.label(name) for name in registry.TABLE4}
SCALE = registry.SCALE  # EM is reported in percent
LATENCY = {name: registry.short_label(name) for name in registry.LATENCY}
# Columns that are never axes (used when df.attrs["axes"] was lost, e.g. after pd.concat).
NOT_AXES = {"run_dir", "run_name", "status", "error", "gpu_hours", "n_eval",
            *TRAIN_COLUMNS, *TABLE4, *LATENCY}
N_BOOT = 1000
CI_NOTE = (
    "95% confidence intervals: `mean ± half-width` is a Student-t interval over seeds "
    "(t over seeds, df = n − 1) for configurations with ≥ 2 seeds; `mean [low, high]` is "
    f"a percentile bootstrap over eval examples ({N_BOOT} resamples, seed 0) for "
    "configurations with a single run and per-example scores; a bare number is a single "
    "run without an interval. The `CI` column says which was used. "
    "`*` marks the best configuration per model by mean F1."
)
# Two-sided 95% Student-t critical values for small df; larger df use a
# Cornish-Fisher expansion around the normal quantile (accurate to 1e-4 for df >= 7).
_T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706,
         6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622, 10: 2.2281}


# --------------------------------------------------------------------------- statistics

def t_critical(df: int) -> float:
    """Two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t_critical needs df >= 1, got {df}")
    if df in _T975:
        return _T975[df]
    z = NormalDist().inv_cdf(0.975)
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4))


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


# --------------------------------------------------------------------------- collecting

def _expand(paths: list[str]) -> list[Path]:
    """Expand globs (paths that match nothing are left out)."""
    return [Path(m) for p in paths
            for m in sorted(glob.glob(os.path.expanduser(p), recursive=True))]


def _related(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def find_run_dirs(paths: list[str]) -> list[Path]:
    """Run directories under ``paths`` (dirs, run dirs, metrics.json files or globs).

    A run dir has ``metrics.json`` or ``.hydra/config.yaml``. A dir with a plain
    ``config.yaml`` counts only if it is not inside/above another run dir and not in a
    hidden or ``wandb`` folder (wandb writes its own ``config.yaml`` files).
    """
    strong, weak = set(), set()
    for root in _expand(paths):
        if root.is_file():
            root = root.parent.parent if root.parent.name == ".hydra" else root.parent
        strong |= {p.parent.absolute() for p in root.rglob("metrics.json")}
        strong |= {p.parent.parent.absolute() for p in root.rglob(".hydra/config.yaml")}
        for p in root.rglob("config.yaml"):
            rel = p.parent.absolute().relative_to(root.absolute()).parts
            if not any(part.startswith(".") or part == "wandb" for part in rel):
                weak.add(p.parent.absolute())
    weak = {w for w in weak if not any(_related(w, s) for s in strong)}
    weak = {w for w in weak if not any(o != w and o in w.parents for o in weak)}
    return sorted(strong | weak)


def _as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def malformed(rec: dict) -> str | None:
    """Why a parsed record (its JSON: RunRecord.to_dict) cannot be trusted (hand-edited, truncated by another
    tool, another program's file), or None. A complete record needs a mapping of numeric metrics; every section
    has the type the writer gives it."""
    if rec["status"] not in STATUSES:
        return f"has an unknown status {str(rec['status'])[:40]!r}"
    for section in ("axes", "metrics", "baseline", "delta", "train", "per_example"):
        if rec.get(section) is not None and not isinstance(rec[section], dict):
            return f"'{section}' is not a mapping"
    if rec.get("epochs") is not None and not isinstance(rec["epochs"], list):
        return "'epochs' is not a list"
    for section in ("metrics", "baseline", "delta"):
        bad = next((k for k, v in (rec.get(section) or {}).items() if v is not None and not _number(v)), None)
        if bad is not None:
            return f"{section}.{bad} is not a number ({str(rec[section][bad])[:40]!r})"
    if rec["status"] == "complete" and not rec.get("metrics"):
        return "says complete but has no metrics"
    return None


def read_run(run_dir: Path) -> dict:
    """One row for ``run_dir``: status unfinished / corrupt / the recorded status."""
    row: dict[str, Any] = {"run_dir": str(run_dir), "run_name": run_dir.name, "status": "unfinished",
                           "error": None}
    if not (run_dir / "metrics.json").exists():
        return row
    try:
        rec = RunRecord.read(run_dir)
    except NotARecord:
        return {**row, "status": "corrupt", "error": "metrics.json has no 'status'"}
    except (OSError, ValueError) as e:
        return {**row, "status": "corrupt", "error": f"metrics.json unreadable: {e}"}
    raw = rec.to_dict()
    if "status" not in raw:
        return {**row, "status": "corrupt", "error": "metrics.json has no 'status'"}
    problem = malformed(raw)
    if problem:
        return {**row, "status": "corrupt", "error": f"metrics.json {problem}"}
    return {**rec.row(run_dir), "_axes": list(_as_dict(rec.axes)), "_per_example": _as_dict(rec.per_example),
            "_epochs": rec.epochs if isinstance(rec.epochs, list) else []}


def _integral_to_int(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Float columns holding whole numbers (ints with NaN) become nullable Int64."""
    for c in columns:
        s = df[c]
        if pd.api.types.is_float_dtype(s) and s.notna().any():
            if (s.dropna() % 1 == 0).all():
                df[c] = s.astype("Int64")
    return df


def collect(paths: list[str]) -> pd.DataFrame:
    """One row per run dir under ``paths``; raises MedsweepError if there is none.

    Private columns ``_per_example`` and ``_epochs`` carry the nested data used for
    bootstrap CIs and the per-epoch figure; ``df.attrs["axes"]`` lists the axis columns.
    """
    paths = [str(p) for p in paths]
    missing = [p for p in paths if not _expand([p])]
    rows = [read_run(d) for d in find_run_dirs(paths)]
    if not rows:
        raise MedsweepError("no run records (metrics.json or .hydra/config.yaml) found "
                            f"under: {' '.join(paths)}"
                            + (f" (no such path: {' '.join(missing)})" if missing else ""))
    for p in missing:
        log.warning("no such path: %s", p)
    axes = list(dict.fromkeys(a for r in rows for a in r.pop("_axes", [])))
    df = pd.DataFrame(rows)
    for c in ("_per_example", "_epochs"):
        if c not in df:
            df[c] = None
        df[c] = [v if isinstance(v, (dict, list)) else ({} if c == "_per_example" else [])
                 for v in df[c]]
    df = _integral_to_int(df, axes)
    df.attrs["axes"] = axes
    return df


# --------------------------------------------------------------------------- axes

def axis_columns(df: pd.DataFrame) -> list[str]:
    """Axis columns, in the order the run records list them."""
    if "axes" in df.attrs:
        return [a for a in df.attrs["axes"] if a in df.columns]
    return [c for c in df.columns if c not in NOT_AXES
            and not c.startswith(("_", "baseline.", "delta."))]


def varying_axes(df: pd.DataFrame) -> list[str]:
    """Axis columns that take more than one value (``train.seed`` included)."""
    return [a for a in axis_columns(df) if df[a].nunique(dropna=True) > 1]


def config_axes(df: pd.DataFrame) -> list[str]:
    """The axes that define a configuration: varying non-seed axes, always with ``model``."""
    axes = [a for a in varying_axes(df) if a != SEED]
    if "model" in df.columns and "model" not in axes:
        axes.insert(0, "model")
    return axes


def complete(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with status ``complete``."""
    out = df[df["status"] == "complete"].copy()
    out.attrs = dict(df.attrs)
    return out


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


# --------------------------------------------------------------------------- views

def by_config(df: pd.DataFrame, metric: str = "f1") -> pd.DataFrame:
    """Every configuration (varying non-seed axes) with Table 4 metrics and a ``best`` flag."""
    _check_metric(df, metric)
    done = complete(df)
    metrics = _present(done, TABLE4)
    if metric not in metrics:
        metrics[metric] = metric
    table = summarize(done, config_axes(done), metrics, primary=metric, scale=SCALE)
    if table.empty:
        return table
    return _mark_best(table, metrics[metric], lower=not registry.higher_is_better(metric))


def by_model(df: pd.DataFrame, metric: str = "f1") -> pd.DataFrame:
    """Table 4: per model, its best configuration by mean ``metric`` (default F1).

    Columns: the model and config axes, ``n``, ``CI``, then EM % (exact_match × 100), BLEU,
    ROUGE-1/2/L, F1, Inference s/answer, Perplexity (each with ``lo``/``hi`` CI bounds)
    and ``Δ <metric>`` (finetuned − baseline) where baselines were measured.
    """
    table = by_config(df, metric)
    if table.empty:
        return table
    return table[table["best"]].drop(columns="best").reset_index(drop=True)


def pivot(df: pd.DataFrame, by: list[str] | None = None, metric: str = "f1") -> pd.DataFrame:
    """``metric`` per combination of the ``by`` axes: mean, 95% CI (lo/hi), n and method.

    Indexed by the ``by`` axes (default: the varying non-seed axes). With ``model`` in
    ``by`` a ``best`` column marks the best row per model.
    """
    _check_metric(df, metric)
    by = _check_axes(df, by) if by else config_axes(complete(df))
    table = summarize(df, by, {metric: metric}, primary=metric)
    if table.empty:
        return table
    if "model" in by:
        table = _mark_best(table, metric, lower=not registry.higher_is_better(metric))
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


def stage_chain(run_dir) -> list[Path]:
    """The run and the runs it continued from (``train.init_adapter`` in their config.yaml), first stage first.
    A relative init_adapter that does not resolve from here is looked up next to the run (results/runs/<name>)."""
    import yaml

    chain: list[Path] = []
    current: Path | None = Path(run_dir).absolute()
    while current is not None and current not in chain:
        if not (current / "metrics.json").is_file():
            raise MedsweepError(f"{current}: no metrics.json (not a finished medsweep run)")
        chain.append(current)
        config = current / "config.yaml"
        cfg = yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else {}
        init = ((cfg or {}).get("train") or {}).get("init_adapter")
        if not init:
            break
        p = Path(init)
        p = p.parent if p.name == "adapter" else p
        current = p.absolute() if (p / "metrics.json").is_file() else current.parent / p.name
    return chain[::-1]


def _eval_set(run_dir: Path, name: str) -> str | None:
    """Short hash of the questions a run evaluated on (from its predictions file), to show they are the same."""
    import hashlib

    path = run_dir / name
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: answers may hold U+2028
    questions = [json.loads(line)["question"] for line in lines if line.strip()]
    return hashlib.sha256("\n".join(questions).encode()).hexdigest()[:8]


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
    """Readable copy of a view: ``X``, ``X lo``, ``X hi`` merged into one cell; ``*`` for best."""
    table = view.reset_index() if view.index.names[0] is not None else view.copy()
    for name in [c for c in table.columns if f"{c} lo" in table and f"{c} hi" in table]:
        method = table["CI"] if "CI" in table else pd.Series("", index=table.index)
        table[name] = [_cell(m, lo, hi, str(k)) for m, lo, hi, k in
                       zip(table[name], table[f"{name} lo"], table[f"{name} hi"], method, strict=True)]
        table = table.drop(columns=[f"{name} lo", f"{name} hi"])
    if "best" in table:
        table["best"] = table["best"].map({True: "*", False: ""})
    return table.map(_num) if not table.empty else table.astype(str)


def to_markdown(view: pd.DataFrame) -> str:
    """Markdown table of a view (or a note when it is empty)."""
    if view.empty:
        return "_(none)_"
    return display(view).to_markdown(index=False)


def to_latex(view: pd.DataFrame) -> str:
    """booktabs LaTeX table of a view."""
    tex = display(view).to_latex(index=False, escape=True)
    return tex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


# --------------------------------------------------------------------------- writing

def _atomic_write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
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
                 metric: str = "f1", figures=()) -> list[Path]:
    """Write each view as .md/.csv/.tex, ``runs.csv`` and a combined ``report.md``.

    Files go to ``out_dir/report/``; returns the written paths (report.md last).
    """
    report_dir = Path(out_dir) / "report"
    written, sections = [], []
    for stem, (heading, view) in views(df, by, metric).items():
        markdown = to_markdown(view)
        written.append(_atomic_write(report_dir / f"{stem}.md", markdown + "\n"))
        written.append(_atomic_write(report_dir / f"{stem}.csv", view.to_csv()
                                     if view.index.names[0] is not None
                                     else view.to_csv(index=False)))
        written.append(_atomic_write(report_dir / f"{stem}.tex", to_latex(view)))
        sections.append(f"## {heading}\n\n{markdown}\n")
    written.append(_atomic_write(report_dir / "runs.csv", runs_table(df).to_csv(index=False)))
    images = [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    text = "\n".join([
        "# medsweep report", "", _summary_line(df), "", CI_NOTE, "", *sections,
        *(["## Figures", "", *images, ""] if images else []),
        "Full run table: `runs.csv`.", "",
    ])
    written.append(_atomic_write(report_dir / "report.md", text))
    return written


# --------------------------------------------------------------------------- figures

def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
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


# --------------------------------------------------------------------------- entry points

def report_sweep(sweep_dir, metric: str = "f1") -> Path:
    """Collect a sweep, write figures and tables to ``sweep_dir/report``; return report.md."""
    df = collect([str(sweep_dir)])
    figures = write_figures(df, sweep_dir, metric)
    return write_tables(df, sweep_dir, metric=metric, figures=figures)[-1]


def log_wandb(df: pd.DataFrame, metric: str = "f1") -> None:
    """Log the Table 4 view and the full run table to one W&B run (job_type="report")."""
    try:
        import wandb
    except ImportError as e:
        raise MedsweepError("--wandb needs the wandb package (pip install wandb)") from e

    def table(view: pd.DataFrame):
        view = view.reset_index() if view.index.names[0] is not None else view
        return wandb.Table(dataframe=view.astype(object).where(view.notna(), None))

    try:
        run = wandb.init(job_type="report",
                         project=os.environ.get("WANDB_PROJECT", "medsweep"))
    except Exception as e:  # e.g. online mode without a login
        raise MedsweepError(f"wandb.init failed (set WANDB_MODE=offline?): {e}") from e
    run.log({"by_model": table(by_model(df, metric)), "runs": table(runs_table(df))})
    run.finish()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medsweep-report",
                                description="Tables and figures for medsweep run records.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="sweep dirs, run dirs or globs (searched recursively)")
    p.add_argument("--by", nargs="+", metavar="AXIS", help="axes of the pivot table/heatmap")
    p.add_argument("--metric", default="f1", help="metric for pivot, best config, figures")
    p.add_argument("--out", help="output dir (report/ is created in it); "
                                 "default: the first PATH if it is a directory")
    p.add_argument("--wandb", action="store_true", help="also log tables to W&B")
    p.add_argument("--stages", action="store_true", help="PATH is the last run of a continued fine-tuning chain "
                   "(train.init_adapter): print base -> stage 1 -> stage 2 on the same held-out questions")
    return p


def _print_markdown(text: str) -> None:
    """Rich rendering on a terminal, the plain markdown otherwise."""
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.markdown import Markdown
            Console().print(Markdown(text))
            return
        except ImportError:
            pass
    print(text)


def main(argv=None) -> int:
    """CLI entry point; returns 0 on success, 2 (one line on stderr) on a user error."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="medsweep-report: %(message)s")
    try:
        if args.stages:
            table = to_markdown(stages(args.paths[0]))
            print(table)
            if args.out:
                _atomic_write(Path(args.out) / "stages.md", table + "\n")
            return 0
        df = collect(args.paths)
        _check_metric(df, args.metric)
        out = Path(args.out) if args.out else (
            Path(args.paths[0]) if Path(args.paths[0]).is_dir() else Path.cwd())
        figures = write_figures(df, out, args.metric, heat_axes=args.by)
        report = write_tables(df, out, by=args.by, metric=args.metric, figures=figures)[-1]
        _print_markdown(report.read_text(encoding="utf-8"))
        if args.wandb:
            log_wandb(df, args.metric)
    except MedsweepError as e:
        print(f"medsweep-report: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    print(f"medsweep-report: wrote {report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
