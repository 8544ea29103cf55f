"""The train-eval entrypoint: `medsweep k=v ...` (one job) or `medsweep -m k=a,b ...` (a sweep).

The recipe, top to bottom: validate config -> load and split data -> load model -> [baseline eval] ->
add LoRA -> train (resuming from the last checkpoint) -> save adapter -> evaluate -> write the record.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

# torch, transformers, peft and datasets create ~10^6 objects on import, all of them kept for the whole job; the
# collector's passes over them during the imports are a noticeable share of each job's start-up.
_collecting = gc.isenabled()
gc.disable()
try:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from medsweep import (
        baseline,
        cache,
        data,
        distributed,
        fit,
        hardware,
        judge,
        metrics,
        models,
        preempt,
        progress_file,
        record,
        tracking,
        train,
    )
    from medsweep import config as config_schema
    from medsweep.checks import check
    from medsweep.config import RunConfig
    from medsweep.errors import ConfigError, MedsweepError
    from medsweep.evaluate import evaluate
    from medsweep.fit import Fit
    from medsweep.prompts import PromptStyle
    from medsweep.runlock import RunInUse, RunLock
    from medsweep.runrecord import RunRecord
finally:
    gc.freeze()  # what the imports created is never garbage: later collections need not rescan it
    if _collecting:
        gc.enable()

log = logging.getLogger("medsweep")

config_schema.register_configs()
record.register_resolvers()


def train_eval(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run one configuration into `run_dir` and return its record (metrics.json).

    Under data parallelism every process of the job calls this; only rank 0 writes (record, config, adapter,
    predictions, W&B) and evaluates; the other ranks train their share of each batch and return a record
    that says which rank they were."""
    world = distributed.detect()
    if not world.is_main:
        return _run(cfg, run_dir, world)
    with RunLock(run_dir):  # one writer per run directory (runlock.py)
        return _run(cfg, run_dir, world)


def _run(cfg: DictConfig, run_dir: Path, world: distributed.World) -> dict[str, Any]:
    if world.is_main:
        record.scrub_yaml_files([run_dir / ".hydra" / n for n in ("config.yaml", "overrides.yaml", "hydra.yaml")])
    estimate = check(cfg)
    run = config_schema.typed(cfg)  # the stages read the schema's dataclasses; `cfg` is kept for config.yaml and W&B
    done = RunRecord.load(run_dir)
    if done and done.is_complete:
        log.info("already complete: %s (attempt=%d re-runs it into a new directory)", run_dir, run.attempt + 1)
        return done.to_dict()

    started = time.time()
    hw = _hardware(run, world, estimate)
    hardware.apply_threads(hw)
    rec = RunRecord(
        status="running", run_name=run_dir.name, run_dir=str(run_dir.resolve()),
        axes=record.axes(run), overrides=_overrides(),
        hardware={"device": hw.device, "precision": hw.precision, "threads": hw.threads, "mode": hw.mode,
                  "world_size": hw.world_size},
        env=record.environment(), started_at=record.now(),
        metric_definitions=metrics.definitions(run.eval.semantic).to_dict(),
    )
    if not world.is_main:
        return _train_worker(run, run_dir, hw, rec)
    record.atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(record.redact(
        OmegaConf.to_container(cfg, resolve=True))))
    rec.save(run_dir)
    tracker = tracking.Tracker()
    try:
        tracker = tracking.start(cfg, run_dir, rec.overrides)
        with progress_file.recording(run_dir / progress_file.FILE):  # medsweep-status reads where the job is from it
            _train_and_evaluate(run, run_dir, hw, rec, tracker)
            if run.judge.kind != "none":  # after the run's models are gone: the judge may be large
                judge.judge_trained_run(run, run_dir, rec)
    except BaseException as exc:  # SystemExit: submitit requeues the job after a checkpoint (preempt.py)
        rec.status = "failed" if isinstance(exc, Exception) else "interrupted"
        rec.error, rec.finished_at = f"{type(exc).__name__}: {exc}", record.now()
        rec.save(run_dir)
        tracker.finish(rec)
        raise
    finally:
        distributed.finish()
    rec.status, rec.finished_at = "complete", record.now()
    rec.wall_time_s = time.time() - started
    rec.gpu_hours = (time.time() - started) / 3600 * (run.profile.gpus if hw.device == "cuda" else 0)
    rec.save(run_dir)
    tracker.finish(rec)
    return rec.to_dict()


