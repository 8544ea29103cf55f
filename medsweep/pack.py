"""Packed training: K LoRA adapters of one sweep trained at once on one shared frozen base model.

The K runs of a pack share the base model, the data, train.max_seq_length, the batch size and the schedule's
length; each keeps its own LoRA settings, learning rate, seed, dropout masks (its own generator), example order
(its own EpochSampler), gradient clipping and optimizer state (one AdamW param group per adapter: Adam's state
is per parameter). A step stacks the K runs' own batches, padded to a common length, into one [K*B, T] batch:
every frozen layer runs once on it, and each adapter's term is added to its own rows only (`PackedLoraLinear`).
The loss is the sum of the adapters' losses, each normalised by its own answer tokens as its solo run's is;
their parameters are disjoint, so each adapter gets exactly its solo gradient. A run whose loss or gradient
turns non-finite leaves the pack (its rows are no longer computed, its parameters freeze) and fails alone.
packrun.py runs a pack end to end and writes each run's directory as a solo run would.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medsweep.errors import TrainingDiverged
from medsweep.kernels import (
    _keep_scale,
    _lora_linear_class,
    _threshold,
    answer_loss_of_hidden,
    cpu_fp32,
    decoder_hidden,
    dropout_bits,
    keep_mask,
    lora_rank_term,
    lora_term_grads,
)
from medsweep.prompts import IGNORE_INDEX
from medsweep.train import AnswerOnlyTrainer, EpochSampler

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One run of a pack: its adapter's name in the PeftModel and what is its own in training."""

    name: str
    seed: int
    lr: float
    dropout: float
    generator: torch.Generator
    error: str | None = None  # set when it diverged: it fails alone
    loss_since_log: float = 0.0
    loss_total: float = 0.0
    grad_norm: float | None = None

    @property
    def alive(self) -> bool:
        return self.error is None


@dataclass
class PackState:
    """What the packed LoRA layers read during a training forward: each alive member's rows of the stacked
    batch (start, stop) and its own padded length; None outside training (evaluation uses the active adapter)."""

    members: list[Member]
    slices: list[tuple[Member, int, int, int]] | None = None


def _dropout_p(member: Member) -> float:
    return member.dropout if _threshold(member.dropout) > -32768 else 0.0


class _PackedLoraDelta(torch.autograd.Function):
    """kernels._LoraDelta for every member of a pack in one autograd node: each member's term computed from its own
    rows of x (`spec`: start, stop, length, scaling, dropout p, generator per member; `weights`: A0, B0, A1, ...)
    exactly as its solo run's fused layer computes it, and added in place into its own rows of the frozen layer's
    stacked output. Positions past a member's own length (padding of the stack) get no term and no gradient."""

    @staticmethod
    def forward(ctx, base_out, x, spec, *weights):
        out_features = base_out.shape[-1]
        saved: list[torch.Tensor | None] = []
        scalings = []
        for k, (start, stop, length, scaling, p, generator) in enumerate(spec):
            a, b = weights[2 * k], weights[2 * k + 1]
            rows, bits, h, scaling = lora_rank_term(x[start:stop, :length].reshape(-1, x.shape[-1]), a, scaling, p,
                                                    generator)
            target = base_out[start:stop, :length]
            if target.is_contiguous():
                target.view(-1, out_features).addmm_(h, b.t())
            else:  # a member shorter than the stack: the same addmm on a copy of its rows
                target.copy_(target.reshape(-1, out_features).addmm_(h, b.t()).view(target.shape))
            saved += [rows, bits, h]
            scalings.append(scaling)
        ctx.mark_dirty(base_out)
        ctx.save_for_backward(*saved, *weights)
        ctx.spec, ctx.scalings, ctx.x_shape = spec, scalings, x.shape
        return base_out

    @staticmethod
    def backward(ctx, grad_out):
        tensors = ctx.saved_tensors
        weights = tensors[3 * len(ctx.spec):]
        grad_x = grad_out.new_zeros(ctx.x_shape) if ctx.needs_input_grad[1] else None
        grads: list[torch.Tensor | None] = []
        for k, (start, stop, length, _, p, _) in enumerate(ctx.spec):
            rows, bits, h = tensors[3 * k:3 * k + 3]
            a, b = weights[2 * k], weights[2 * k + 1]
            g = grad_out[start:stop, :length].reshape(-1, grad_out.shape[-1])
            part, grad_a, grad_b = lora_term_grads(g, rows, bits, h, a, b, ctx.scalings[k], p, grad_x is not None,
                                                   *ctx.needs_input_grad[3 + 2 * k:5 + 2 * k])
            if grad_x is not None:
                grad_x[start:stop, :length] = part.view(stop - start, length, -1)
            grads += [grad_a, grad_b]
        return grad_out, grad_x, None, *grads


