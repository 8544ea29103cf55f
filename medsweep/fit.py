"""Will this model train on this profile? GPU memory and GPU-hour estimates, checked before any submission.

Memory (GiB, summed over the profile's GPUs: with 2 GPUs the model is split across both):
    weights      = params x bytes/param  (fp32 4, fp16/bf16 2, NF4 4-bit 0.55 incl. quantization constants)
    activations  = batch x seq x hidden x layers x k x 2 bytes, k = 2 with gradient checkpointing
                   (one saved layer input per layer) else 34 (Korthikanti et al. 2022, flash/SDPA attention)
    logits       = batch x seq x vocab x 6 bytes (half-precision logits + the fp32 copy for the loss)
    overhead     = 1.5 GiB per GPU (CUDA context, allocator, LoRA weights and their AdamW state)
A job fits when the sum is at most 95% of gpus x gpu_memory_gb. CPU profiles always fit (host memory).

GPU-hours: 4·N FLOPs per trained token for a frozen base with LoRA (2·N forward + 2·N for activation
gradients), tokens = training examples x mean tokens per example x epochs, at `site.mfu_assumed` of the
profile's tensor peak; evaluation is not included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 2**30
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "nf4": 0.55}
OVERHEAD_GIB = 1.5
USABLE = 0.95
ASSUMED_TRAIN_EXAMPLES = 1900  # the paper's training split, when the config does not bound it
MEAN_TOKENS_FRACTION = 0.6  # mean example length as a fraction of max_seq_length (MedQuAD-like data)


@dataclass
class Fit:
    fits: bool
    need_gib: float
    have_gib: float
    detail: str
    gpu_hours: float


def weight_format(cfg: Any) -> str:
    if cfg.profile.device == "cpu" or cfg.profile.gpus == 0:
        return "fp32"
    if cfg.model.load_in_4bit in (True, "auto"):
        return "nf4"
    precision = cfg.profile.precision
    return precision if precision in ("fp16", "bf16") else "fp16"


def estimate(cfg: Any) -> Fit:
    """Memory need vs the profile's GPU memory, and estimated GPU-hours, for one job's config."""
    m, t, p = cfg.model, cfg.train, cfg.profile
    params = m.params_b * 1e9
    fmt = weight_format(cfg)
    ckpt = p.gradient_checkpointing if t.gradient_checkpointing == "auto" else bool(t.gradient_checkpointing)
    hidden, layers, vocab = (getattr(m, "hidden_size", 0) or 0, getattr(m, "num_layers", 0) or 0,
                             getattr(m, "vocab_size", 0) or 0)
    tokens = t.batch_size * t.max_seq_length
    weights = params * BYTES_PER_PARAM[fmt] / GIB
    activations = tokens * hidden * layers * (2 if ckpt else 34) * 2 / GIB
    logits = tokens * vocab * 6 / GIB
    gpus = max(p.gpus, 1)
    need = weights + activations + logits + OVERHEAD_GIB * gpus
    have = p.gpus * p.gpu_memory_gb * USABLE
    examples = t.train_size or cfg.data.limit or ASSUMED_TRAIN_EXAMPLES
    epochs = t.epochs if t.max_steps <= 0 else t.max_steps * t.batch_size * t.grad_accum / examples
    train_tokens = examples * t.max_seq_length * MEAN_TOKENS_FRACTION * epochs
    peak = p.gpu_tflops * 1e12 * p.gpus * cfg.site.mfu_assumed
    gpu_hours = (4 * params * train_tokens / peak / 3600 * p.gpus) if peak > 0 else 0.0
    detail = (f"{m.name} ({m.params_b:g}B, {fmt}) on {p.name}: needs {need:.1f} GiB = weights {weights:.1f} + "
              f"activations {activations:.1f} + logits {logits:.1f} + overhead {OVERHEAD_GIB * gpus:.1f}; "
              f"has {p.gpus} x {p.gpu_memory_gb:g} GB (usable {have:.1f} GiB)")
    if p.device == "cpu" or p.gpus == 0:
        return Fit(True, need, float("inf"), detail.split(":")[0] + ": CPU profile (host memory)", 0.0)
    return Fit(need <= have, need, have, detail, gpu_hours)
