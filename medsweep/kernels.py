"""Training hot spots on a CPU, replaced by cheaper equivalents (scripts/bench.py measures them).

`fast_lora(model)`: peft's LoRA layer computes `result + lora_B(lora_A(dropout(x))) * scaling`, i.e. per
adapted layer and step a Bernoulli mask of tokens x in_features from torch's CPU generator (slow: a noticeable
share of a SmolLM2 step), a masked copy of x, two skinny matmuls whose weight gradients autograd computes in the
form MKL is slowest at (features x tokens @ tokens x rank), and two passes over tokens x
out_features for the scaling and the sum. `FusedLoraLinear` does the same arithmetic in one autograd
Function (`_LoraDelta`): masks from numpy's SFC64 (raw 64-bit draws read as int16, seeded by one draw of
torch's generator, so runs stay reproducible and a resumed run, whose torch RNG state is in the checkpoint,
draws the same masks), applied as a float multiply; the dropout scale and `scaling` applied to the
tokens x rank activations; the update added in place into the frozen layer's output; the weight gradients
as rank x tokens @ tokens x features products. p is rounded to a multiple of 1/65536 (0.05 -> 0.0500031)
and the scale uses the rounded value, so the expectation is exact. Anything else (autocast, CUDA, DoRA,
merged or several adapters) runs peft's own forward, with `FastDropout` drawing the same masks.

`linear_cross_entropy(hidden, head, targets)`: the LM head and the summed cross-entropy, in row chunks,
computing the gradient with respect to the hidden states during the forward pass (softmax - one-hot, times
the head weight). No tokens x vocabulary logits, log-softmax or its gradient are kept for the backward pass
(~1.5 GB for 4 x 512 answer tokens with a 49k vocabulary), and exp runs once per logit instead of twice.

`answer_loss_sum(model, input_ids, attention_mask, labels)`: the loss of training and of the perplexity evaluation,
on CPU and GPU alike: the decoder, then the LM head on the answer positions only, through `linear_cross_entropy`
(`fast_kernels=False`, what train.fast_kernels=false trains with: the library's `plain_cross_entropy`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from medsweep.prompts import IGNORE_INDEX

ROW_CHUNK = 1024  # rows of logits alive at once (1024 x 49k fp32: 200 MB)


def cpu_fp32(*tensors: torch.Tensor) -> bool:
    """Whether these tensors are fp32 on the CPU outside autocast: where medsweep's CPU kernels apply."""
    return (not torch.is_autocast_enabled("cpu")
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors))


