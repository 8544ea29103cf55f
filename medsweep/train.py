"""LoRA training with the HF Trainer: tokenized answer-masked examples, dynamic padding, length-grouped
batches, logits and loss only on answer positions, checkpoints in the run directory for resume."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch.nn.functional as F

from medsweep.hardware import Hardware  # first: it keeps the CUDA-only bitsandbytes out of CPU jobs' imports
from medsweep.prompts import IGNORE_INDEX, tokenize_example
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

log = logging.getLogger(__name__)
MODEL_INPUTS = ("input_ids", "attention_mask", "labels")


def tokenize(records: list[dict[str, Any]], tokenizer, data_cfg: Any, model_cfg: Any, max_seq_length: int):
    """HF Dataset of answer-masked examples plus counts of dropped (prompt too long) / truncated ones."""
    from datasets import Dataset

    rows, dropped, truncated = [], 0, 0
    for rec in records:
        ex = tokenize_example(tokenizer, rec, data_cfg.instruction, model_cfg.prompt_format, max_seq_length,
                              model_cfg.system_prompt)
        if ex is None:
            dropped += 1
            continue
        truncated += ex.pop("truncated")
        rows.append(ex)
    stats = {"dropped_prompt_too_long": dropped, "answers_truncated": truncated, "examples": len(rows),
             "answer_tokens": sum(sum(t != IGNORE_INDEX for t in r["labels"]) for r in rows),
             "tokens": sum(r["length"] for r in rows)}
    return Dataset.from_list(rows), stats


def answer_loss_sum(model, input_ids, attention_mask, labels):
    """(sum of token cross-entropies over answer positions, number of answer tokens), running the LM head
    only on those positions. Works for a PEFT-wrapped or plain causal LM (Llama, Mistral, Gemma, GPT-2)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logits = lm.get_output_embeddings()(hidden[:, :-1][mask]).float()
    return F.cross_entropy(logits, targets[mask], reduction="sum"), mask.sum()


class AnswerOnlyTrainer(Trainer):
    """Trainer whose loss runs the LM head only where labels are (the answer tokens): the vocabulary
    projection and log-softmax over every prompt position are skipped. The loss is the same token-mean
    cross-entropy as the model's own, normalised by the answer tokens of the whole accumulated batch."""

    loss_is_scaled_for_ga = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, n_tokens = answer_loss_sum(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        if num_items_in_batch is None:
            num_items_in_batch = n_tokens * self.args.gradient_accumulation_steps
        loss = loss / num_items_in_batch
        return (loss, {}) if return_outputs else loss


class EpochEval(TrainerCallback):
    """Runs `evaluate(model)` after every epoch and keeps the results (eval.every_epoch=true)."""

    def __init__(self, evaluate: Callable[[Any], dict[str, float]]):
        self.evaluate, self.results = evaluate, []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        self.results.append({"epoch": round(state.epoch or 0, 3), "step": state.global_step,
                             "metrics": self.evaluate(model)})
        model.train()


class StepTimer(TrainerCallback):
    """Wall time of the first step and of the whole loop (start-up overhead and throughput)."""

    def __init__(self):
        self.train_begin = self.first_step_end = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step_end is None:
            self.first_step_end = time.perf_counter()


def training_args(train_cfg: Any, profile_cfg: Any, hw: Hardware, checkpoint_dir: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=train_cfg.batch_size,
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
        save_strategy="steps",
        save_steps=train_cfg.save_steps,
        save_total_limit=train_cfg.save_total_limit,
        train_sampling_strategy="group_by_length" if train_cfg.group_by_length else "random",
        length_column_name="length",
        remove_unused_columns=False,
        dataloader_num_workers=profile_cfg.dataloader_workers,
        report_to="none",
        disable_tqdm=True,
    )


def collator(tokenizer) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Dynamic padding to the longest example of the batch (labels padded with -100)."""
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)

    def collate(features):  # drop the `length` column used only by the length-grouped sampler
        return pad([{k: f[k] for k in MODEL_INPUTS} for f in features])

    return collate


def build_trainer(model, tokenizer, train_ds, args: TrainingArguments, callbacks: list[TrainerCallback]) -> Trainer:
    return AnswerOnlyTrainer(model=model, args=args, train_dataset=train_ds, data_collator=collator(tokenizer),
                             processing_class=tokenizer, callbacks=callbacks)


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    return get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None


def loss_history(trainer: Trainer) -> list[dict[str, Any]]:
    keys = ("step", "epoch", "loss", "learning_rate", "grad_norm")
    return [{k: h[k] for k in keys if k in h} for h in trainer.state.log_history if "loss" in h]