@functools.cache
def _packed_linear_class():
    fused = _lora_linear_class()

    class PackedLoraLinear(fused):
        """peft's LoRA Linear of a pack: in training, the frozen layer once on the stacked batch, then each
        member's adapter on its own rows; otherwise (evaluation, generation) the active adapter's forward."""

        pack_state: PackState | None = None

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            state = self.pack_state
            if state is None or state.slices is None:
                return super().forward(x, *args, **kwargs)
            result = self.base_layer(x, *args, **kwargs)
            mine = [s for s in state.slices if s[0].name in self.lora_A]  # target modules may leave it out
            if not mine:
                return result
            weights = [w for member, *_ in mine
                       for w in (self.lora_A[member.name].weight, self.lora_B[member.name].weight)]
            if cpu_fp32(x, result, *weights):  # the solo runs' fused kernel, for every member at once
                spec = [(start, stop, length, float(self.scaling[m.name]), _dropout_p(m), m.generator)
                        for m, start, stop, length in mine]
                return _PackedLoraDelta.apply(result, x, spec, *weights)
            # Otherwise peft's computation per member, the terms padded to the stacked length and added in one go:
            # an in-place add into each member's rows would make autograd copy the whole stacked gradient once per
            # member (CopySlices). The input is split into the members' rows once (its backward: one
            # concatenation), not indexed per member (each index's backward: a zero-filled stacked-size gradient).
            out_features, full = result.shape[-1], result.shape[1]
            parts = x.split([stop - start for _, start, stop, _ in state.slices])
            terms = []
            for (member, _, _, length), part in zip(state.slices, parts, strict=True):
                if member.name not in self.lora_A:
                    terms.append(result.new_zeros(part.shape[0], full, out_features))
                    continue
                delta = self._delta(member, part[:, :length] if length < full else part).to(result.dtype)
                terms.append(F.pad(delta, (0, 0, 0, full - length)) if length < full else delta)
            return result + torch.cat(terms)

        def _delta(self, member: Member, x: torch.Tensor) -> torch.Tensor:
            a, b = self.lora_A[member.name].weight, self.lora_B[member.name].weight
            x = x.to(a.dtype)  # as peft's forward: the input in the adapter's dtype, then dropout (FastDropout's)
            p = _dropout_p(member)
            if p:
                mask = keep_mask(dropout_bits(x.shape, member.generator), p, x.dtype).mul_(_keep_scale(p))
                x = x * mask.to(x.device)
            return F.linear(F.linear(x, a), b) * float(self.scaling[member.name])

    return PackedLoraLinear


def install(model, state: PackState) -> None:
    """Turn the model's LoRA Linear layers into packed ones reading `state`."""
    from peft.tuners.lora.layer import Linear

    packed = _packed_linear_class()
    for module in model.modules():
        if isinstance(module, Linear) and type(module.base_layer) is torch.nn.Linear:
            module.__class__ = packed
            module.__dict__["pack_state"] = state  # a plain attribute, not a submodule or buffer


def member_parameters(model, name: str) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]


class PackSampler(torch.utils.data.Sampler[int]):
    """The stacked batches' example order: for each batch, member 0's `batch` examples in its own solo order,
    then member 1's, ...; a DataLoader of batch size K*batch cuts it into the stacked batches (the last
    holding each member's last, shorter, batch)."""

    def __init__(self, samplers: list[EpochSampler], batch: int):
        self.samplers, self.batch = samplers, batch

    def __iter__(self):
        orders = [s.order() for s in self.samplers]
        for start in range(0, len(orders[0]), self.batch):
            for order in orders:
                yield from order[start:start + self.batch]

    def __len__(self) -> int:
        return sum(len(s) for s in self.samplers)


