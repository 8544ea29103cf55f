"""Evaluation on held-out pairs: batched greedy generation (medsweep/generation.py: left padding, length-sorted,
KV cache, each sequence stops at its end-of-turn token), answer-quality metrics, perplexity of the references,
latency.

Speed (scripts/bench.py; figures in README "Performance"): one decode step of a small model on a CPU is dominated
by reading the weights and by per-operator overhead, so a step for 32 sequences costs only a few times one for a
single sequence: far less per answer. Hence large length-sorted batches, and the LoRA adapter folded into a
temporary copy of the base weights for inference (`inference_weights`): one Linear per layer instead of base +
dropout + A + B + scale + add. The copy (the adapted layers' weights once more) is swapped in and the original weight
objects swapped back afterwards, so the model, and a training run resumed after an evaluation, is left
bit-identical (peft's merge/unmerge would not be)."""

from __future__ import annotations

import contextlib
import math
from statistics import quantiles
from typing import TYPE_CHECKING, Any

import torch

from medsweep import metrics
from medsweep.generation import decoding, generate_batched
from medsweep.hardware import Hardware, autocast
from medsweep.kernels import answer_loss_sum
from medsweep.progress import Progress
from medsweep.prompts import PromptStyle, collator, prompt_ids, tokenize

if TYPE_CHECKING:
    from medsweep.config import EvalConfig, RunConfig


Answers = tuple[list[str], list[float], list[int]]  # generate's: texts (stripped), seconds, tokens per record


@contextlib.contextmanager
def linear_weights_in(model, dtype: torch.dtype | None):
    """Within the block, every plain torch Linear of `model` not yet in `dtype` stores its weight in `dtype` (a copy;
    the original weight objects restored on exit). On a CPU with native bf16, bf16 weights mean
    that autocast casts no weight on every decode step. None: nothing changes."""
    swapped: list[tuple[torch.nn.Module, torch.Tensor]] = []
    try:
        if dtype is not None:
            for module in model.modules():
                if type(module) is torch.nn.Linear and module.weight.dtype != dtype:
                    swapped.append((module, module.weight))
                    module.weight = torch.nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)
        yield model
    finally:
        for module, weight in reversed(swapped):
            module.weight = weight


@contextlib.contextmanager
def inference_weights(model, hw: Hardware):
    """Within the block, every LoRA-adapted Linear of `model` computes with one merged weight W + s·B·A
    (a temporary copy: the original weight objects and adapter state are restored on exit, bit for bit).
    On a CPU with native bf16 the copies, and the other Linear weights (`linear_weights_in`), are stored in bf16.
    Only on the CPU: on a GPU the copy could cost gigabytes and the adapters' extra kernels matter less.
    Quantized or non-vanilla (DoRA ...) layers keep their forward."""
    if hw.device != "cpu":
        yield model
        return
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft missing: nothing can be adapted
        LoraLayer = ()  # type: ignore[misc, assignment]  # isinstance(x, ()) is False: the class, or nothing
    dtype = torch.bfloat16 if hw.precision == "bf16" else None
    swapped: list[tuple[torch.nn.Module, torch.Tensor, Any, list[str]]] = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if not isinstance(module, LoraLayer):
                    continue
                base = module.get_base_layer()
                active = [a for a in module.active_adapters if a in module.lora_A]
                if (not active or module.merged or module.disable_adapters
                        or type(base) is not torch.nn.Linear or any(a in module.lora_variant for a in active)):
                    continue
                weight = base.weight.detach().float()
                for adapter in active:
                    # declared by each LoraLayer subclass (Linear, Embedding, Conv ...), not by LoraLayer
                    weight = weight + module.get_delta_weight(adapter).float()  # type: ignore[attr-defined]
                swapped.append((base, base.weight, module, module.merged_adapters))
                base.weight = torch.nn.Parameter(weight.to(dtype or base.weight.dtype), requires_grad=False)
                module.merged_adapters = list(active)  # peft's forward now calls the base layer only
        with linear_weights_in(model, dtype):  # the folded copies are in dtype already
            yield model
    finally:
        for base, weight, module, merged in reversed(swapped):
            base.weight = weight
            module.merged_adapters = merged


@contextlib.contextmanager
def inference(model, hw: Hardware, fold_lora: bool = True):
    """Eval mode, torch.inference_mode and, with `fold_lora`, the folded LoRA weights (`inference_weights`) for the
    block; the model's train/eval mode is restored on exit."""
    was_training = model.training
    model.eval()
    try:
        with (inference_weights(model, hw) if fold_lora else contextlib.nullcontext(model)), torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def _percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return quantiles(values, n=100, method="inclusive")[q - 1]


def generate(model, tokenizer, records: list[dict[str, Any]], style: PromptStyle, eval_cfg: EvalConfig,
             hw: Hardware, fold_lora: bool = True) -> Answers:
    """Answers for `records` in their order (stripped), the amortized seconds per answer of each, and generated
    tokens (a stop token that ended an answer counted). `fold_lora=False`: the adapter's own forward (the plain
    path of train.fast_kernels=false)."""
    return generate_copies(model, tokenizer, records, style, eval_cfg, hw, inference(model, hw, fold_lora))[0]


