"""LoRA training with the HF Trainer: answer-masked examples (prompts.tokenize), dynamic padding (prompts.collator),
length-grouped batches, logits and loss only on answer positions (kernels.answer_loss_sum), checkpoints in the run
directory for resume."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

# isort: off
# hardware first: it keeps the CUDA-only bitsandbytes out of CPU jobs' imports (isort would move it down)
from medsweep.hardware import Hardware, process_age_s
from medsweep.attention import use_block_causal
from medsweep.errors import TrainingDiverged
from medsweep.kernels import answer_loss_sum, fast_lora
from medsweep.progress import TrainingProgress
from medsweep.prompts import collator
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

if TYPE_CHECKING:
    from medsweep.config import ProfileConfig, TrainConfig
# isort: on

log = logging.getLogger(__name__)


class AnswerOnlyTrainer(Trainer):
    """Trainer whose loss runs the LM head only where labels are (the answer tokens): the vocabulary
    projection and log-softmax over every prompt position are skipped. The loss is the same token-mean
    cross-entropy as the model's own, normalised by the answer tokens of the whole accumulated batch, and
    computed under the run's autocast (bf16 / fp16) like the Trainer's own forward. `fast_kernels=False`
    (train.fast_kernels=false): the head and cross-entropy over full logits of the library instead of
    kernels.linear_cross_entropy."""

    loss_is_scaled_for_ga = True

    def __init__(self, *args, fast_kernels: bool = True, dropout_generators: list[torch.Generator] | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.fast_kernels = fast_kernels
        # the run's own dropout generators (one per adapter of a pack): their states go into each checkpoint
        self.dropout_generators = dropout_generators or []
        self.epoch_samplers: list[EpochSampler] = []

    def _get_train_sampler(self, train_dataset=None):
        """The run's EpochSampler: its order depends on train.seed and the epoch only, not on torch's global
        RNG (which the dropout of other runs of a pack would move on)."""
        sampler = self.epoch_sampler(self.args.seed, train_dataset if train_dataset is not None else
                                     self.train_dataset, self.args.train_batch_size)
        self.epoch_samplers = [sampler]
        return sampler

    def epoch_sampler(self, seed: int, dataset, batch: int) -> EpochSampler:
        """The order of one run of seed `seed` over `dataset` in batches of `batch` examples: length-grouped in
        megabatches of an optimizer step's examples (batch x grad_accum, as transformers' LengthGroupedSampler)
        or a plain permutation. `batch` is the run's global batch (train.batch_size): under data parallelism
        every process draws this same order and accelerate hands each its slice of every batch (split_batches,
        training_args), so the megabatches, hence the batches, are those of one process; in a pack, the
        member's own batch, so that it sees its solo order. The lengths as a plain list: datasets 4 hands over a
        lazy column, read element by element (0.4 s per epoch for 2,000 examples) when the megabatches are
        sorted."""
        lengths = None
        if self.args.train_sampling_strategy == "group_by_length":
            column = self.args.length_column_name
            lengths = list(dataset[column]) if column in dataset.column_names else [len(x["input_ids"])
                                                                                    for x in dataset]
        return EpochSampler(len(dataset), seed, lengths, batch * self.args.gradient_accumulation_steps)

    def _run_epoch(self, *args, **kwargs):
        for sampler in self.epoch_samplers:  # also a resumed run's first epoch: the order is the epoch's own
            sampler.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        torch.save([g.get_state() for g in self.dropout_generators], Path(output_dir) / DROPOUT_RNG_FILE)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        path = Path(checkpoint) / DROPOUT_RNG_FILE if checkpoint else None
        if path is not None and path.is_file():
            for generator, state in zip(self.dropout_generators, torch.load(path), strict=True):
                generator.set_state(state)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Mixed precision: accelerate applies autocast by wrapping the top-level model.forward, which
        # answer_loss_sum does not call (it runs the decoder and the head itself), so enter it here;
        # without this a bf16 run silently computes in fp32.
        batch = (inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        loss_sum = functools.partial(answer_loss_sum, fast_kernels=self.fast_kernels)
        with self.accelerator.autocast():
            if model is self.model:
                loss, n_tokens = loss_sum(model, *batch)
            else:  # DDP all-reduces the gradients only of a forward that ran through its wrapper
                with _forward_as(self.model, loss_sum):
                    loss, n_tokens = model(*batch)
        if num_items_in_batch is None:
            num_items_in_batch = n_tokens * self.args.gradient_accumulation_steps
        loss = loss / num_items_in_batch
        if self.accelerator.num_processes > 1:
            # num_items_in_batch counts the answer tokens of every process (average_tokens_across_devices) and
            # DDP averages the gradients over the processes: scaled back, the gradient is the single-process one
            loss = loss * self.accelerator.num_processes
        return (loss, {}) if return_outputs else loss


DROPOUT_RNG_FILE = "dropout_rng.pth"


class EpochSampler(torch.utils.data.Sampler[int]):
    """The example order of one epoch, drawn from a generator seeded by (seed, epoch): the same for a run, a
    resumed run and a run packed with others (pack.py), whatever else drew random numbers."""

    def __init__(self, size: int, seed: int, lengths: list[int] | None, megabatch: int):
        self.size, self.seed, self.lengths, self.megabatch, self.epoch = size, seed, lengths, megabatch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.lengths is not None:
            return list(get_length_grouped_indices(self.lengths, self.megabatch, generator=generator))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self):
        return iter(self.order())

    def __len__(self) -> int:
        return self.size


def dropout_generator(seed: int) -> torch.Generator:
    """The generator of a run's dropout masks (medsweep.kernels.FastDropout), seeded by train.seed."""
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def _forward_as(module: torch.nn.Module, function: Callable[..., Any]):
    """Within the block, `module(...)` runs `function(module, ...)`: the DDP wrapper calls its module, so the
    answer-only loss goes through DDP's forward (which arms the gradient all-reduce) without full logits."""
    previous = module.__dict__.get("forward")  # accelerate may have wrapped forward on the instance
    module.forward = functools.partial(function, module)
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


