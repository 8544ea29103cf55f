"""Experiment tracking: `logger=none` (the run record only) or `logger=wandb` (one W&B run per job).

    tracker = start(cfg, run_dir, overrides)   # Tracker (no-op) or WandbTracker
    trainer callbacks += [tracker.callback()]  # train/loss, train/learning_rate, train/grad_norm per log step
    tracker.log_eval(metrics, "eval", step)     # baseline/*, epoch/*, eval/* against train/global_step
    tracker.log_predictions(rows)               # a table: question, reference, generated, per-example scores
    tracker.finish(record)                      # headline metrics into the summary, then wandb finish

The W&B run id is a hash of the job directory, so a resumed job (same directory) continues its W&B run and
two jobs never share one. The offline files live in the job directory (`<run_dir>/wandb/offline-run-*`);
upload them later with `wandb sync <run_dir>/wandb/offline-run-*`.

Nothing secret reaches W&B: the config, the tags, the command line W&B stores, the tables and the summary all
go through `record.redact` (keys that look like secrets, and the values of the secret environment variables).
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from medsweep import record
from medsweep.errors import MedsweepError
from medsweep.metrics import SCORE_KEYS
from medsweep.runrecord import RunRecord

log = logging.getLogger(__name__)

STEP = "train/global_step"  # the x axis of every logged metric
TAG_MAX = 64  # W&B rejects longer tags
# Trainer log keys of the end-of-training line -> names under train/ ("train_loss" is the mean over the run;
# "train/loss" is the per-step loss).
_TRAIN_END_KEYS = {"train_loss": "loss_avg"}


def run_id(run_dir: Path) -> str:
    """The W&B run id of a job directory: 16 hex chars of sha1(absolute path). Same dir -> same run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def tags(extra: list[str], overrides: list[str]) -> list[str]:
    """logger.tags + the job's overrides, redacted, shortened to W&B's 64-character limit, no duplicates."""
    out: list[str] = []
    for tag in [*extra, *overrides]:
        tag = record.redact_override(str(tag)).strip()
        if len(tag) > TAG_MAX:
            tag = tag[: TAG_MAX - 3] + "..."
        if tag and tag not in out:
            out.append(tag)
    return out


def _numbers(metrics: dict[str, Any] | None, prefix: str) -> dict[str, float]:
    """The numeric entries of `metrics` as `prefix/key` (None, text, NaN and infinities are left out)."""
    out = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[f"{prefix}/{key}" if prefix else key] = value
    return out


class Tracker:
    """No tracker (logger=none): every method does nothing."""

    def callback(self, epoch_results: list[dict[str, Any]] | None = None):
        return None

    def log_eval(self, metrics: dict[str, Any] | None, prefix: str, step: int | None = None) -> None:
        pass

    def log_predictions(self, rows: list[dict[str, Any]], name: str = "predictions") -> None:
        pass

    def finish(self, rec: RunRecord | Mapping[str, Any]) -> None:
        pass


class WandbTracker(Tracker):
    """One W&B run for one job (logger=wandb)."""

    def __init__(self, run, wandb_module):
        self.run, self.wandb, self.finished = run, wandb_module, False
        for prefix in ("train", "baseline", "epoch", "eval"):
            run.define_metric(f"{prefix}/*", step_metric=STEP)

    @property
    def offline_dir(self) -> Path:
        """`<run_dir>/wandb/offline-run-<time>-<id>` (or run-<time>-<id> online)."""
        return Path(self.run.dir).parent

    def _log(self, data: dict[str, Any]) -> None:
        self.run.log(record.redact(data))

    def callback(self, epoch_results: list[dict[str, Any]] | None = None):
        """A TrainerCallback logging the Trainer's log lines (loss, learning rate, grad norm every
        train.logging_steps) and, when given EpochEval.results, each epoch evaluation as it lands."""
        from transformers import TrainerCallback

        tracker = self

        class WandbCallback(TrainerCallback):
            seen = 0

            def on_log(self, args, state, control, logs=None, **kwargs):
                values = {}
                for key, value in _numbers(logs, "").items():
                    values[f"train/{_TRAIN_END_KEYS.get(key, key.removeprefix('train_'))}"] = value
                if values:
                    tracker._log({**values, STEP: state.global_step})

            def on_epoch_end(self, args, state, control, **kwargs):
                if epoch_results is None:
                    return
                for res in epoch_results[self.seen:]:
                    tracker.log_eval({**res["metrics"], "epoch": res["epoch"]}, "epoch", step=res["step"])
                self.seen = len(epoch_results)

        return WandbCallback()

    def log_eval(self, metrics: dict[str, Any] | None, prefix: str, step: int | None = None) -> None:
        values = _numbers(metrics, prefix)
        if values:
            self._log({**values, **({STEP: step} if step is not None else {})})

    def log_predictions(self, rows: list[dict[str, Any]], name: str = "predictions") -> None:
        if not rows:
            return
        scores = list(SCORE_KEYS) + sorted({k for r in rows for k in r.get("scores", {})} - set(SCORE_KEYS))
        columns = ["id", "question", "reference", "generated", *scores, "seconds", "generated_tokens"]
        data = [[r.get("id"), r.get("question"), r.get("reference"), r.get("generated"),
                 *(r.get("scores", {}).get(k) for k in scores), r.get("seconds"), r.get("generated_tokens")]
                for r in record.redact(rows)]
        self.run.log({name: self.wandb.Table(columns=columns, data=data)})

    def finish(self, rec: RunRecord | Mapping[str, Any]) -> None:
        """Headline metrics into the summary, then finish the run (exit code 1 unless complete). Never raises:
        it also runs on the failure path, where the job's own error must surface."""
        if self.finished:
            return
        self.finished = True
        rec = _as_record(rec)
        try:
            self.run.summary.update(record.redact(summary(rec)))
        except Exception as exc:  # noqa: BLE001
            log.warning("logger=wandb: could not write the run summary: %s", exc)
        try:
            self.run.finish(exit_code=0 if rec.is_complete else 1)
            # Offline, finish() can return before wandb-core has written the run's .wandb file (about 1 in 6
            # times here); teardown waits for the service to flush every stream. The next job's init
            # (Hydra's basic launcher runs jobs in one process) starts a fresh service (~0.5 s).
            self.wandb.teardown()
        except (Exception, SystemExit) as exc:  # noqa: BLE001  teardown sys.exit()s on an internal error
            log.warning("logger=wandb: wandb finish failed: %s", exc)
            return
        if self.run.offline:
            log.info("W&B offline run: %s (upload: wandb sync %s)", self.offline_dir, self.offline_dir)


