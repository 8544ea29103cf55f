"""A pack end to end: `run_pack(configs, run_dirs)` trains K runs of a sweep in one process on one base model
(pack.py) and writes each run's directory exactly as its solo run (run.py) would: config.yaml, metrics.json,
adapter/, predictions.jsonl, predictions_baseline.jsonl, its W&B run; the record says `packed_with`.

The base model is loaded once, the baseline evaluated once for the pack (every member gets the same result),
the training set tokenized once; after training each adapter is evaluated in turn on the one base model (or, with
pack_eval=mixed, all adapters' answers generated in shared batches: mixed.py, then each scored as in turn). The
pack's checkpoints live in the first member's run directory (pack-checkpoints/), with the list of members:
a pack of other members (a re-run packing only the incomplete ones) starts over."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medsweep import (
    cache,
    data,
    fit,
    hardware,
    judge,
    metrics,
    mixed,
    models,
    pack,
    packplan,
    preempt,
    progress_file,
    record,
    tracking,
    train,
)
from medsweep import config as config_schema
from medsweep.baseline import cached_baseline
from medsweep.checks import check
from medsweep.config import RunConfig
from medsweep.errors import ConfigError, MedsweepError
from medsweep.evaluate import evaluate
from medsweep.prompts import PromptStyle
from medsweep.runlock import RunLock
from medsweep.runrecord import RunRecord

log = logging.getLogger("medsweep")

CHECKPOINTS = "pack-checkpoints"


def run_pack(configs: list[DictConfig], run_dirs: list[Path], overrides: list[list[str]] | None = None
             ) -> list[dict[str, Any]]:
    """Train and evaluate `configs` as one pack into `run_dirs` (one each) and return their records. Complete
    runs are skipped; the others fail alone when they diverge."""
    if len(configs) != len(run_dirs) or not configs:
        raise ConfigError(f"a pack needs one run directory per configuration ({len(configs)} vs {len(run_dirs)})")
    runs = [config_schema.typed(c) for c in configs]
    estimate = check(configs[0])
    for cfg in configs[1:]:
        check(cfg)
    _check_packable(configs, runs)
    overrides = overrides or [[] for _ in configs]
    with contextlib.ExitStack() as locks:
        for run_dir in run_dirs:
            locks.enter_context(RunLock(run_dir))
        done = [RunRecord.load(d) for d in run_dirs]
        todo = [i for i, rec in enumerate(done) if not (rec and rec.is_complete)]
        for i in set(range(len(configs))) - set(todo):
            log.info("already complete: %s", run_dirs[i])
        if todo:
            _run([configs[i] for i in todo], [runs[i] for i in todo], [run_dirs[i] for i in todo],
                 [overrides[i] for i in todo], estimate)
    return [(RunRecord.load(d) or RunRecord()).to_dict() for d in run_dirs]


def _check_packable(configs: list[DictConfig], runs: list[RunConfig]) -> None:
    keys = [packplan.pack_key(record.run_config(c)) for c in configs]
    if len(set(keys)) > 1:
        raise ConfigError(f"these runs cannot share a pack: they differ in more than {', '.join(packplan.PACKABLE)}")
    for run in runs:
        if run.lora.bias != "none":
            raise ConfigError(f"lora.bias={run.lora.bias} is not supported in a pack: the base model's biases "
                              f"would train for every run at once (use lora.bias=none or pack=1)")
        if run.train.init_adapter:
            raise ConfigError("train.init_adapter is not supported in a pack (pack=1 trains it alone)")
        if run.eval.every_epoch:
            raise ConfigError("eval.every_epoch is not supported in a pack (pack=1 evaluates every epoch)")


def _run(configs: list[DictConfig], runs: list[RunConfig], run_dirs: list[Path], overrides: list[list[str]],
         estimate: fit.Fit) -> None:
    first = runs[0]
    started = time.time()
    hw = hardware.resolve(first.profile, mode="single" if first.profile.device != "cpu" and first.profile.gpus
                          else "cpu", world_size=1, rank=0, local_rank=0)
    hardware.apply_threads(hw)
    names = [d.name for d in run_dirs]
    recs = []
    for cfg, run, run_dir, over in zip(configs, runs, run_dirs, overrides, strict=True):
        rec = RunRecord(status="running", run_name=run_dir.name, run_dir=str(run_dir.resolve()),
                        axes=record.axes(run), overrides=over,
                        hardware={"device": hw.device, "precision": hw.precision, "threads": hw.threads,
                                  "mode": hw.mode, "world_size": hw.world_size},
                        env=record.environment(), started_at=record.now(),
                        metric_definitions=metrics.definitions(run.eval.semantic).to_dict(),
                        packed_with=[n for n in names if n != run_dir.name])
        record.atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(record.redact(
            OmegaConf.to_container(cfg, resolve=True))))
        rec.save(run_dir)
        recs.append(rec)
    try:
        files = [d / progress_file.FILE for d in run_dirs]
        with progress_file.recording(files[0], copies=tuple(files[1:])):  # medsweep-status reads each run's
            results = _train_and_evaluate(runs, run_dirs, hw, recs)
            for run, run_dir, rec in zip(runs, run_dirs, recs, strict=True):
                if run.judge.kind != "none" and rec.status == "running":  # after the pack's models are gone
                    judge.judge_trained_run(run, run_dir, rec)
    except BaseException as exc:  # SystemExit: submitit requeues the job after a checkpoint (preempt.py)
        for rec, run_dir in zip(recs, run_dirs, strict=True):
            if rec.status == "running":
                rec.status = "failed" if isinstance(exc, Exception) else "interrupted"
                rec.error, rec.finished_at = f"{type(exc).__name__}: {exc}", record.now()
                rec.save(run_dir)
        raise
    wall = time.time() - started
    for cfg, run, run_dir, rec, (history, rows, baseline_rows) in zip(configs, runs, run_dirs, recs, results,
                                                                        strict=True):
        if rec.status == "running":
            rec.status, rec.wall_time_s = "complete", wall
            rec.gpu_hours = wall / 3600 * (run.profile.gpus if hw.device == "cuda" else 0) / len(runs)
        rec.finished_at = record.now()
        rec.save(run_dir)
        _track(cfg, run_dir, rec, history, rows, baseline_rows)


def _track(cfg: DictConfig, run_dir: Path, rec: RunRecord, history: list[dict[str, Any]],
           rows: list[dict[str, Any]], baseline_rows: list[dict[str, Any]]) -> None:
    """The member's W&B run, after the pack's training (W&B keeps one run per process open at a time): its loss
    lines, the baseline, the evaluation and predictions, its summary."""
    tracker = tracking.start(cfg, run_dir, rec.overrides)
    callback = tracker.callback()
    if callback is not None:
        for line in history:
            callback.on_log(None, _Step(line["step"]), None, logs={k: v for k, v in line.items() if k != "step"})
    if rec.baseline:
        tracker.log_eval(rec.baseline, "baseline", step=0)
        tracker.log_predictions(baseline_rows, "predictions_baseline")
    if rec.metrics:
        tracker.log_eval(rec.metrics, "eval", step=(rec.train or {}).get("steps"))
        tracker.log_predictions(rows)
    tracker.finish(rec)


class _Step:
    """The one TrainerState field the tracker's callback reads."""

    def __init__(self, step: int):
        self.global_step = step


