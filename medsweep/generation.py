"""Batched generation from token-id prompts: the one decode loop that evaluation (medsweep/evaluate.py) and
medsweep-synth's local generator (medsweep/generators.py) share, and the next-token distribution after each prompt
(the local judge's scores, medsweep/judge_logprobs.py).

Prompts go longest first into batches of similar length (little padding), left-padded so that every row's new
tokens start at the same column, and are generated with the KV cache; each sequence stops at its first stop token
(the tokenizer's eos or any eos of the model's generation config, e.g. an end-of-turn token)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medsweep.hardware import Hardware, autocast


@dataclass(frozen=True)
class Generated:
    """What one prompt generated."""

    text: str  # decoded without special tokens, not stripped: evaluation strips, synth's cleaning does its own
    seconds: float  # its batch's generate() time shared equally by the batch's rows (amortized)
    tokens: int  # generated tokens before the stop token
    ended: bool  # a stop token ended it (else max_new_tokens did)


def stop_ids(tokenizer, model) -> list[int]:
    """The tokenizer's eos and every eos of the model's generation config (e.g. an end-of-turn token)."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return sorted(i for i in ids if i is not None)


def decoding(sample: bool, temperature: float | None = None, top_p: float | None = None) -> dict[str, Any]:
    """generate() keyword arguments: sampling at `temperature` / `top_p`, or greedy (with the sampling settings a
    model's generation_config may carry unset, so that they neither apply nor warn)."""
    if sample:
        return {"do_sample": True, "temperature": temperature, "top_p": top_p}
    return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def until_stop(tokens: list[int], stop: list[int]) -> tuple[list[int], bool]:
    """The generated tokens before the first stop token, and whether there was one."""
    end = next((k for k, t in enumerate(tokens) if t in stop), None)
    return (tokens, False) if end is None else (tokens[:end], True)


def _by_length(prompts: list[list[int]], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches, longest first: similar lengths per batch, little padding."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def next_token_probs(model, tokenizer, prompts: list[list[int]], hw: Hardware, batch_size: int):
    """The next-token probabilities after each prompt (a float32 tensor, prompts x vocabulary, on the CPU), one
    forward pass per batch of left-padded prompts. Positions count from each prompt's first real token, so that a
    prompt gets the same distribution alone or padded in a batch (rotary models would not notice the shift that
    padding makes; models with learned absolute positions, GPT-2, would). Grad mode and eval mode are the caller's."""
    import torch

    out = torch.empty(len(prompts), 0)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for idx in _by_length(prompts, batch_size):
            batch = tokenizer.pad({"input_ids": [prompts[i] for i in idx]}, return_tensors="pt").to(hw.device)
            positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with autocast(hw):
                logits = model(**batch, position_ids=positions, use_cache=False).logits[:, -1, :]
            probs = torch.softmax(logits.float(), dim=-1).cpu()
            if out.shape[1] == 0:
                out = torch.zeros(len(prompts), probs.shape[1])
            out[idx] = probs
    finally:
        tokenizer.padding_side = side
    return out


def generate_batched(model, tokenizer, prompts: list[list[int]], hw: Hardware, batch_size: int, max_new_tokens: int,
                     options: dict[str, Any], on_batch: Callable[[int], None] | None = None) -> list[Generated]:
    """One `Generated` per prompt, in the order of `prompts`. `options`: further model.generate() keyword arguments
    (`decoding()`'s, a repetition_penalty ...). The tokenizer pads on the left meanwhile; its padding side is
    restored afterwards. Grad mode, eval mode and weights are the caller's. `on_batch(n)`: called after each batch
    with the number of prompts done so far (progress)."""
    stop = stop_ids(tokenizer, model)
    done: dict[int, Generated] = {}
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for idx in _by_length(prompts, batch_size):
            batch = tokenizer.pad({"input_ids": [prompts[i] for i in idx]}, return_tensors="pt").to(hw.device)
            t0 = time.perf_counter()
            with autocast(hw):
                out = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=stop,
                                     pad_token_id=tokenizer.pad_token_id, use_cache=True, **options)
            elapsed = time.perf_counter() - t0
            new = out[:, batch["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                tokens, ended = until_stop(new[row].tolist(), stop)
                done[i] = Generated(tokenizer.decode(tokens, skip_special_tokens=True), elapsed / len(idx),
                                    len(tokens), ended)
            if on_batch is not None:
                on_batch(len(done))
    finally:
        tokenizer.padding_side = side
    return [done[i] for i in range(len(prompts))]
