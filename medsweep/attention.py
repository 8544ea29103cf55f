"""Causal self-attention for CPU training: block-causal, with the softmax probabilities kept for the backward pass.

For causal training without a padding mask (medsweep's right-padded batches, `kernels.right_padded`), SDPA runs
torch's CPU flash-attention kernel. At 512 tokens it runs far below the machine's matmul peak, and it is a sizeable
share of a SmolLM2 training step. This computes the same function with batched matmuls:
  - for each block of BLOCK queries, scores against only the keys at or before the block. The upper triangle is
    skipped: 56% of the full square is computed at 512 tokens;
  - the G query heads that share a key/value head are stacked as rows of one matmul per (sequence, KV head);
  - the probabilities are kept for the backward pass instead of being recomputed. They take about
    layers x batch x heads x T^2 / 2 x 4 bytes; above BUDGET_BYTES it falls back to SDPA.
README "Performance" has what it saves per step (forward + backward against SDPA's).

Anything else goes to transformers' own SDPA function unchanged: a mask, dropout, CUDA, a dtype other than fp32,
autocast, a KV cache (queries shorter than keys), no gradient, a sliding window shorter than the sequence,
softcapping, sinks, any keyword argument it does not know.

Use: `use_block_causal(model)` switches a model that runs "sdpa" to this implementation (registered with
transformers' AttentionInterface, with SDPA's masks).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from medsweep.kernels import cpu_fp32

NAME = "medsweep_block_causal"
BLOCK = 64  # queries per block: 8 blocks at 512 tokens (128 and 256 were measured slower at 4 x 512)
BUDGET_BYTES = 2 << 30  # probabilities kept for the backward pass, all layers together
# keyword arguments that change nothing here: positions (RoPE is already applied; without a mask there is no
# packing), and flags about the model's outputs (the cache is updated before attention; queries = keys is checked)
_NEUTRAL = {"position_ids", "cache_position", "use_cache", "output_hidden_states"}
_UNSET = {"output_attentions", "softcap", "s_aux", "sinks", "position_bias", "cache"}  # covered when falsy


def use_block_causal(model) -> bool:
    """Switch `model` (a transformers model, or a peft model around one) from "sdpa" to this implementation.
    Returns whether it did: models on another implementation are left as they are."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the masks stay SDPA's: a fallback is plain SDPA
    base.set_attn_implementation(NAME)
    return base.config._attn_implementation == NAME


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: query [B, H, T, D], key/value [B, KV, T, D];
    returns ([B, T, H, D], None)."""
    if _applies(module, query, key, value, attention_mask, dropout, is_causal, kwargs):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return BlockCausal.apply(query, key, value, scale), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def _applies(module, query, key, value, attention_mask, dropout, is_causal, kwargs) -> bool:
    batch, heads, length, _ = query.shape
    kv_heads = key.shape[1]
    return (attention_mask is None and not dropout and is_causal is not False and getattr(module, "is_causal", True)
            and cpu_fp32(query, key, value)
            and torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
            and length > 1 and key.shape[2] == length and value.shape[2] == length and heads % kv_heads == 0
            and all(k in _NEUTRAL or (k in _UNSET and not v) or (k == "sliding_window" and (v is None or v >= length))
                    for k, v in kwargs.items())
            and _kept_bytes(batch, heads, length) * _layers(module) <= BUDGET_BYTES)


def _layers(module) -> int:
    config = getattr(module, "config", None)
    return getattr(config, "num_hidden_layers", None) or 1


def _kept_bytes(batch: int, heads: int, length: int) -> int:
    """Bytes of fp32 probabilities one layer keeps: query block i attends to (i + 1) x BLOCK keys."""
    keys = sum(min(start + BLOCK, length) * (min(start + BLOCK, length) - start) for start in range(0, length, BLOCK))
    return batch * heads * keys * 4


class BlockCausal(torch.autograd.Function):
    """softmax(q k^T * scale + causal) v for fp32 CPU tensors, query block by query block."""

    @staticmethod
    def forward(ctx, query, key, value, scale):
        batch, heads, length, dim = query.shape
        kv_heads = key.shape[1]
        groups = heads // kv_heads
        rows = batch * kv_heads
        q = query.reshape(batch, kv_heads, groups, length, dim)  # heads h = j * groups + g share KV head j
        k = key.reshape(rows, length, dim)
        v = value.reshape(rows, length, dim)
        out = query.new_empty(batch, length, kv_heads, groups, dim)  # the [B, T, H, D] layout attention returns
        blocks = []
        for start in range(0, length, BLOCK):
            end = min(start + BLOCK, length)
            size = end - start
            q_block = q[:, :, :, start:end].reshape(rows, groups * size, dim).mul(scale)  # a copy, never the input
            scores = torch.bmm(q_block, k[:, :end].transpose(1, 2))
            causal = torch.full((size, size), float("-inf"), dtype=scores.dtype).triu_(1)
            scores.view(rows, groups, size, end)[..., start:] += causal
            probs = torch.softmax(scores, dim=-1)
            o_block = torch.bmm(probs, v[:, :end])
            out[:, start:end] = o_block.view(batch, kv_heads, groups, size, dim).permute(0, 3, 1, 2, 4)
            blocks += [q_block, probs, o_block]
        ctx.save_for_backward(k, v, *blocks)
        ctx.shape, ctx.scale = (batch, heads, length, dim, kv_heads), scale
        return out.view(batch, length, heads, dim)

    @staticmethod
    def backward(ctx, grad_out):
        k, v, *blocks = ctx.saved_tensors
        batch, heads, length, dim, kv_heads = ctx.shape
        groups, rows = heads // kv_heads, batch * kv_heads
        grad_q = grad_out.new_empty(batch, length, kv_heads, groups, dim)
        grad_k, grad_v = torch.zeros_like(k), torch.zeros_like(v)
        grad_out = grad_out.reshape(batch, length, kv_heads, groups, dim)
        for i, start in enumerate(range(0, length, BLOCK)):
            end = min(start + BLOCK, length)
            size = end - start
            q_block, probs, o_block = blocks[3 * i: 3 * i + 3]
            g_block = grad_out[:, start:end].permute(0, 2, 3, 1, 4).reshape(rows, groups * size, dim)
            grad_v[:, :end].baddbmm_(probs.transpose(1, 2), g_block)
            delta = (g_block * o_block).sum(-1, keepdim=True)
            grad_scores = torch.bmm(g_block, v[:, :end].transpose(1, 2)).sub_(delta).mul_(probs)
            grad_q_block = torch.bmm(grad_scores, k[:, :end]).mul_(ctx.scale)
            grad_q[:, start:end] = grad_q_block.view(batch, kv_heads, groups, size, dim).permute(0, 3, 1, 2, 4)
            grad_k[:, :end].baddbmm_(grad_scores.transpose(1, 2), q_block)  # q_block holds q * scale
        return (grad_q.view(batch, length, heads, dim).transpose(1, 2), grad_k.view(batch, kv_heads, length, dim),
                grad_v.view(batch, kv_heads, length, dim), None)