def _train_and_evaluate(runs: list[RunConfig], run_dirs: list[Path], hw: hardware.Hardware,
                        recs: list[RunRecord]) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                             list[dict[str, Any]]]]:
    first = runs[0]
    splits = data.build(first.data, eval_size=first.train.eval_split, train_size=first.train.train_size)
    eval_records = splits.eval[: first.eval.num_examples]
    t0 = time.perf_counter()
    tokenizer = models.load_tokenizer(first.model)
    model, model_info = models.load_model(first.model, tokenizer, hw, seed=first.train.seed,
                                          gradient_checkpointing=fit.gradient_checkpointing(first))
    model_info["load_time_s"] = time.perf_counter() - t0
    baseline: dict[str, Any] | None = None
    baseline_rows: list[dict[str, Any]] = []
    source = None
    if first.eval.baseline:  # once for the pack's runs, and through the cache, as a solo run: later packs reuse it
        baseline, baseline_rows, source = cached_baseline(model, tokenizer, eval_records, first, hw, run_dirs[0])
    members = []
    for k, run in enumerate(runs):
        name = f"m{k}"
        model = models.add_lora(model, run.lora, run.model, seed=run.train.seed, adapter_name=name)
        members.append(pack.Member(name, run.train.seed, run.train.lr, run.lora.dropout,
                                   train.dropout_generator(run.train.seed)))
    for member in members:  # peft leaves only the last added adapter trainable
        for param in pack.member_parameters(model, member.name):
            param.requires_grad_(True)
    for rec, run_dir, member in zip(recs, run_dirs, members, strict=True):
        rec.data, rec.model = dict(splits.stats), dict(model_info)
        rec.model["trainable_params"] = sum(p.numel() for p in pack.member_parameters(model, member.name))
        if baseline is not None:
            rec.baseline, rec.baseline_source = baseline, asdict(source) if source else None
            record.atomic_write_jsonl(run_dir / "predictions_baseline.jsonl", baseline_rows)
    tokenizer.padding_side = "right"
    train_ds, tokenized = cache.tokenize_cached(
        splits.train, tokenizer, PromptStyle.of(first), first.train.max_seq_length,
        first.model.cache_dir if first.train.cache_tokenized else None)
    if len(train_ds) == 0:
        raise MedsweepError(f"no training example fits train.max_seq_length={first.train.max_seq_length}: every "
                            f"prompt is longer; raise it")
    for rec in recs:
        assert rec.data is not None  # set above
        rec.data["tokenized"] = tokenized

    checkpoint_dir = _checkpoint_dir(run_dirs)
    args = train.training_args(first.train, first.profile, hw, checkpoint_dir)
    args.per_device_train_batch_size = first.train.batch_size * len(runs)
    timer = train.StepTimer()
    state = pack.PackState(members)
    trainer = train.build_trainer(model, tokenizer, train_ds, args, [timer, *preempt.callbacks()],
                                  fast_kernels=first.train.fast_kernels, trainer_class=pack.PackTrainer,
                                  dropout_generators=[m.generator for m in members], members=members, state=state)
    pack.install(model, state)
    resume_from = train.last_checkpoint(checkpoint_dir, tidy=True) if first.resume else None
    if resume_from:
        log.info("resuming the pack from %s", resume_from)
    log.info("training a pack of %d runs: %d examples, %s on %s, %d threads", len(runs), len(train_ds),
             hw.precision, hw.device, hw.threads)
    gc.freeze()
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    train_time = time.perf_counter() - t0
    shared = _shared_answers(model, tokenizer, eval_records, first, hw, [m.name for m in members if m.alive])
    results: list[tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]] = []
    for run, run_dir, rec, member in zip(runs, run_dirs, recs, members, strict=True):
        history = pack.member_history(trainer.state.log_history, member.name)
        rec.train = {
            "train_time_s": train_time, "steps": trainer.state.global_step, "epochs": trainer.state.epoch,
            "train_loss": member.loss_total / max(1, trainer.state.global_step),
            "train_loss_first": history[0]["loss"] if history else None,
            "train_loss_last": history[-1]["loss"] if history else None,
            "first_step_s": (timer.first_step_end - timer.train_begin) if timer.first_step_end else None,
            "startup_s": timer.startup_s, "trainable_params": rec.model["trainable_params"] if rec.model else None,
            "total_params": model_info["total_params"], "resumed_from": resume_from, "world_size": 1,
            "global_batch": run.train.batch_size * run.train.grad_accum, "log_history": history,
        }
        if member.error:
            rec.status, rec.error = "failed", member.error
            results.append((history, [], baseline_rows))
            continue
        _save_adapter(model, tokenizer, member.name, run_dir / "adapter")
        model.set_adapter(member.name)
        log.info("evaluating %s (%s) on %d held-out questions", run_dir.name, member.name, len(eval_records))
        scores, rows = evaluate(model, tokenizer, eval_records, run, hw, generated=shared.get(member.name))
        rec.add_evaluation(scores, rows)
        rec.train.update(hardware.peak_memory(hw))
        record.atomic_write_jsonl(run_dir / "predictions.jsonl", rows)
        results.append((history, rows, baseline_rows))
    return results


