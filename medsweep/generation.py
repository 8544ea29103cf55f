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
    """generate() keyword arguments: sampling at `temperature` / `top_p`, or greedy. Greedy needs no more: sampling
    settings a model's generation_config carries do not apply without do_sample. (Passing them as None would not
    silence the one-time log about them either: transformers 5 checks the model's generation_config before the
    call's arguments apply.)"""
    if sample:
        return {"do_sample": True, "temperature": temperature, "top_p": top_p}
    return {"do_sample": False}


def until_stop(tokens: list[int], stop: list[int]) -> tuple[list[int], bool]:
    """The generated tokens before the first stop token, and whether there was one."""
    end = next((k for k, t in enumerate(tokens) if t in stop), None)
    return (tokens, False) if end is None else (tokens[:end], True)


def _by_length(prompts: list[list[int]], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches, longest first: similar lengths per batch, little padding."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _cache_name() -> str:
    """The keyword of a model's KV cache, in and out: `cache` from transformers 5.24 (`past_key_values` before, then
    deprecated)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _positions(mask):
    """Each token's position counted from its row's first real token (padding: clamped to 0 or repeating)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def next_token_probs(model, tokenizer, prompts: list[list[int]], hw: Hardware, batch_size: int):
    """The next-token probabilities after each prompt (a float32 tensor, prompts x vocabulary, on the CPU), one
    forward pass per batch of left-padded prompts. Positions count from each prompt's first real token, so that a
    prompt gets the same distribution alone or padded in a batch (rotary models would not notice the shift that
    padding makes; models with learned absolute positions, GPT-2, would). Grad mode and eval mode are the caller's."""
    return next_token_probs_after(model, tokenizer, prompts, [[[]] for _ in prompts], hw, batch_size)[:, 0]


def next_token_probs_after(model, tokenizer, prefixes: list[list[int]], continuations: list[list[list[int]]],
                           hw: Hardware, batch_size: int):
    """For each prefix i and each of its k continuations (continuations[i][j], k the same for every prefix; an empty
    one: the prefix alone), the next-token probabilities after prefix + continuation: a float32 tensor prefixes x k
    x vocabulary, on the CPU. Each batch of prefixes runs once and its keys and values are repeated for its k
    continuations, which run together as one batch: prompts that differ only at their end (the judge's three
    criteria) pay for their common start once. The continuations are left-padded after their prefix (padding in
    the middle, masked); positions count real tokens only, as in next_token_probs."""
    import torch

    k = len(continuations[0]) if continuations else 0
    cache_key = _cache_name()
    if any(len(c) != k for c in continuations):
        raise ValueError("every prefix needs the same number of continuations")
    out = torch.empty(len(prefixes), k, 0)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for idx in _by_length(prefixes, batch_size):
            head = tokenizer.pad({"input_ids": [prefixes[i] for i in idx]}, return_tensors="pt").to(hw.device)
            tails = [continuations[i][j] for i in idx for j in range(k)]
            with autocast(hw):
                found = model(**head, position_ids=_positions(head["attention_mask"]), use_cache=any(tails),
                              logits_to_keep=1)
                logits = found.logits[:, -1, :].repeat_interleave(k, dim=0)
                if any(tails):  # the continuations on the prefixes' cache; an empty one keeps the prefix's logits
                    cache = getattr(found, cache_key)
                    cache.batch_repeat_interleave(k)
                    tail = tokenizer.pad({"input_ids": [t or [tokenizer.pad_token_id or 0] for t in tails]},
                                         return_tensors="pt").to(hw.device)
                    mask = torch.cat([head["attention_mask"].repeat_interleave(k, dim=0), tail["attention_mask"]], 1)
                    after = model(input_ids=tail["input_ids"], attention_mask=mask, **{cache_key: cache},
                                  position_ids=_positions(mask)[:, head["input_ids"].shape[1]:], use_cache=True,
                                  logits_to_keep=1).logits[:, -1, :]
                    kept = torch.tensor([bool(t) for t in tails], device=after.device)
                    logits = torch.where(kept.unsqueeze(1), after, logits)
            probs = torch.softmax(logits.float(), dim=-1).cpu().view(len(idx), k, -1)
            if out.shape[2] == 0:
                out = torch.zeros(len(prefixes), k, probs.shape[2])
            out[idx] = probs
    finally:
        tokenizer.padding_side = side
    return out


def generate_batched(model, tokenizer, prompts: list[list[int]], hw: Hardware, batch_size: int, max_new_tokens: int,
                     options: dict[str, Any], on_batch: Callable[[int], None] | None = None, copies: int = 1
                     ) -> list[Generated]:
    """One `Generated` per prompt, in the order of `prompts`. `options`: further model.generate() keyword arguments
    (`decoding()`'s, a repetition_penalty ...). The tokenizer pads on the left meanwhile; its padding side is
    restored afterwards. Grad mode, eval mode and weights are the caller's. `on_batch(n)`: called after each batch
    with the number of prompts done so far (progress). `copies` > 1: each batch goes to generate() `copies` times
    over, copy-major (the rows of a mixed-adapter batch, medsweep/mixed.py), and the result is every prompt's
    `Generated` of copy 0, then of copy 1 ..., each batch's time shared by all its rows."""
    stop = stop_ids(tokenizer, model)
    done: dict[int, Generated] = {}
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    n = len(prompts)
    try:
        for idx in _by_length(prompts, batch_size):
            rows = [(copy, i) for copy in range(copies) for i in idx]  # copy-major
            batch = tokenizer.pad({"input_ids": [prompts[i] for _, i in rows]}, return_tensors="pt").to(hw.device)
            t0 = time.perf_counter()
            with autocast(hw):
                out = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=stop,
                                     pad_token_id=tokenizer.pad_token_id, use_cache=True, **options)
            elapsed = time.perf_counter() - t0
            new = out[:, batch["input_ids"].shape[1]:]
            for row, (copy, i) in enumerate(rows):
                tokens, ended = until_stop(new[row].tolist(), stop)
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                done[copy * n + i] = Generated(text, elapsed / len(rows), len(tokens), ended)
            if on_batch is not None:
                on_batch(len(done) // copies)
    finally:
        tokenizer.padding_side = side
    return [done[i] for i in range(n * copies)]