def _as_record(rec: RunRecord | Mapping[str, Any]) -> RunRecord:
    """A record, from the record or its JSON (a caller holding a dict)."""
    return rec if isinstance(rec, RunRecord) else RunRecord.from_dict(rec)


def summary(rec: RunRecord | Mapping[str, Any]) -> dict[str, Any]:
    """The W&B run summary of a run record: eval/*, baseline/*, delta/*, train/*, system/*, status."""
    rec = _as_record(rec)
    train = rec.train or {}
    hw, env = rec.hardware or {}, rec.env or {}
    out: dict[str, Any] = {
        **_numbers(rec.metrics, "eval"),
        **_numbers(rec.baseline, "baseline"),
        **_numbers(rec.delta, "delta"),
        **_numbers({
            "time_s": train.get("train_time_s"), "steps": train.get("steps"), "epochs": train.get("epochs"),
            "loss_avg": train.get("train_loss"), "loss_first": train.get("train_loss_first"),
            "loss_last": train.get("train_loss_last"), "first_step_s": train.get("first_step_s"),
            "peak_memory_mb": train.get("peak_memory_mb"), "trainable_params": train.get("trainable_params"),
            "total_params": train.get("total_params"),
        }, "train"),
        **_numbers({"wall_time_s": rec.wall_time_s, "gpu_hours": rec.gpu_hours}, "run"),
        "status": rec.status,
        "system/device": hw.get("device"), "system/precision": hw.get("precision"),
        "system/threads": hw.get("threads"), "system/git_commit": env.get("git_commit"),
        "system/host": env.get("host"),
    }
    if train.get("resumed_from"):
        out["train/resumed_from"] = train["resumed_from"]
    if rec.error:
        out["error"] = rec.error
    return {k: v for k, v in out.items() if v is not None}


@contextmanager
def _redacted_argv() -> Iterator[None]:
    """W&B stores sys.argv[1:] in the run's metadata: hand it a redacted copy while the run starts."""
    saved = sys.argv
    sys.argv = [saved[0], *(record.redact_override(a) for a in saved[1:])]
    try:
        yield
    finally:
        sys.argv = saved


def start(cfg, run_dir: Path, overrides: list[str]) -> Tracker:
    """The tracker of one job: Tracker() for logger=none (or logger.mode=disabled), else a W&B run."""
    lg = cfg.logger
    if lg.name == "none" or lg.mode == "disabled":
        return Tracker()
    if lg.name != "wandb":
        raise MedsweepError(f"logger.name={lg.name!r} is invalid: allowed: none, wandb")
    try:
        import wandb
    except ImportError as exc:
        raise MedsweepError("logger=wandb needs the wandb package (pip install wandb)") from exc

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = record.redact(OmegaConf.to_container(cfg, resolve=True))
    config.update(run_dir=str(run_dir), overrides=[record.redact_override(o) for o in overrides])
    settings = wandb.Settings(
        console="off",            # the job log is <run_dir>/medsweep.log; no second copy of stdout/stderr
        save_code=False,          # no code upload
        disable_git=True,         # the record has the git commit (summary system/git_commit)
        quiet=True,               # one line of our own at the end instead of W&B's banners
        reinit="finish_previous",  # the basic launcher runs sweep jobs in one process
    )
    try:
        with _redacted_argv():
            run = wandb.init(
                project=lg.project, entity=lg.entity, mode=lg.mode, dir=str(run_dir),
                id=run_id(run_dir), resume="allow", name=run_dir.name,
                group=lg.group or cfg.sweep_name, job_type=lg.job_type,
                tags=tags(list(lg.tags), overrides), config=config, settings=settings,
            )
    except Exception as exc:  # noqa: BLE001  (wandb raises many types: UsageError, CommError, ...)
        msg = " ".join(str(exc).split())[:300]
        raise MedsweepError(f"logger=wandb: wandb.init failed ({type(exc).__name__}: {msg}); set "
                            f"logger.mode=offline, or WANDB_API_KEY for logger.mode=online") from exc
    log.info("logger=wandb: run %s (%s, group %s) in %s", run.id, lg.mode, lg.group or cfg.sweep_name,
             Path(run.dir).parent)
    return WandbTracker(run, wandb)
