"""Will this model train on this profile? The job's parallel layout, its GPU memory need and its GPU-hours,
decided before any submission.

Layout: `parallel(cfg) -> (mode, world_size)`, decided here once and used by the launcher, --plan and the job.
    cpu            a CPU profile, one process (host memory: always fits)
    single         one GPU
    data_parallel  one process per GPU (or profile.processes > 1 CPU processes over gloo), each a full replica that
                   takes train.batch_size / world_size rows of every step (train.batch_size is the global batch);
                   gradients are all-reduced
    model_split    one process, the layers split across the profile's GPUs (device_map=auto)
With 2+ GPUs, profile.parallel=auto takes data parallelism when one replica, at its share of the batch, fits one
GPU, else the model split; parallel=data insists (and is refused when a replica does not fit one GPU);
parallel=model forces the split.

Memory, in GiB (gpu_memory_gb is read as GiB: a "16 GB" V100 has 16 GiB). Compared with 95% of one GPU for single
and data parallel (the need of one replica), with 95% of gpus x gpu_memory_gb for the model split (the need summed
over the GPUs). Evaluation runs after training on the same weights, so the two peaks do not add up:
    need = weights + overhead + max(training, evaluation)
    weights      params x 2 bytes in fp16/bf16 (params x 4 on the CPU, fp32). QLoRA: the embedding and the LM head,
                 vocab x hidden x 4 bytes each (once when tied), because peft's prepare_model_for_kbit_training casts
                 every parameter that is not 4-bit to fp32 (peft/utils/other.py); the other parameters in NF4 at
                 4.127 bits (4-bit codes + double-quantized block constants, 0.127 bits/param: Dettmers et al. 2023,
                 "QLoRA", section 3)
    overhead     1.5 GiB per GPU: CUDA context, LoRA weights + gradients + AdamW state, allocator slack
    training     rows = this process's share of train.batch_size, s = train.max_seq_length, L layers, a = bytes per
                 activation element (below), k = 34:
      activations  with gradient checkpointing: L x rows x s x hidden x a (the saved input of every layer) + one
                   layer's activations while it is recomputed in the backward pass; without: L layers' activations.
                   One layer = rows x s x hidden x k x a/2 bytes: Korthikanti et al. 2022, "Reducing Activation
                   Recomputation in Large Transformer Models", eq. 1, sbh(34 + 5as/h) bytes per layer in 16-bit
                   (the 2 bytes per element are already in 34); the 5as/h attention scores are never stored by the
                   flash / memory-efficient SDPA kernels. Their "full recomputation" keeps 2sbh per layer = a·sbh.
                   (LoRA's dropout on each adapted input adds a masked copy per adapter, not counted.)
      loss         min(rows x s, 1024) x vocab x 6 bytes: kernels.linear_cross_entropy runs the LM head on 1024 rows
                   at a time (an fp32 buffer + one 16-bit temporary), never the full tokens x vocab logits
      head cast    QLoRA only: vocab x hidden x 2, the 16-bit copy autocast makes of the fp32 LM head
    evaluation   b = eval.batch_size (the generation batch, per process), prompts taken as s tokens (generation
                 prompts are not truncated: longer questions need more):
      KV cache     b x (s + eval.max_new_tokens) x L x 2 (K and V) x kv_width x a, kv_width = KV heads x head_dim
                   (model.kv_width; 0 = hidden_size). Llama-2-7B: 0.5 MB per token in fp16, Llama-3-8B: 128 KB.
      prefill      the prompts' part of the KV cache (b x s tokens) + b x s x hidden x k x a/2, one layer's
                   activations for the prompts (nothing is kept for a backward pass, so only the layer being run
                   holds its intermediates); evaluation takes the larger of the prefill and the full KV cache
      logits       b x vocab x (a + 4): generate() computes the last position only (logits_to_keep=1), then an
                   fp32 copy; plus the QLoRA head cast as in training
    a            2 bytes in fp16/bf16. 4 with QLoRA: after prepare_model_for_kbit_training the embeddings and norms
                 are fp32 and bitsandbytes returns its input's dtype, so the residual stream, the saved layer inputs
                 and the K/V cache are fp32. 4 on the CPU (fp32).
A CPU profile always fits (host memory); its need is still reported.

GPU-hours: FLOPs per trained token = 4·N for a frozen base (2·N forward, 2·N for the activation gradients; LoRA's
own are negligible), 6·N with gradient checkpointing (one more forward per step); tokens = training examples x mean
tokens per example x epochs; one GPU's time at `site.mfu_assumed` of its dense fp16/bf16 tensor peak. Data
parallel: each of the gpus GPUs runs 1/gpus of it, so the GPU-hours are those of one GPU (no communication cost
counted). Model split: the layers run one GPU at a time, so the job takes one GPU's time while holding all of
them: GPU-hours = that time x gpus. Evaluation is not included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medsweep.config import RunConfig

GIB = 2**30
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}
NF4_BYTES = (4 + 0.127) / 8  # QLoRA section 3: NF4 codes + double-quantized constants (0.127 bits/param)
OVERHEAD_GIB = 1.5
USABLE = 0.95
LAYER_BYTES = 34  # Korthikanti et al. 2022: bytes per token per hidden unit of one layer's activations in 16-bit
LOSS_ROWS = 1024  # medsweep.kernels.ROW_CHUNK: logit rows alive at once in the chunked cross-entropy
LOSS_BYTES = 6  # per logit: the fp32 chunk buffer + one 16-bit temporary
ASSUMED_TRAIN_EXAMPLES = 1900  # the paper's training split, when the config does not bound it
MEAN_TOKENS_FRACTION = 0.6  # mean example length as a fraction of max_seq_length (MedQuAD-like data)
MODES = ("cpu", "single", "data_parallel", "model_split")


@dataclass
class Fit:
    fits: bool
    need_gib: float  # single / data parallel: one GPU (one replica); model split: summed over the GPUs
    have_gib: float  # usable memory the need is compared with (inf on a CPU profile)
    detail: str  # one line: model, profile, layout, every term, the memory it has
    gpu_hours: float
    mode: str = "single"  # cpu | single | data_parallel | model_split (parallel(cfg))
    world_size: int = 1  # processes of the job
    parts: dict[str, float] = field(default_factory=dict)  # each term in GiB (weights, training, evaluation, ...)


def weight_format(cfg: RunConfig) -> str:
    if _on_cpu(cfg.profile):
        return "fp32"
    m = cfg.model
    if m.load_in_4bit is True or (m.load_in_4bit == "auto" and m.source != "random"):  # as models.use_4bit
        return "nf4"
    precision = cfg.profile.precision
    return precision if precision in ("fp16", "bf16") else "fp16"


def _on_cpu(p: Any) -> bool:
    return p.device == "cpu" or p.gpus == 0


def gradient_checkpointing(cfg: RunConfig) -> bool:
    """train.gradient_checkpointing with `auto` resolved: the profile's choice (on for GPU profiles that ask for it).
    The one place `auto` is resolved: the estimate and the training run read this."""
    t = cfg.train
    return bool(cfg.profile.gradient_checkpointing if t.gradient_checkpointing == "auto" else t.gradient_checkpointing)


def memory(cfg: RunConfig, rows: int | None = None) -> dict[str, float]:
    """Every memory term in GiB for one replica training `rows` rows per step (default train.batch_size)."""
    m, t, e = cfg.model, cfg.train, cfg.eval
    fmt = weight_format(cfg)
    rows = t.batch_size if rows is None else rows
    params = m.params_b * 1e9
    hidden, layers, vocab = m.hidden_size, m.num_layers, m.vocab_size
    kv_width = getattr(m, "kv_width", 0) or hidden
    embedding = vocab * hidden * (1 if getattr(m, "tie_word_embeddings", False) else 2)
    if fmt == "nf4":
        weights = embedding * 4 + max(params - embedding, 0.0) * NF4_BYTES
        act, head_cast = 4, vocab * hidden * 2
    else:
        weights = params * BYTES_PER_PARAM[fmt]
        act, head_cast = (4 if fmt == "fp32" else 2), 0
    s = t.max_seq_length
    tokens = rows * s
    one_layer = tokens * hidden * LAYER_BYTES * act / 2
    activations = layers * tokens * hidden * act + one_layer if gradient_checkpointing(cfg) else layers * one_layer
    loss = min(tokens, LOSS_ROWS) * vocab * LOSS_BYTES
    b = e.batch_size
    kv_per_token = b * layers * 2 * kv_width * act
    kv_cache = kv_per_token * (s + e.max_new_tokens)
    prefill = kv_per_token * s + b * s * hidden * LAYER_BYTES * act / 2  # the prompts' K/V + the layer being run
    logits = b * vocab * (act + 4)
    parts = {"weights": weights, "activations": activations, "loss": loss, "head_cast": head_cast,
             "training": activations + loss + head_cast,
             "kv_cache": kv_cache, "prefill": prefill, "logits": logits,
             "evaluation": max(kv_cache, prefill) + logits + head_cast}
    return {k: v / GIB for k, v in parts.items()}


def _replica_gib(parts: dict[str, float], gpus: int = 1) -> float:
    return parts["weights"] + OVERHEAD_GIB * gpus + max(parts["training"], parts["evaluation"])


def parallel(cfg: RunConfig) -> tuple[str, int]:
    """(mode, world_size) of the job: cpu | single | data_parallel | model_split, and its number of processes."""
    p = cfg.profile
    processes = int(getattr(p, "processes", 0) or 0)
    if _on_cpu(p):
        return ("data_parallel", processes) if processes > 1 else ("cpu", 1)
    if p.gpus <= 1:
        return "single", 1
    choice = getattr(p, "parallel", "auto")
    if choice == "model":
        return "model_split", 1
    if choice == "data":
        return "data_parallel", p.gpus
    replica = _replica_gib(memory(cfg, math.ceil(cfg.train.batch_size / p.gpus)))
    return ("data_parallel", p.gpus) if replica <= p.gpu_memory_gb * USABLE else ("model_split", 1)


def gpu_hours(cfg: RunConfig, mode: str) -> float:
    """Estimated GPU-hours of training (see the module docstring)."""
    t, p = cfg.train, cfg.profile
    if mode == "cpu" or _on_cpu(p):
        return 0.0
    peak = p.gpu_tflops * 1e12 * cfg.site.mfu_assumed
    if peak <= 0:
        return 0.0
    examples = t.train_size or cfg.data.limit or ASSUMED_TRAIN_EXAMPLES
    epochs = t.epochs if t.max_steps <= 0 else t.max_steps * t.batch_size * t.grad_accum / examples
    train_tokens = examples * t.max_seq_length * MEAN_TOKENS_FRACTION * epochs
    flops = (6 if gradient_checkpointing(cfg) else 4) * cfg.model.params_b * 1e9 * train_tokens
    one_gpu_hours = flops / peak / 3600
    # data parallel: one_gpu_hours / gpus of wall time on each of gpus GPUs; model split: one_gpu_hours of wall time
    # holding all the GPUs (one works at a time)
    return one_gpu_hours * p.gpus if mode == "model_split" else one_gpu_hours


AUTO_PACK_CPU = 8  # pack=auto on a CPU: the frozen layers' work is shared, the adapters' and the loss's are not


def pack_size(cfg: RunConfig) -> int:
    """pack=auto: how many runs of `cfg`'s shape train in one process (medsweep/pack.py). Their batches are stacked
    next to one base model, so each adds its training activations and loss; evaluation runs one adapter at a time.
    As many as the job's memory holds: one GPU's on a GPU profile, the job's host memory (profile.memory_gb) on a
    CPU one, where at most AUTO_PACK_CPU. A model split or data parallel over several GPUs trains alone."""
    p = cfg.profile
    on_cpu = _on_cpu(p)
    if not on_cpu and parallel(cfg)[0] != "single":
        return 1
    parts = memory(cfg)
    room = (p.memory_gb if on_cpu else p.gpu_memory_gb) * USABLE - parts["weights"] - OVERHEAD_GIB
    size = max(1, int(room // parts["training"])) if parts["training"] > 0 else 1
    return min(size, AUTO_PACK_CPU) if on_cpu else size


def estimate(cfg: RunConfig) -> Fit:
    """The job's layout, memory need vs its GPUs' memory, and estimated GPU-hours."""
    m, t, p = cfg.model, cfg.train, cfg.profile
    mode, world = parallel(cfg)
    rows = math.ceil(t.batch_size / world) if mode == "data_parallel" else t.batch_size
    parts = memory(cfg, rows)
    gpus = p.gpus if mode == "model_split" else 1
    need = _replica_gib(parts, gpus)
    have = gpus * p.gpu_memory_gb * USABLE
    layout = {"cpu": "CPU",
              "single": "1 GPU",
              "data_parallel": f"data parallel, {world} processes x {rows} rows, need per "
                               + ("process" if _on_cpu(p) else "GPU"),
              "model_split": f"model split across {p.gpus} GPUs, need summed"}[mode]
    head = f" + head cast {parts['head_cast']:.1f}" if parts["head_cast"] else ""
    phase = "training" if parts["training"] >= parts["evaluation"] else "evaluation"
    detail = (f"{m.name} ({m.params_b:g}B, {weight_format(cfg)}) on {p.name} ({layout}): needs {need:.1f} GiB = "
              f"weights {parts['weights']:.1f} + overhead {OVERHEAD_GIB * gpus:.1f} + {phase} "
              f"{parts[phase]:.1f} [training {parts['training']:.1f} = activations {parts['activations']:.1f} + "
              f"loss {parts['loss']:.1f}{head}; evaluation {parts['evaluation']:.1f} = max(KV cache "
              f"{parts['kv_cache']:.1f} for {cfg.eval.batch_size} x {t.max_seq_length + cfg.eval.max_new_tokens} "
              f"tokens, prefill {parts['prefill']:.1f}) + logits {parts['logits']:.1f}{head}]")
    if _on_cpu(p):
        return Fit(True, need, float("inf"), detail + "; CPU profile (host memory)", 0.0, mode, world, parts)
    detail += f"; has {gpus} x {p.gpu_memory_gb:g} GB (usable {have:.1f} GiB)"
    fits = need <= have
    if not fits and mode == "data_parallel":
        detail += "; profile.parallel=data but one replica does not fit one GPU (parallel=auto splits the model)"
    if not fits and phase == "evaluation":
        detail += "; evaluation dominates: a smaller eval.batch_size lowers it"
    return Fit(fits, need, have, detail, gpu_hours(cfg, mode), mode, world, parts)