class DivergenceCheck(TrainerCallback):
    """Fails the run when training has diverged, instead of letting it end as `complete`: a non-finite loss at
    a logging step (the Trainer's NaN filter is off, so one bad step shows), or fp16's GradScaler skipping
    every optimizer step (overflow at every scale: nothing is learned)."""

    MAX_SKIPPED_IN_A_ROW = 50  # the scale halves per skip: 2^16 -> 2^-34, far below any useful scale

    def __init__(self):
        self.skipped_in_a_row = self.skipped = self.steps = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingDiverged(f"training diverged: loss {loss} at step {state.global_step} "
                                   f"(lower train.lr or use bf16 / fp32)")

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        skipped = bool(getattr(optimizer, "step_was_skipped", False))
        self.steps += 1
        self.skipped += skipped
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        if self.skipped_in_a_row >= self.MAX_SKIPPED_IN_A_ROW:
            raise TrainingDiverged(f"training diverged: fp16 GradScaler skipped {self.skipped_in_a_row} optimizer "
                                   f"steps in a row (gradients overflow at every scale) at step {state.global_step}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.steps and self.skipped == self.steps:
            raise TrainingDiverged(f"training diverged: fp16 GradScaler skipped all {self.steps} optimizer steps "
                                   f"(gradients overflow at every scale); nothing was learned")


class EpochEval(TrainerCallback):
    """Runs `evaluate(model) -> (metrics, rows)` after every epoch and keeps the metrics
    (eval.every_epoch=true); `final(step)` hands back the evaluation of the last epoch when training ended
    there, so the entrypoint does not generate the same answers twice."""

    def __init__(self, evaluate: Callable[[Any], tuple[dict[str, Any], list[dict[str, Any]]]]):
        self.evaluate = evaluate
        self.results: list[dict[str, Any]] = []
        self.last_rows: list[dict[str, Any]] | None = None

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        metrics, rows = self.evaluate(model)
        self.results.append({"epoch": round(state.epoch or 0, 3), "step": state.global_step, "metrics": metrics})
        self.last_rows = rows
        model.train()

    def final(self, step: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        last = self.results[-1] if self.results else None
        if not (last and last["step"] == step):
            return None
        assert self.last_rows is not None  # set together with every entry of self.results
        return last["metrics"], self.last_rows


class StepTimer(TrainerCallback):
    """Wall time of the first step and of the whole loop (start-up overhead and throughput). `startup_s`:
    seconds from process start to the beginning of the first step (Linux; None elsewhere)."""

    def __init__(self):
        self.train_begin = self.first_step_begin = self.first_step_end = self.startup_s = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step_begin is None:
            self.first_step_begin = time.perf_counter()
            self.startup_s = process_age_s()

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step_end is None:
            self.first_step_end = time.perf_counter()


def training_args(train_cfg: TrainConfig, profile_cfg: ProfileConfig, hw: Hardware, checkpoint_dir: Path
                  ) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        gradient_accumulation_steps=train_cfg.grad_accum,
        num_train_epochs=train_cfg.epochs,
        max_steps=train_cfg.max_steps,
        learning_rate=train_cfg.lr,
        lr_scheduler_type=train_cfg.lr_scheduler,
        warmup_steps=train_cfg.warmup_steps,
        weight_decay=train_cfg.weight_decay,
        max_grad_norm=train_cfg.max_grad_norm,
        seed=train_cfg.seed,
        data_seed=train_cfg.seed,
        bf16=hw.precision == "bf16",
        fp16=hw.precision == "fp16",
        use_cpu=hw.device == "cpu",
        logging_steps=train_cfg.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must show in the logs (DivergenceCheck), not be filtered out
        save_strategy="steps",
        save_steps=train_cfg.save_steps,
        save_total_limit=train_cfg.save_total_limit,
        train_sampling_strategy="group_by_length" if train_cfg.group_by_length else "random",
        length_column_name="length",
        remove_unused_columns=False,
        dataloader_num_workers=profile_cfg.dataloader_workers,
        report_to="none",
        disable_tqdm=True,  # medsweep.progress shows training's progress (a bar on a terminal, lines in a log)
        per_device_train_batch_size=train_cfg.batch_size,  # the global batch (split across processes)
        **(_data_parallel_args(profile_cfg, hw) if hw.world_size > 1 else {}),
    )


def _data_parallel_args(profile_cfg: ProfileConfig, hw: Hardware) -> dict[str, Any]:
    """train.batch_size is the global batch: the sampler draws the same batches as a single process would and
    accelerate splits each one across the processes, so a data-parallel run sees the same examples in the same
    steps (and, without dropout, ends with the same adapter within float rounding)."""
    return {
        "accelerator_config": {"split_batches": True},
        "average_tokens_across_devices": True,
        "ddp_backend": "nccl" if hw.device == "cuda" else "gloo",
        "ddp_find_unused_parameters": False,
        # rank 0 evaluates the base model (and each epoch) while the others wait in a collective
        "ddp_timeout": max(1800, 60 * profile_cfg.time_limit_min),
    }


def store_frozen_linears_in_bf16(model) -> int:
    """CPU bf16 autocast casts every fp32 weight to bf16 on every forward (a full copy of the model per step:
    a sizeable share of a step on an AMX CPU). The frozen base Linear weights are stored in bf16 once instead: autocast
    would round them exactly so, hence the same numbers, without the copies. The trainable LoRA weights stay
    fp32 (master weights); the embedding (tied to the LM head in small models) and the norms stay fp32 so
    the residual stream keeps its precision. Returns the number of Linear layers converted."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and head.weight is getattr(model.get_input_embeddings(), "weight", None)
    converted = 0
    for module in model.modules():
        if type(module) is not torch.nn.Linear or module.weight.requires_grad or module.weight.dtype != torch.float32:
            continue
        if module is head and tied:
            continue
        module.weight.data = module.weight.data.to(torch.bfloat16)
        if module.bias is not None and not module.bias.requires_grad:
            module.bias.data = module.bias.data.to(torch.bfloat16)
        converted += 1
    return converted


def build_trainer(model, tokenizer, train_ds, args: TrainingArguments, callbacks: list[TrainerCallback],
                  fast_kernels: bool = True, trainer_class: type[AnswerOnlyTrainer] = AnswerOnlyTrainer,
                  dropout_generators: list[torch.Generator] | None = None, **extra: Any) -> Trainer:
    """The AnswerOnlyTrainer of a run. `fast_kernels` (train.fast_kernels): medsweep.kernels' fused LoRA layers
    and linear cross-entropy and medsweep.attention's block-causal attention where they apply; False: the plain
    library computations (peft's LoRA forward, full logits, SDPA), for ablations and benchmarks."""
    if args.bf16 and args.use_cpu:  # CPU bf16 autocast: no per-step casts of the frozen weights
        log.info("bf16 on the CPU: %d frozen Linear layers stored in bf16", store_frozen_linears_in_bf16(model))
    generators = dropout_generators or [dropout_generator(args.seed)]  # a pack's: one per adapter (pack.py)
    if args.use_cpu and fast_kernels:
        log.info("LoRA on the CPU: %d dropouts draw their masks with numpy's SFC64, %d layers fused",
                 *fast_lora(model, generators[0]))
        if use_block_causal(model):
            log.info("causal attention on the CPU: block-causal matmuls (medsweep.attention) where SDPA would run")
    if not fast_kernels:
        log.info("train.fast_kernels=false: the library's LoRA forward, cross-entropy over full logits and attention")
    trainer = trainer_class(model=model, args=args, train_dataset=train_ds, data_collator=collator(tokenizer),
                            processing_class=tokenizer, callbacks=callbacks, fast_kernels=fast_kernels,
                            dropout_generators=generators, **extra)
    trainer.remove_callback(PrinterCallback)  # a dict per logging step: TrainingProgress says it in one line
    trainer.add_callback(TrainingProgress())
    return trainer


def _complete(checkpoint: Path, step: int) -> bool:
    """The Trainer writes a checkpoint's weights, optimizer, scheduler and RNG states first and trainer_state.json
    last: a checkpoint whose state file parses and names its own step was written to the end. A job killed while
    writing (kill -9, OOM killer, node loss) leaves one that does not."""
    try:
        return json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step") == step
    except (OSError, ValueError, AttributeError):
        return False


def last_checkpoint(checkpoint_dir: Path, tidy: bool = False) -> str | None:
    """The newest complete checkpoint-N, or None. `tidy` (the writing rank): incomplete newer ones are removed, so
    that neither the resumed Trainer nor its checkpoint rotation ever picks one up."""
    if not checkpoint_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in checkpoint_dir.iterdir()
                   if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and p.is_dir())
    for step, path in reversed(found):
        if _complete(path, step):
            return str(path)
        if tidy:
            log.warning("%s is incomplete (the job was stopped while writing it): removed", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def loss_history(trainer: Trainer) -> list[dict[str, Any]]:
    keys = ("step", "epoch", "loss", "learning_rate", "grad_norm")
    return [{k: h[k] for k in keys if k in h} for h in trainer.state.log_history if "loss" in h]
