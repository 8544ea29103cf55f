"""Finding and reading run records: the run directories under the given paths (dirs, run dirs, ``metrics.json``
files or globs), one row per run (``read_run``: complete / failed / unfinished / corrupt, with ``malformed`` saying
why a parsed record cannot be trusted) collected into a DataFrame, the axis columns of that frame, and the chain of
runs a continued fine-tuning run grew from (``stage_chain``). The column vocabulary of the frame (Table 4 metrics,
latency, the seed axis) is defined here, for the statistics, tables and figures built on it.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from medsweep import metrics as registry
from medsweep.errors import MedsweepError
from medsweep.runrecord import STATUSES, TRAIN_COLUMNS, NotARecord, RunRecord

log = logging.getLogger("medsweep.report")  # one logger for the package, as before it was split

SEED = "train.seed"
# Table 4 metrics: column name in the run table -> display name (in this order).
TABLE4 = {name: registry.label(name) for name in registry.TABLE4}
SCALE = registry.SCALE  # EM is reported in percent
LATENCY = {name: registry.short_label(name) for name in registry.LATENCY}
# Columns that are never axes (used when df.attrs["axes"] was lost, e.g. after pd.concat).
NOT_AXES = {"run_dir", "run_name", "status", "error", "gpu_hours",
            *TRAIN_COLUMNS, *(m.name for m in registry.METRICS)}


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
            "_epochs": rec.epochs if isinstance(rec.epochs, list) else [],
            "_definitions": _as_dict(rec.metric_definitions)}


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

    Private columns ``_per_example``, ``_epochs`` and ``_definitions`` carry the nested data used for
    bootstrap CIs, the per-epoch figure and the metric definitions ({} where the record has none);
    ``df.attrs["axes"]`` lists the axis columns.
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
    for c in ("_per_example", "_epochs", "_definitions"):
        if c not in df:
            df[c] = None
        df[c] = [v if isinstance(v, (dict, list)) else ([] if c == "_epochs" else {}) for v in df[c]]
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


# --------------------------------------------------------------------------- continued fine-tuning

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