def _hardware(cfg: RunConfig, world: distributed.World, estimate: Fit) -> hardware.Hardware:
    """The device, precision and parallel mode of this process: the mode the fit estimate chose for the profile,
    run data-parallel only when the job was started with that many processes (a launcher's tasks or torchrun)."""
    mode, processes = estimate.mode, estimate.world_size
    if world.size != processes and world.distributed:
        raise ConfigError(f"this job runs {world.size} processes ({world.launcher}) but profile {cfg.profile.name} "
                          f"with model {cfg.model.name} runs {mode} with {processes}; use -m (the launcher starts "
                          f"the right number) or torchrun --nproc-per-node {processes}")
    if processes > 1 and not world.distributed:
        log.warning("profile %s trains data parallel over %d processes when started by a launcher (medsweep -m ...) "
                    "or torchrun --nproc-per-node %d; this single process trains alone", cfg.profile.name,
                    processes, processes)
        mode = "single" if cfg.profile.device != "cpu" and cfg.profile.gpus else "cpu"
    distributed.join(world)
    return hardware.resolve(cfg.profile, mode=mode, world_size=world.size, rank=world.rank,
                            local_rank=world.local_rank)


def _train_worker(cfg: RunConfig, run_dir: Path, hw: hardware.Hardware, rec: RunRecord) -> dict[str, Any]:
    """A data-parallel rank other than 0: the same data, model and training steps on its share of each batch;
    nothing written, nothing evaluated."""
    try:
        _train_and_evaluate(cfg, run_dir, hw, rec, tracking.Tracker(), main=False)
    finally:
        distributed.finish()
    return {"status": "worker", "rank": hw.rank, "world_size": hw.world_size, "run_dir": rec.run_dir}


def _train_and_evaluate(cfg: RunConfig, run_dir: Path, hw: hardware.Hardware, rec: RunRecord,
                        tracker: tracking.Tracker | None = None, main: bool = True) -> None:
    tracker = tracker or tracking.Tracker()
    splits = data.build(cfg.data, eval_size=cfg.train.eval_split, train_size=cfg.train.train_size)
    rec.data = splits.stats
    eval_records = splits.eval[: cfg.eval.num_examples]
    grad_ckpt = fit.gradient_checkpointing(cfg)

    t0 = time.perf_counter()
    tokenizer = models.load_tokenizer(cfg.model)
    model, rec.model = models.load_model(cfg.model, tokenizer, hw, seed=cfg.train.seed,
                                         gradient_checkpointing=grad_ckpt)
    rec.model["load_time_s"] = time.perf_counter() - t0

    if cfg.eval.baseline and main:  # the other ranks wait for rank 0 when the Trainer joins the process group
        rec.baseline, baseline_rows, source = baseline.cached_baseline(model, tokenizer, eval_records, cfg, hw,
                                                                       run_dir)
        rec.baseline_source = asdict(source)
        record.atomic_write_jsonl(run_dir / "predictions_baseline.jsonl", baseline_rows)
        tracker.log_eval(rec.baseline, "baseline", step=0)
        tracker.log_predictions(baseline_rows, "predictions_baseline")

    model = models.add_lora(model, cfg.lora, cfg.model, init_adapter=cfg.train.init_adapter, seed=cfg.train.seed)
    rec.model["trainable_params"] = models.trainable_params(model)
    tokenizer.padding_side = "right"
    train_ds, rec.data["tokenized"] = cache.tokenize_cached(
        splits.train, tokenizer, PromptStyle.of(cfg), cfg.train.max_seq_length,
        cfg.model.cache_dir if cfg.train.cache_tokenized else None)
    if len(train_ds) == 0:
        raise MedsweepError(f"no training example fits train.max_seq_length={cfg.train.max_seq_length}: every "
                            f"prompt is longer; raise it")

    checkpoint_dir = run_dir / "checkpoints"
    args = train.training_args(cfg.train, cfg.profile, hw, checkpoint_dir)
    timer = train.StepTimer()
    callbacks = [timer, train.DivergenceCheck(), *preempt.callbacks()]
    epoch_eval = None
    if cfg.eval.every_epoch and main:
        epoch_eval = train.EpochEval(lambda m: evaluate(m, tokenizer, eval_records, cfg, hw))
        callbacks.append(epoch_eval)
    if (tracker_cb := tracker.callback(epoch_eval.results if epoch_eval else None)) is not None:
        callbacks.append(tracker_cb)  # after epoch_eval: logs each epoch result as it lands
    trainer = train.build_trainer(model, tokenizer, train_ds, args, callbacks, fast_kernels=cfg.train.fast_kernels)
    resume_from = train.last_checkpoint(checkpoint_dir, tidy=main) if cfg.resume else None
    if resume_from:
        log.info("resuming from %s", resume_from)
    log.info("training: %d examples, %d trainable parameters, %s on %s (%s, %d process(es)), %d threads",
             len(train_ds), rec.model["trainable_params"], hw.precision, hw.device, hw.mode, hw.world_size,
             hw.threads)
    gc.freeze()  # the ~10^6 long-lived objects of the imports and the model: no full gc pass rescans them
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    if not main:
        return
    history = train.loss_history(trainer)
    rec.train = {
        "train_time_s": time.perf_counter() - t0,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_loss": result.training_loss,
        "train_loss_first": history[0]["loss"] if history else None,
        "train_loss_last": history[-1]["loss"] if history else None,
        "first_step_s": (timer.first_step_end - timer.train_begin) if timer.first_step_end else None,
        "startup_s": timer.startup_s,  # process start -> first training step begins (imports, data, model)
        "trainable_params": rec.model["trainable_params"],
        "total_params": rec.model["total_params"],
        "resumed_from": resume_from,
        "world_size": hw.world_size,
        "global_batch": cfg.train.batch_size * cfg.train.grad_accum,
        "log_history": history,
    }
    model.save_pretrained(run_dir / "adapter")
    tokenizer.save_pretrained(run_dir / "adapter")

    final = epoch_eval.final(trainer.state.global_step) if epoch_eval else None
    if final:
        log.info("final evaluation: the last epoch's (same weights), not generated again")
        scores, rows = final
    else:
        log.info("evaluating the fine-tuned model on %d held-out questions", len(eval_records))
        scores, rows = evaluate(model, tokenizer, eval_records, cfg, hw)
    rec.add_evaluation(scores, rows)
    rec.train.update(hardware.peak_memory(hw))
    if epoch_eval:
        rec.epochs = epoch_eval.results
    record.atomic_write_jsonl(run_dir / "predictions.jsonl", rows)
    tracker.log_eval(rec.metrics, "eval", step=trainer.state.global_step)
    tracker.log_predictions(rows)