class PackTrainer(AnswerOnlyTrainer):
    """The AnswerOnlyTrainer of a pack: stacked batches, the summed per-member loss, one param group per member,
    per-member clipping, divergence and loss logs (into the Trainer's log history as pack.<name>.*, so that a
    resumed pack keeps them)."""

    def __init__(self, *args, members: list[Member], state: PackState, **kwargs):
        self.members, self.state_of_pack = members, state
        self.member_items: list[Any] | None = None
        super().__init__(*args, **kwargs)

    @property
    def per_member_batch(self) -> int:
        return self.args.train_batch_size // len(self.members)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        batch = self.per_member_batch
        self.epoch_samplers = [self.epoch_sampler(m.seed, dataset, batch) for m in self.members]
        return PackSampler(self.epoch_samplers, batch)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            groups = [{"params": member_parameters(self.model, m.name), "lr": m.lr,
                       "weight_decay": self.args.weight_decay} for m in self.members]
            self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.member_items = None
        if num_items is not None:  # the answer tokens of each member's accumulated batch, as its solo run counts
            counts = [0] * len(self.members)
            for batch in batches:
                rows = batch["labels"].shape[0] // len(self.members)
                for k in range(len(self.members)):
                    counts[k] += int((batch["labels"][k * rows:(k + 1) * rows, 1:] != IGNORE_INDEX).sum())
            self.member_items = counts
        return batches, num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        rows = ids.shape[0] // len(self.members)
        alive = [k for k, m in enumerate(self.members) if m.alive]
        if not alive:
            raise TrainingDiverged("training diverged: every run of the pack diverged")
        if len(alive) < len(self.members):  # the rows of diverged members are not computed at all
            keep = torch.cat([torch.arange(k * rows, (k + 1) * rows) for k in alive]).to(ids.device)
            ids, mask, labels = ids[keep], mask[keep], labels[keep]
        lengths = [int(mask[i * rows:(i + 1) * rows].sum(1).max()) for i in range(len(alive))]
        self.state_of_pack.slices = [(self.members[k], i * rows, (i + 1) * rows, lengths[i])
                                     for i, k in enumerate(alive)]
        total: torch.Tensor | None = None
        try:
            with self.accelerator.autocast():
                hidden = decoder_hidden(model, ids, mask)
                for i, k in enumerate(alive):
                    member, length = self.members[k], lengths[i]
                    part = slice(i * rows, (i + 1) * rows)
                    loss_sum, n_tokens = answer_loss_of_hidden(
                        model, hidden[part, :length], labels[part, :length], self.fast_kernels)
                    items = (self.member_items[k] if self.member_items is not None
                             else n_tokens * self.args.gradient_accumulation_steps)
                    loss = loss_sum / items
                    if not torch.isfinite(loss):
                        self._fail(member, f"training diverged: loss {loss.item()} at step "
                                           f"{self.state.global_step} (lower train.lr or use bf16 / fp32)")
                        continue
                    member.loss_since_log += float(loss.detach())
                    total = loss if total is None else total + loss
        finally:
            self.state_of_pack.slices = None
        if total is None:
            raise TrainingDiverged("training diverged: every run of the pack diverged")
        return (total, {}) if return_outputs else total

    def _clip_grad_norm(self, model):
        norms = []
        for member in self.members:
            if not member.alive:
                continue
            params = [p for p in member_parameters(model, member.name) if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
            if not torch.isfinite(norm):
                self._fail(member, f"training diverged: gradient norm {norm.item()} at step {self.state.global_step}")
                continue
            member.grad_norm = float(norm)
            norms.append(norm)
        return torch.stack(norms).square().sum().sqrt() if norms else torch.tensor(0.0)

    def _fail(self, member: Member, error: str) -> None:
        """The member leaves the pack: no gradient (AdamW skips parameters without one), frozen from now on."""
        log.warning("pack: %s %s; the other runs of the pack go on", member.name, error)
        member.error = TrainingDiverged.__name__ + ": " + error
        for param in member_parameters(self.model, member.name):
            param.grad = None
            param.requires_grad_(False)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            steps = max(1, self.state.global_step - self._globalstep_last_logged)
            for member in self.members:
                if member.alive:
                    logs[f"pack.{member.name}.loss"] = member.loss_since_log / steps
                    if "learning_rate" in logs:
                        # the schedule's factor times the member's own peak rate
                        factor = logs["learning_rate"] / self.args.learning_rate
                        logs[f"pack.{member.name}.learning_rate"] = factor * member.lr
                    if member.grad_norm is not None:
                        logs[f"pack.{member.name}.grad_norm"] = member.grad_norm
                member.loss_total += member.loss_since_log
                member.loss_since_log = 0.0
        super().log(logs, start_time)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)  # before trainer_state.json: a complete checkpoint has it
        (Path(output_dir) / MEMBERS_FILE).write_text(json.dumps({m.name: m.error for m in self.members}))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        checkpoint = Path(resume_from_checkpoint)
        errors = json.loads((checkpoint / MEMBERS_FILE).read_text())
        for member in self.members:
            set_peft_model_state_dict(self.model, load_file(checkpoint / member.name / "adapter_model.safetensors"),
                                      adapter_name=member.name)
            if errors.get(member.name):  # diverged before the checkpoint: out of the pack again
                self._fail(member, errors[member.name].removeprefix(TrainingDiverged.__name__ + ": "))


MEMBERS_FILE = "pack_members.json"  # in a pack's checkpoint: its members and the error of those that diverged


def member_history(log_history: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """A member's loss lines as its solo run's train.log_history (step, epoch, loss, learning_rate, grad_norm)."""
    prefix = f"pack.{name}."
    out = []
    for entry in log_history:
        if prefix + "loss" not in entry:
            continue
        line: dict[str, Any] = {k: entry[k] for k in ("step", "epoch") if k in entry}
        line.update({k: entry[prefix + k] for k in ("loss", "learning_rate", "grad_norm") if prefix + k in entry})
        out.append(line)
    return out