def dropout_bits(shape: torch.Size, generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniform int16 per element: the raw 64-bit output of numpy's SFC64, seeded by one draw of `generator`
    (the run's own dropout generator, whose state its checkpoints keep, so a resumed run draws the same masks;
    None: torch's global one), read as four int16 per draw."""
    n = int(np.prod(shape))
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return torch.from_numpy(np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.int16)[:n]).view(shape)


def keep_mask(bits: torch.Tensor, p: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """1.0 where an element is kept (probability 1 - p, p rounded to a multiple of 1/65536), 0.0 where it is
    dropped. A float mask: multiplying by it is far faster on the CPU than masked_fill / where with a bool one."""
    return torch.ge(bits, _threshold(p), out=torch.empty(bits.shape, dtype=dtype))


def _threshold(p: float) -> int:
    return round(p * 65536) - 32768  # an int16 draw below it: dropped


def _keep_scale(p: float) -> float:
    return 1.0 / (1.0 - round(p * 65536) / 65536)


class FastDropout(torch.nn.Module):
    """Inverted dropout with masks from `dropout_bits` (numpy's SFC64 seeded from `generator`: the run's dropout
    generator, or torch's global one when None); identity in eval mode."""

    def __init__(self, p: float, generator: torch.Generator | None = None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.scale = _keep_scale(p)
        self.generator = generator

    @property
    def active(self) -> bool:
        return self.training and _threshold(self.p) > -32768

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return x * keep_mask(dropout_bits(x.shape, self.generator), self.p, x.dtype).mul_(self.scale).to(x.device)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _LoraDelta(torch.autograd.Function):
    """`base_out += (dropout(x) @ A.T) @ B.T * scaling` in place (base_out: the frozen layer's output, [..., out];
    x: [..., in]) on the CPU. The dropout scale is folded into `scaling`, which is applied to the rank-r
    activations rather than to tokens x out_features; the weight gradients are computed as
    (rank x tokens) @ (tokens x features) products, which MKL runs several times faster than the
    (features x tokens) @ (tokens x rank) form autograd picks for nn.Linear."""

    @staticmethod
    def forward(ctx, base_out, x, weight_a, weight_b, scaling, p, generator=None):
        ctx.x_shape = x.shape
        x, bits, h, scaling = lora_rank_term(x.reshape(-1, x.shape[-1]), weight_a, scaling, p, generator)
        base_out.view(-1, base_out.shape[-1]).addmm_(h, weight_b.t())
        ctx.mark_dirty(base_out)
        ctx.save_for_backward(x, bits, h, weight_a, weight_b)  # the int16 draws: half the memory of a float mask
        ctx.scaling, ctx.p = scaling, p
        return base_out

    @staticmethod
    def backward(ctx, grad_out):
        x, bits, h, weight_a, weight_b = ctx.saved_tensors
        grad_x, grad_a, grad_b = lora_term_grads(grad_out.reshape(-1, grad_out.shape[-1]), x, bits, h, weight_a,
                                                 weight_b, ctx.scaling, ctx.p, *ctx.needs_input_grad[1:4])
        return grad_out, None if grad_x is None else grad_x.view(ctx.x_shape), grad_a, grad_b, None, None, None


def lora_rank_term(x: torch.Tensor, weight_a: torch.Tensor, scaling: float, p: float,
                   generator: torch.Generator | None):
    """The first half of the fused LoRA term for x: tokens x in. Returns (x as the term saw it, after dropout; the
    int16 dropout draws or None; h = x @ A.T times the scaling, tokens x r; that scaling, dropout's 1/(1-p) folded
    in). The caller adds h @ B.T into its own output; the solo layer and each member of a pack call this same code,
    so a packed adapter draws and rounds exactly as its solo run."""
    bits = dropout_bits(x.shape, generator) if p else None
    if bits is not None:
        x = x * keep_mask(bits, p)
        scaling = scaling * _keep_scale(p)
    return x, bits, torch.mm(x, weight_a.t()).mul_(scaling), scaling


def lora_term_grads(g: torch.Tensor, x: torch.Tensor, bits: torch.Tensor | None, h: torch.Tensor,
                    weight_a: torch.Tensor, weight_b: torch.Tensor, scaling: float, p: float, need_x: bool,
                    need_a: bool, need_b: bool):
    """The gradients of the fused LoRA term from g = d loss / d output (tokens x out) and what lora_rank_term
    returned: (grad of x, tokens x in; grad of A; grad of B), each None where not needed."""
    grad_h = torch.mm(g, weight_b.t().contiguous().t())  # tokens x r; MKL is faster with B column-major
    grad_b = _rank_by_features(h, g).t() if need_b else None
    grad_h.mul_(scaling)
    grad_a = _rank_by_features(grad_h, x) if need_a else None
    grad_x = None
    if need_x:
        grad_x = torch.mm(grad_h, weight_a)
        if bits is not None:
            grad_x.mul_(keep_mask(bits, p))
    return grad_x, grad_a, grad_b


def _rank_by_features(h: torch.Tensor, x: torch.Tensor, splits: int = 4) -> torch.Tensor:
    """h.T @ x for h: tokens x r, x: tokens x features, as a sum of `splits` batched products over token
    ranges: MKL runs this skinny reduction faster split than as one product."""
    n = h.shape[0]
    while n % splits:
        splits //= 2
    rows = n // splits
    return torch.bmm(h.t().reshape(-1, splits, rows).transpose(0, 1), x.reshape(splits, rows, x.shape[1])).sum(0)


@functools.cache
def _lora_linear_class():
    """peft's LoRA Linear with the fused `_LoraDelta` forward in the plain case: one vanilla adapter, not merged,
    fp32 on the CPU without autocast, bias-free nn.Linear A and B, no extra forward arguments. Anything else
    (DoRA, mixed adapter batches, bf16 autocast, CUDA ...) runs peft's own forward."""
    from peft.tuners.lora.layer import Linear

    class FusedLoraLinear(Linear):
        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            name = self.active_adapters[0] if len(self.active_adapters) == 1 else None
            a, b, dropout = (modules[name] if name is not None and name in modules else None
                             for modules in (self.lora_A, self.lora_B, self.lora_dropout))
            plain = (not args and not kwargs and a is not None and b is not None and not self.disable_adapters
                     and not self.merged and name not in getattr(self, "lora_variant", {})
                     and type(a) is torch.nn.Linear and type(b) is torch.nn.Linear and a.bias is None and b.bias is None
                     and cpu_fp32(x, a.weight, b.weight, self.base_layer.weight)
                     and isinstance(dropout, (FastDropout, torch.nn.Identity)))
            if not plain:
                return super().forward(x, *args, **kwargs)
            assert a is not None and b is not None and name is not None  # plain checked them
            p, generator = ((dropout.p, dropout.generator) if isinstance(dropout, FastDropout) and dropout.active
                            else (0.0, None))
            return _LoraDelta.apply(self.base_layer(x), x, a.weight, b.weight, float(self.scaling[name]), p, generator)

    return FusedLoraLinear


def fast_lora(model, generator: torch.Generator | None = None) -> tuple[int, int]:
    """CPU training fast path for peft LoRA layers: `FastDropout` (drawing from `generator`) in place of their
    `nn.Dropout`, and peft's LoRA Linear turned into `FusedLoraLinear` (its forward: `_LoraDelta` in the plain
    case, peft's own otherwise). Returns (dropouts replaced, layers fused). CPU only: on CUDA torch's kernels are
    fast already."""
    from peft.tuners.lora.layer import Linear

    fused_class = _lora_linear_class()
    replaced = fused = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, drop in list(dropouts.items()):
                if type(drop) is torch.nn.Dropout and drop.p > 0:
                    dropouts[name] = FastDropout(drop.p, generator).train(drop.training)
                    replaced += 1
        if type(module) is Linear and type(module.base_layer) is torch.nn.Linear:
            module.__class__ = fused_class
            fused += 1
    return replaced, fused


_BUFFERS: dict[tuple[torch.device, bool], torch.Tensor] = {}


def _logits_buffer(rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """A rows x vocab fp32 buffer. On the CPU one buffer is kept and reused across chunks and steps: a fresh
    200 MB tensor per chunk comes from mmap, and faulting its pages in costs more than the matmul writing it
    (the head's forward matmul ran at half speed). One per inference mode: a buffer made under
    torch.inference_mode (the baseline's perplexity) is an inference tensor, which training may not write to."""
    if device.type != "cpu":
        return torch.empty(rows, vocab, dtype=torch.float32, device=device)
    key = (device, torch.is_inference_mode_enabled())
    buf = _BUFFERS.get(key)
    if buf is None or buf.shape[1] != vocab or buf.shape[0] < rows:
        buf = _BUFFERS[key] = torch.empty(max(rows, ROW_CHUNK), vocab, dtype=torch.float32, device=device)
    return buf[:rows]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets):
        needs_grad = ctx.needs_input_grad[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if needs_grad else None
        rows = torch.arange(min(ROW_CHUNK, len(targets)), device=hidden.device)
        for start in range(0, len(targets), ROW_CHUNK):
            h, t = hidden[start:start + ROW_CHUNK], targets[start:start + ROW_CHUNK]
            logits = _logits_buffer(len(t), weight.shape[0], hidden.device)
            if weight.dtype == torch.float32 and h.dtype == torch.float32:
                torch.mm(h, weight.t(), out=logits)
            else:
                logits.copy_(F.linear(h, weight))
            r = rows[: len(t)]
            target_logits = logits[r, t]
            peak = logits.amax(dim=-1, keepdim=True)
            exps = logits.sub_(peak).exp_()  # in place: no second chunk-sized buffer
            sums = exps.sum(dim=-1, keepdim=True)
            total += (sums.log() + peak).squeeze(1).sub(target_logits).sum()
            if needs_grad:  # d loss / d logits = softmax - one-hot
                probs = exps.div_(sums)
                probs[r, t] -= 1
                grad[start:start + ROW_CHUNK] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output.to(grad.dtype) if grad is not None else None), None, None


def plain_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    """The library computation: full logits from the head, summed fp32 cross-entropy."""
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    """Sum over rows of cross_entropy(head(hidden), targets), the gradient flowing to `hidden` only. Falls
    back to the plain computation when the head is not a frozen bias-free Linear (a trained or adapted
    head), so it is always exact."""
    weight = getattr(head, "weight", None)
    if type(head) is not torch.nn.Linear or head.bias is not None or weight is None or weight.requires_grad:
        return plain_cross_entropy(hidden, head, targets)
    if torch.is_autocast_enabled(hidden.device.type):  # the head runs in the autocast dtype, as head(hidden) would
        dtype = torch.get_autocast_dtype(hidden.device.type)
        with torch.autocast(hidden.device.type, enabled=False):
            return _LinearCrossEntropy.apply(hidden.to(dtype), weight.to(dtype), targets)
    return _LinearCrossEntropy.apply(hidden, weight, targets)


def answer_loss_sum(model, input_ids, attention_mask, labels, fast_kernels: bool = True):
    """(sum of token cross-entropies over answer positions, number of answer tokens), running the LM head
    only on those positions, in row chunks with the gradient to the hidden states computed on the way
    (linear_cross_entropy: the tokens x vocabulary logits are never kept; `fast_kernels=False`: the library's
    full logits and cross-entropy, plain_cross_entropy). Works for a PEFT-wrapped or plain causal LM (Llama,
    Mistral, Gemma, GPT-2)."""
    return answer_loss_of_hidden(model, decoder_hidden(model, input_ids, attention_mask), labels, fast_kernels)


def decoder_hidden(model, input_ids, attention_mask):
    """The decoder's last hidden states (no LM head) of a PEFT-wrapped or plain causal LM."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if right_padded(attention_mask):  # causal attention alone keeps every real token off the padding after it
        attention_mask = None
    return lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def answer_loss_of_hidden(model, hidden, labels, fast_kernels: bool = True):
    """answer_loss_sum's head and cross-entropy on the decoder's hidden states of `labels`' rows."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    # A model split across GPUs (device_map=auto): calling the inner decoder skips the hook that would bring its
    # output back, so the hidden states sit on the last GPU while labels and a tied head sit on the first. Each op
    # runs where its operands are: the mask on the hidden states' GPU, the selected rows on the head's.
    head = lm.get_output_embeddings()
    head_device = next(head.parameters()).device
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != IGNORE_INDEX
    rows, answer_targets = hidden[:, :-1][mask].to(head_device), targets[mask].to(head_device)
    cross_entropy = linear_cross_entropy if fast_kernels else plain_cross_entropy
    return cross_entropy(rows, head, answer_targets).to(labels.device), mask.sum().to(labels.device)


def right_padded(attention_mask: torch.Tensor | None) -> bool:
    """True when every row is real tokens followed only by padding. Then the causal mask alone gives the real
    positions exactly the attention they get with the padding mask (they never see a later position), the
    padded positions carry no label, and SDPA can run its causal kernel (half the attention work, grouped-query
    heads without copies) instead of a dense masked one."""
    return attention_mask is not None and bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