def generate_copies(model, tokenizer, records: list[dict[str, Any]], style: PromptStyle, eval_cfg: EvalConfig,
                    hw: Hardware, weights: contextlib.AbstractContextManager, copies: int = 1) -> list[Answers]:
    """`generate`'s answers, once per copy of the questions: each generation batch holds `copies` adapter-major copies
    of its questions (generation.generate_batched), answered within the context `weights` (`inference(...)`, or a
    pack's mixed adapters, medsweep/mixed.py, where copy k is adapter k's)."""
    prompts = [prompt_ids(tokenizer, r, style.instruction, style.format, style.system_prompt) for r in records]
    options = decoding(eval_cfg.decoding == "sample", eval_cfg.temperature, eval_cfg.top_p)
    progress = Progress("generation", len(prompts) * copies, "answer")
    try:
        with weights:
            done = generate_batched(model, tokenizer, prompts, hw, eval_cfg.batch_size, eval_cfg.max_new_tokens,
                                    options, on_batch=lambda n: progress.update(n * copies), copies=copies)
    finally:
        progress.close()
        # right, not the side it had: training shares this tokenizer and its collator pads on the right
        tokenizer.padding_side = "right"
    n = len(prompts)
    return [([g.text.strip() for g in part], [g.seconds for g in part], [g.tokens + int(g.ended) for g in part])
            for part in (done[k * n:(k + 1) * n] for k in range(copies))]


PERPLEXITY_TOKENS = 8192  # padded tokens per teacher-forced batch (the LM head runs in chunks: bounded memory)


def perplexity(model, tokenizer, records: list[dict[str, Any]], style: PromptStyle, max_seq_length: int,
               hw: Hardware, batch_size: int, fast_kernels: bool = True) -> float:
    """exp(mean token NLL) of the reference answers given their prompts (teacher forcing). Length-sorted
    batches of at most `batch_size` rows and PERPLEXITY_TOKENS padded tokens (little padding); with
    `fast_kernels`, the LM head only on the answer positions and the adapter folded into the weights."""
    dataset, _ = tokenize(records, tokenizer, style, max_seq_length)
    rows = sorted(dataset.to_list(), key=lambda r: r["length"], reverse=True)
    batches, start = [], 0
    while start < len(rows):
        longest = rows[start]["length"]
        size = max(1, min(batch_size, PERPLEXITY_TOKENS // max(1, longest)))
        batches.append(rows[start:start + size])
        start += size
    collate = collator(tokenizer)
    total, count = 0.0, 0
    progress = Progress("perplexity", len(rows), "answer")
    with inference(model, hw, fold_lora=fast_kernels):
        for rows_ in batches:
            batch = {k: v.to(hw.device) for k, v in collate(rows_).items()}
            with autocast(hw):
                loss_sum, n = answer_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                              fast_kernels=fast_kernels)
            total, count = total + loss_sum.item(), count + int(n)
            progress.update(progress.done + len(rows_))
    progress.close()
    return math.exp(total / count) if count else float("nan")


def evaluate(model, tokenizer, records: list[dict[str, Any]], cfg: RunConfig, hw: Hardware,
             generated: Answers | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Corpus metrics and one prediction row per record (question, reference, generated, scores). `generated`: the
    answers, seconds and tokens `generate` would return, already generated (a pack's mixed batches, mixed.py)."""
    style = PromptStyle.of(cfg)
    fast = cfg.train.fast_kernels  # the ablation switch covers evaluation's fast paths too
    answers, seconds, n_tokens = generated or generate(model, tokenizer, records, style, cfg.eval, hw, fast)
    references = [r["answer"] for r in records]
    corpus, per_example = metrics.score_corpus(answers, references, semantic=cfg.eval.semantic)
    total_s = sum(seconds)
    result = {
        **corpus,
        "seconds_per_answer": total_s / len(records),
        "latency_p50_s": _percentile(seconds, 50),
        "latency_p95_s": _percentile(seconds, 95),
        "generated_tokens_per_s": sum(n_tokens) / total_s if total_s > 0 else float("nan"),
        "mean_generated_tokens": sum(n_tokens) / len(records),
        "n_eval": len(records),
    }
    labelled = [(metrics.extract_decision(a), r["label"])
                for a, r in zip(answers, records, strict=True) if r.get("label")]
    if labelled:
        result.update(metrics.decision_scores([p for p, _ in labelled], [g for _, g in labelled]))
    if cfg.eval.perplexity:
        result["perplexity"] = perplexity(model, tokenizer, records, style, cfg.train.max_seq_length,
                                          hw, cfg.eval.batch_size, fast_kernels=fast)
    rows = [
        {"id": r.get("id"), "question": r["question"], "reference": r["answer"], "generated": a,
         "seconds": s, "generated_tokens": n, **({"label": r["label"]} if r.get("label") else {}), "scores": sc}
        for r, a, s, n, sc in zip(records, answers, seconds, n_tokens, per_example, strict=True)
    ]
    return result, rows