def _shared_answers(model, tokenizer, records: list[dict[str, Any]], first: RunConfig, hw: hardware.Hardware,
                    names: list[str]) -> dict[str, mixed.Answers]:
    """With pack_eval=mixed, the answers of the adapters `names` from shared batches (mixed.py); else, or where they
    cannot be mixed (said in the log), none: each adapter then generates its own in turn."""
    if first.pack_eval != "mixed":
        return {}
    why = mixed.unsupported(model, names, first.eval)
    if why is not None:
        log.warning("pack_eval=mixed: the adapters are evaluated in turn instead: %s", why)
        return {}
    log.info("generating the answers of %d adapters in shared batches (pack_eval=mixed)", len(names))
    try:
        return mixed.generate_mixed(model, tokenizer, records, PromptStyle.of(first), first.eval, hw, names)
    except torch.OutOfMemoryError:  # K x eval.batch_size rows' KV cache on a GPU that holds one run's
        log.warning("pack_eval=mixed: %d x eval.batch_size=%d rows do not fit the GPU; the adapters are evaluated "
                    "in turn instead (lower eval.batch_size to mix them)", len(names), first.eval.batch_size)
        return {}


def _checkpoint_dir(run_dirs: list[Path]) -> Path:
    """The pack's checkpoints, in its first member's run directory; those of another pack there are removed."""
    checkpoint_dir = run_dirs[0] / CHECKPOINTS
    members_file = checkpoint_dir / "members.json"
    names = [d.name for d in run_dirs]
    if checkpoint_dir.is_dir() and (not members_file.is_file() or json.loads(members_file.read_text()) != names):
        log.warning("%s holds the checkpoints of another pack: removed, this pack starts over", checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    record.atomic_write_json(members_file, names)
    return checkpoint_dir


def _save_adapter(model, tokenizer, name: str, target: Path) -> None:
    """The member's adapter as its solo run saves it: adapter_config.json, adapter_model.safetensors, README.md."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        model.save_pretrained(tmp, selected_adapters=[name])
        saved = Path(tmp) / name
        if (Path(tmp) / "README.md").is_file():
            shutil.move(Path(tmp) / "README.md", saved / "README.md")
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(saved, target)
    tokenizer.save_pretrained(target)
