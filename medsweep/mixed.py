"""A pack's adapters evaluated together (`pack_eval=mixed`): one generate() call per batch of questions answers
them for every adapter of the pack, instead of one adapter after the other (`pack_eval=in_turn`, the default).

Each of the solo run's generation batches (eval.batch_size questions, grouped longest first as
medsweep/generation.py groups them) is repeated once per adapter, adapter-major, into one batch of K x batch rows.
Every LoRA-adapted Linear then reads its frozen weight once for all rows and adds each adapter's low-rank term
(B·A·x·scaling, peft's LoRA term) to that adapter's rows only (`_MixedLinear`); the layers without an adapter, the
attention and the LM head run once on the whole batch. On a CPU, where a decode step costs mostly reading
the weights, a step for K x batch rows costs far less than K steps of batch rows (README "Sweep economy").

What differs from the solo run's evaluation: its answers are computed as frozen layer plus LoRA term, where a
solo run on the CPU folds the adapter into one weight (medsweep/evaluate.py:inference_weights), so they are
equal up to float rounding, not bit for bit (in bf16 a rounding can change a greedy token); and seconds per
answer is the shared batch's time over its K x batch rows, a pack's cost per answer rather than the latency of one
adapter answering alone (so it is not comparable with a solo run's). Used only with greedy decoding (sampling
draws from one generator per run) and where every adapted layer is peft's plain LoRA on a torch Linear;
otherwise the pack evaluates in turn and says why."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from medsweep.evaluate import Answers, generate_copies, inference, linear_weights_in
from medsweep.hardware import Hardware
from medsweep.prompts import PromptStyle

if TYPE_CHECKING:
    from medsweep.config import EvalConfig


class _MixedLinear(torch.nn.Module):
    """A LoRA layer's frozen Linear for K adapter-major row groups: the weight once on all rows, then group k gets
    adapter k's term (None: adapter k does not adapt this layer). The K adapters' A matrices are stacked into one
    (every row projected on all ranks: a few extra columns) and the columns of the other adapters zeroed per group
    before the stacked, scaled B: two matmuls per layer instead of two per adapter, which on a CPU's decode step
    would cost more in calls than in arithmetic."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None,
                 terms: list[tuple[torch.Tensor, torch.Tensor, float] | None]):
        super().__init__()
        self.weight, self.bias, self.groups = weight, bias, len(terms)
        present = [t for t in terms if t is not None]
        self.a = torch.cat([a for a, _, _ in present]) if present else None
        self.b = torch.cat([b * scale for _, b, scale in present], dim=1) if present else None
        self.mask = torch.zeros(len(terms), sum(a.shape[0] for a, _, _ in present), dtype=weight.dtype,
                                device=weight.device)
        column = 0
        for k, term in enumerate(terms):
            if term is not None:
                self.mask[k, column:column + term[0].shape[0]] = 1
                column += term[0].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.a is None or self.b is None:
            return out
        if x.shape[0] % self.groups:
            raise RuntimeError(f"a mixed-adapter batch of {x.shape[0]} rows is not {self.groups} equal groups")
        h = F.linear(x.to(self.a.dtype), self.a)
        h = h.unflatten(0, (self.groups, -1)) * self.mask.view(self.groups, *[1] * (h.dim() - 1), -1)
        return out + F.linear(h.flatten(0, 1), self.b)


def _lora_layers(model) -> list[Any]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft missing: nothing is adapted
        return []
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def unsupported(model, names: list[str], eval_cfg: EvalConfig) -> str | None:
    """Why the adapters `names` of `model` cannot be evaluated in mixed batches, or None when they can."""
    if len(names) < 2:
        return "one adapter"
    if eval_cfg.decoding != "greedy":
        return f"eval.decoding={eval_cfg.decoding} (each run samples from its own generator)"
    for layer in _lora_layers(model):
        base = layer.get_base_layer()
        mine = [n for n in names if n in layer.lora_A]
        if type(base) is not torch.nn.Linear:
            return f"{type(base).__name__} layers (only torch Linear layers)"
        if layer.merged or any(n in getattr(layer, "lora_variant", {}) for n in mine):
            return "merged or non-plain LoRA layers (DoRA ...)"
        if any(layer.lora_B[n].bias is not None for n in mine):
            return "LoRA layers with a bias"
    return None


@contextlib.contextmanager
def mixed_adapters(model, names: list[str], hw: Hardware):
    """Within the block, `model`'s batch rows are len(names) equal adapter-major groups, group k computed with adapter
    names[k]. On a CPU with native bf16 the weights are stored in bf16 meanwhile (as evaluate.inference_weights
    stores them). The model's layers are restored on exit."""
    dtype = torch.bfloat16 if hw.device == "cpu" and hw.precision == "bf16" else None
    swapped: list[tuple[torch.nn.Module, str, Any]] = []
    try:
        with torch.no_grad():
            for layer in _lora_layers(model):
                base = layer.get_base_layer()
                target = dtype or base.weight.dtype
                terms = [(layer.lora_A[n].weight.to(target), layer.lora_B[n].weight.to(target), float(layer.scaling[n]))
                         if n in layer.lora_A else None for n in names]
                mixed = _MixedLinear(base.weight.to(target), None if base.bias is None else base.bias.to(target),
                                     terms)
                swapped.append((layer, "base_layer", layer.base_layer))
                swapped.append((layer, "merged_adapters", layer.merged_adapters))
                layer.base_layer = mixed
                layer.merged_adapters = list(layer.active_adapters)  # peft's forward now calls the base layer only
        with linear_weights_in(model, dtype):  # the swapped-out base layers are no longer the model's modules
            yield model
    finally:
        for module, attribute, value in reversed(swapped):
            setattr(module, attribute, value)


@contextlib.contextmanager
def _mixed_inference(model, names: list[str], hw: Hardware):
    with inference(model, hw, fold_lora=False), mixed_adapters(model, names, hw):
        yield model


def generate_mixed(model, tokenizer, records: list[dict[str, Any]], style: PromptStyle, eval_cfg: EvalConfig,
                   hw: Hardware, names: list[str]) -> dict[str, Answers]:
    """Each adapter's answers to `records` (as evaluate.generate returns them for it alone), from shared batches.
    Greedy decoding only (`unsupported`)."""
    answers = generate_copies(model, tokenizer, records, style, eval_cfg, hw, _mixed_inference(model, names, hw),
                              copies=len(names))
    return dict(zip(names, answers, strict=True))