def _overrides() -> list[str]:
    try:
        return [record.redact_override(o) for o in HydraConfig.get().overrides.task]
    except ValueError:  # called outside Hydra (tests)
        return []


def summary_table(rec: dict[str, Any]) -> str:
    """A small Markdown table of the record's headline metrics (baseline vs fine-tuned when present)."""
    import pandas as pd

    cols = {"fine-tuned": rec["metrics"]}
    if rec.get("baseline"):
        cols = {"base": rec["baseline"], **cols, "delta": rec["delta"]}
    keys = [k for k in metrics.SUMMARY if any(k in vals for vals in cols.values())]  # semantic: eval.semantic only
    frame = pd.DataFrame({name: {k: vals.get(k) for k in keys} for name, vals in cols.items()})
    return frame.to_markdown(floatfmt=".4g")


def _remove_if_fresh(run_dir: Path, config_error: bool = False) -> None:
    """Remove a run directory that holds nothing but what this failed start wrote: Hydra's files, and for a
    config error found during the run (e.g. a LoRA target the model lacks) its failed record."""
    fresh = {".hydra", "medsweep.log", ".lock"} | ({"config.yaml", "metrics.json", "wandb"} if config_error else set())
    rec = RunRecord.load(run_dir)
    if rec is not None and rec.status != "failed":
        return
    if run_dir.is_dir() and all(p.name in fresh for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # <output_root>/runs, when this start created it and nothing else is in it
            run_dir.parent.rmdir()


def plan_single(cfg: DictConfig, run_dir: Path) -> None:
    """`plan=true` on a single run: validate, say whether it fits and whether it is already complete."""
    estimate = check(cfg)
    done = RunRecord.load(run_dir)
    state = "complete (would be skipped)" if done and done.is_complete else "would run"
    print(f"{run_dir.name}: {state}; {'fits' if estimate.fits else 'REFUSED'}: {estimate.detail}; "
          f"estimated {estimate.gpu_hours:.2f} GPU-hours")


def task(cfg: DictConfig) -> None:
    """One job, as Hydra's task function (medsweep/cli.py:hydra_main, which imports this module only in a job)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    for noisy in ("transformers", "datasets", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    under_scheduler = bool(os.environ.get("SUBMITIT_EXECUTOR"))  # submitit owns the signals there (preempt.py)
    try:
        if cfg.plan:
            plan_single(cfg, run_dir)
            _remove_if_fresh(run_dir)
            return
        with contextlib.nullcontext() if under_scheduler else preempt.stop_on_signals():
            rec = train_eval(cfg, run_dir)
    except preempt.Interrupted as exc:
        last = train.last_checkpoint(run_dir / "checkpoints", tidy=False)
        where = f"at step {exc.step}, checkpoint saved" if exc.step is not None else "before the next checkpoint"
        resume = f"resumes from {Path(last).name}" if last else "starts it again"
        print(f"medsweep: interrupted by {exc} {where}; the same command {resume} ({run_dir})", file=sys.stderr)
        sys.exit(exc.exit_code)
    except MedsweepError as exc:
        if not isinstance(exc, RunInUse):  # the directory is another live run's
            _remove_if_fresh(run_dir, config_error=isinstance(exc, ConfigError))
        print(f"medsweep: error: {exc}", file=sys.stderr)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("SUBMITIT_EXECUTOR"):
            raise  # under submitit the launcher reports the message and SLURM marks the job FAILED
        sys.exit(exc.exit_code)
    if rec.get("metrics"):
        print(f"\nrun: {run_dir}\n{summary_table(rec)}")
