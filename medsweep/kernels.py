"""Two training hot spots on a CPU, replaced by cheaper equivalents (scripts/bench.py measures them).

`fast_lora_dropout(model)`: peft's LoRA dropout is `nn.Dropout` on each adapted layer's input, i.e. one
Bernoulli mask of tokens x hidden per adapted layer per step (210 masks for SmolLM2 with 7 targets). torch's
CPU generator draws ~90 M numbers/s: 13% of a SmolLM2 training step. `FastDropout` draws the same mask
(keep each element with probability 1 - p, scale kept ones by 1 / (1 - p)) as 16-bit integers from numpy's
SFC64 generator, seeded by one draw of torch's generator, so runs stay reproducible and a resumed run
(torch's RNG state is in the checkpoint) draws the same masks. p is rounded to a multiple of 1/65536
(0.05 -> 0.0500031) and the scale uses the rounded value, so the expectation is exact.

`linear_cross_entropy(hidden, head, targets)`: the LM head and the summed cross-entropy, in row chunks,
computing the gradient with respect to the hidden states during the forward pass (softmax - one-hot, times
the head weight). No tokens x vocabulary logits, log-softmax or its gradient are kept for the backward pass
(~1.5 GB for 4 x 512 answer tokens with a 49k vocabulary), and exp runs once per logit instead of twice.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ROW_CHUNK = 1024  # rows of logits alive at once (1024 x 49k fp32: 200 MB)


class FastDropout(torch.nn.Module):
    """Inverted dropout with a mask from numpy's SFC64 (seeded from torch's RNG); identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * 65536) - 32768  # keep where the int16 draw >= threshold
        self.scale = 1.0 / (1.0 - round(p * 65536) / 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == -32768:
            return x
        seed = int(torch.randint(0, 2**62, (1,)).item())
        bits = np.random.Generator(np.random.SFC64(seed)).integers(0, 65536, x.numel(), dtype=np.uint16)
        keep = torch.from_numpy(bits.view(np.int16)).view(x.shape).to(x.device) >= self.threshold
        return torch.where(keep, x, 0) * self.scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


def fast_lora_dropout(model) -> int:
    """Replace the `nn.Dropout` modules of peft's LoRA layers by `FastDropout`; returns how many (CPU only:
    on CUDA torch's Philox generator is fast and the host round trip would not be)."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, drop in list(dropouts.items()):
            if type(drop) is torch.nn.Dropout and drop.p > 0:
                dropouts[name] = FastDropout(drop.p).train(drop.training)
                replaced += 1
    return replaced


_BUFFERS: dict[torch.device, torch.Tensor] = {}


def _logits_buffer(rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """A rows x vocab fp32 buffer. On the CPU one buffer is kept and reused across chunks and steps: a fresh
    200 MB tensor per chunk comes from mmap, and faulting its pages in costs more than the matmul writing it
    (measured: the head's forward matmul ran at half speed)."""
    if device.type != "cpu":
        return torch.empty(rows, vocab, dtype=torch.float32, device=device)
    buf = _BUFFERS.get(device)
    if buf is None or buf.shape[1] != vocab or buf.shape[0] < rows:
        buf = _BUFFERS[device] = torch.empty(max(rows, ROW_CHUNK), vocab, dtype=torch.float32, device=device)
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
