"""medsweep.attention: block-causal CPU attention equals SDPA (output and gradients), in isolation and inside a
LoRA model's training loss; everything it does not cover goes to SDPA unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medsweep import attention, kernels, models, prompts, train
from medsweep.hardware import Hardware
from medsweep.prompts import PromptStyle

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def _sdpa(q, k, v, scale):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=scale).transpose(1, 2)


@pytest.mark.parametrize("block", [4, 64])
@pytest.mark.parametrize("batch,heads,kv_heads,length,dim", [(2, 4, 2, 37, 8), (1, 3, 3, 16, 8), (2, 6, 1, 9, 4),
                                                             (1, 2, 2, 2, 4)])
def test_block_causal_equals_sdpa(monkeypatch, block, batch, heads, kv_heads, length, dim):
    monkeypatch.setattr(attention, "BLOCK", block)  # 4: many blocks and a partial last one; 64: one block
    torch.manual_seed(0)
    # the layouts the attention modules pass: query and value are transposed views of [B, T, H, D]
    q = torch.randn(batch, length, heads, dim).transpose(1, 2).requires_grad_()
    k = torch.randn(batch, kv_heads, length, dim, requires_grad=True)
    v = torch.randn(batch, length, kv_heads, dim).transpose(1, 2).requires_grad_()
    upstream = torch.randn(batch, length, heads, dim)
    expected = _sdpa(q, k, v, 0.3)
    expected_grads = torch.autograd.grad(expected, (q, k, v), upstream)
    out = attention.BlockCausal.apply(q, k, v, 0.3)
    grads = torch.autograd.grad(out, (q, k, v), upstream)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want, x in zip(grads, expected_grads, (q, k, v), strict=True):
        assert got.shape == x.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_block_causal_leaves_its_inputs_alone():
    q = torch.randn(1, 2, 8, 4, requires_grad=True)  # contiguous, one KV group, one block: reshapes are views
    k, v = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4)
    before = q.detach().clone()
    attention.BlockCausal.apply(q, k, v, 0.5).sum().backward()
    assert torch.equal(q.detach(), before)


@pytest.fixture(scope="module")
def tiny():
    from hydra import compose, initialize_config_dir

    from medsweep.run import config_schema  # noqa: F401  registers schemas and resolvers

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny_random", "data=sample", "lora.dropout=0.0"])
    tokenizer = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tokenizer, Hardware("cpu", "fp32", 2), seed=0)
    model = models.add_lora(model, cfg.lora, cfg.model)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    tokenizer.padding_side = "right"
    records = [{"question": "What is a fever?", "answer": "A body temperature above the normal range."},
               {"question": "How is high blood pressure treated, and by whom?",
                "answer": "With less salt, more exercise and, when needed, medicines a doctor prescribes."}]
    dataset, _ = prompts.tokenize(records, tokenizer, PromptStyle.of(cfg), 96)
    return model, tokenizer, prompts.collator(tokenizer)(dataset.to_list())


@pytest.fixture
def calls(monkeypatch):
    """How many times each implementation ran."""
    counts = {"block": 0, "sdpa": 0}
    block, sdpa = attention.BlockCausal.apply, attention.sdpa_attention_forward

    def counted_block(*a):
        counts["block"] += 1
        return block(*a)

    def counted_sdpa(*a, **k):
        counts["sdpa"] += 1
        return sdpa(*a, **k)

    monkeypatch.setattr(attention.BlockCausal, "apply", counted_block)
    monkeypatch.setattr(attention, "sdpa_attention_forward", counted_sdpa)
    return counts


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss_sum, n = kernels.answer_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    (loss_sum / n).backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    return (loss_sum / n).detach(), grads


def test_training_loss_and_gradients_equal_sdpa(tiny, calls):
    model, _, batch = tiny
    base = model.get_base_model()
    model.train()
    try:
        loss, grads = _loss_and_grads(model, batch)  # right-padded: no mask, SDPA's causal path
        assert attention.use_block_causal(model) and base.config._attn_implementation == attention.NAME
        fast_loss, fast_grads = _loss_and_grads(model, batch)
    finally:
        base.set_attn_implementation("sdpa")
    assert calls["block"] == base.config.num_hidden_layers  # every layer took the block-causal path
    torch.testing.assert_close(fast_loss, loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(fast_grads, grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_what_it_does_not_cover_goes_to_sdpa(tiny, calls, monkeypatch):
    model, tokenizer, batch = tiny
    base = model.get_base_model()
    layers = base.config.num_hidden_layers
    prompt = tokenizer(["What is a fever?"], return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert attention.use_block_causal(model)
    try:
        with torch.no_grad():  # generation (a KV cache, no gradient): SDPA, the same tokens
            assert torch.equal(model.generate(**prompt, max_new_tokens=6, do_sample=False), expected)
        assert calls["block"] == 0
        model.train()
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])  # a padding mask
        assert calls["block"] == 0
        budget = attention.BUDGET_BYTES
        monkeypatch.setattr(attention, "BUDGET_BYTES", 0)  # probabilities would not fit the budget
        model(input_ids=batch["input_ids"])
        assert calls["block"] == 0
        monkeypatch.setattr(attention, "BUDGET_BYTES", budget)
        model(input_ids=batch["input_ids"])
        assert calls["block"] == layers
    finally:
        base.set_attn_implementation("sdpa")


@pytest.mark.parametrize("extra,covered", [({"sliding_window": 4}, False), ({"sliding_window": 4096}, True),
                                           ({"softcap": 30.0}, False), ({"something_new": 1}, False),
                                           ({"position_ids": torch.arange(8)[None]}, True)])
def test_keyword_arguments_that_change_the_function_go_to_sdpa(calls, extra, covered):
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 1
    q = torch.randn(1, 2, 8, 4, requires_grad=True)
    k, v = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4)
    if "softcap" in extra:  # transformers' SDPA refuses softcapping: the fallback is what says so
        with pytest.raises(ValueError, match="softcap"):
            attention.attention(module, q, k, v, None, scaling=0.5, **extra)
        return
    out, _ = attention.attention(module, q, k, v, None, scaling=0.5, **extra)
    assert calls["block"] == int(covered) and calls["sdpa"] == int(not covered)
    torch.testing.assert_close(out, _sdpa(q, k, v, 0.5), rtol=1e-5, atol=1e-6)


def test_the_trainer_trains_through_it_on_the_cpu(tmp_path, calls):
    """build_trainer switches an fp32 CPU model to block-causal attention; the Trainer's steps run through it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", "train.max_steps=2", "train.logging_steps=1"])
    cpu = Hardware("cpu", "fp32", 2)
    tokenizer = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tokenizer, cpu, seed=0)
    model = models.add_lora(model, cfg.lora, cfg.model)
    tokenizer.padding_side = "right"
    records = [{"question": f"What is condition {i}?", "answer": "A condition. " * (i + 1)} for i in range(8)]
    dataset, _ = prompts.tokenize(records, tokenizer, PromptStyle.of(cfg), cfg.train.max_seq_length)
    args = train.training_args(cfg.train, cfg.profile, cpu, tmp_path / "checkpoints")
    trainer = train.build_trainer(model, tokenizer, dataset, args, [])
    assert model.get_base_model().config._attn_implementation == attention.NAME
    trainer.train()
    assert calls["block"] == 2 * model.get_base_model().config.num_hidden_layers  # forward of each of 2 steps
    assert len(train.loss_history(trainer)) == 2


def test_models_on_another_attention_are_left_alone(tiny):
    model = tiny[0]
    base = model.get_base_model()
    base.set_attn_implementation("eager")
    try:
        assert not attention.use_block_causal(model)
        assert base.config._attn_implementation == "eager"
    finally:
        base.set_attn_implementation("sdpa")
