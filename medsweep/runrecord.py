"""The run record (`<run_dir>/metrics.json`): what a run was, what it measured, and how it ended.

    rec = RunRecord(status="running", run_name=..., ...)   # a new run: run.py fills the fields as it goes
    rec.save(run_dir)                                      # atomic, secrets redacted
    done = RunRecord.load(run_dir)                         # None when absent or unreadable
    done.is_complete, done.to_dict(), done.row(run_dir)

A record's JSON is exactly `to_dict()`: a new record writes the keys of a started run (status ... error) and
then each later section once it is set; a loaded one writes back the keys it was read with, unknown keys
included, in their order. Loading checks no types (report.malformed says whether a record can be trusted).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from medsweep import metrics, record

FILE = "metrics.json"
STATUSES = ("running", "complete", "failed", "interrupted")
# train.* entries that the report's run table shows
TRAIN_COLUMNS = ["train_time_s", "peak_memory_mb", "trainable_params", "total_params",
                 "steps", "train_loss_first", "train_loss_last"]


# The keys a run writes when it starts, whatever their value; later sections follow once set.
_STARTED = ("status", "run_name", "run_dir", "axes", "overrides", "data", "hardware", "env", "started_at", "metrics",
            "baseline", "delta", "epochs", "error")


class NotARecord(ValueError):
    """metrics.json is JSON but no object."""


@dataclass
class RunRecord:
    status: str | None = None  # running | complete | failed | interrupted; None: the file has none
    run_name: str | None = None
    run_dir: str | None = None  # absolute, where the run was written (the directory may have moved since)
    axes: dict[str, Any] = field(default_factory=dict)  # record.axes: the report's comparison axes
    overrides: list[str] = field(default_factory=list)  # the job's command-line overrides, redacted
    data: dict[str, Any] | None = None  # data.build's counts, and the tokenization's
    hardware: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)  # record.environment
    started_at: str | None = None
    metrics: dict[str, float] | None = None  # the fine-tuned model's (metrics.METRICS)
    baseline: dict[str, float] | None = None  # the base model's, when eval.baseline
    delta: dict[str, float] | None = None  # metrics - baseline
    # baseline.BaselineSource: computed here or reused from the cache (then its latencies are the computing run's);
    # absent in records written before the cache and without eval.baseline
    baseline_source: dict[str, Any] | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)  # eval.every_epoch: {epoch, step, metrics}
    error: str | None = None
    model: dict[str, Any] | None = None  # models.load_model's info, load time, trainable parameters
    train: dict[str, Any] | None = None  # times, steps, losses, peak memory, log history
    per_example: dict[str, list[float]] | None = None  # metrics.PER_EXAMPLE scores, one per eval example
    finished_at: str | None = None
    wall_time_s: float | None = None  # complete runs only
    gpu_hours: float | None = None  # complete runs only
    # metrics.MetricDefinitions.to_dict(): what every score in metrics, baseline, delta, epochs, per_example and the
    # prediction files means (one evaluation code path computes them all); None in records written before
    metric_definitions: dict[str, Any] | None = None
    judge: dict[str, Any] | None = None  # judge.Judged: the judge's identity, prompt version, decoding and counts
    packed_with: list[str] = field(default_factory=list)  # the other runs trained with it in one process (pack.py)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a loaded record that this class does not know
    # The keys to_dict writes whatever their value, in this order: a loaded record's are the file's.
    _keys: tuple[str, ...] = field(default=_STARTED, init=False, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        rec = cls(**{k: v for k, v in data.items() if k in _NAMES},
                  extra={k: v for k, v in data.items() if k not in _NAMES})
        rec._keys = tuple(data)
        return rec

    @classmethod
    def read(cls, run_dir: Path | str) -> RunRecord:
        """The record in `run_dir`; OSError (FileNotFoundError when there is none) or ValueError (not JSON,
        NotARecord) when it cannot be read."""
        data = json.loads((Path(run_dir) / FILE).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise NotARecord(f"{FILE} holds a JSON {type(data).__name__}, not an object")
        return cls.from_dict(data)

    @classmethod
    def load(cls, run_dir: Path | str) -> RunRecord | None:
        """The record in `run_dir`, or None if absent or unreadable."""
        try:
            return cls.read(run_dir)
        except (OSError, ValueError):
            return None

    def save(self, run_dir: Path | str) -> None:
        record.atomic_write_json(Path(run_dir) / FILE, self.to_dict())

    @property
    def is_complete(self) -> bool:
        return self.status == "complete"

    def add_evaluation(self, scores: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """The fine-tuned model's evaluation (evaluate.evaluate's metrics and prediction rows), recorded alike for a
        solo run (run.py) and each run of a pack (packrun.py): its metrics, the per-example scores of each
        metrics.PER_EXAMPLE metric the rows were scored on (semantic only with eval.semantic; the judge's are
        added when it grades the rows, judge.py) and the delta from the baseline."""
        present = rows[0]["scores"] if rows else {}
        self.metrics = scores
        self.per_example = {k: [r["scores"][k] for r in rows] for k in metrics.PER_EXAMPLE if k in present}
        if self.baseline:
            self.delta = {k: v - self.baseline[k] for k, v in scores.items()
                          if k in self.baseline and isinstance(v, (int, float))}

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) if k in _NAMES else self.extra[k] for k in self._keys
               if k in _NAMES or k in self.extra}
        for f in _FIELDS:
            if f.name not in out and getattr(self, f.name) != _default(f):
                out[f.name] = getattr(self, f.name)
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    def row(self, run_dir: Path) -> dict[str, Any]:
        """The record as one flat row of the report's run table: identity, axes, metrics, baseline.* and delta.*,
        TRAIN_COLUMNS and GPU hours; lists and mappings inside become JSON text. `run_dir` is where it was found."""
        row: dict[str, Any] = {"run_dir": str(run_dir), "run_name": self.run_name or run_dir.name,
                               "status": self.status, "error": self.error}
        row.update({k: _scalar(v) for k, v in _as_dict(self.axes).items()})
        row.update({k: _scalar(v) for k, v in _as_dict(self.metrics).items()})
        for section in ("baseline", "delta"):
            row.update({f"{section}.{k}": _scalar(v) for k, v in _as_dict(getattr(self, section)).items()})
        train = _as_dict(self.train)
        row.update({k: train.get(k) for k in TRAIN_COLUMNS if k in train})
        row["gpu_hours"] = self.gpu_hours
        return row


_FIELDS = [f for f in fields(RunRecord) if f.init and f.name != "extra"]
_NAMES = {f.name for f in _FIELDS}


def _default(f: Field[Any]) -> Any:
    return f.default_factory() if callable(f.default_factory) else f.default


def _as_dict(value: Any) -> dict[str, Any]:
    """A loaded record's section, or {} where the file holds none (or something else: report.malformed)."""
    return value if isinstance(value, dict) else {}


def _scalar(value: Any) -> Any:
    """Lists/dicts in a record become strings so that every cell is a scalar."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value
