"""medsweep.kernels: the fused LM-head cross-entropy equals the plain one (loss and gradient), and the numpy
LoRA dropout is inverted dropout with the right rate, reproducible from torch's seed; an attention mask is dropped
(right padding) only where causal attention alone gives the same result."""

import pytest
import torch
import torch.nn.functional as F

from medsweep import kernels


@pytest.fixture
def head_case():
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 500, bias=False)
    head.weight.requires_grad_(False)
    hidden = torch.randn(37, 32, requires_grad=True)
    targets = torch.randint(0, 500, (37,))
    return head, hidden, targets


def _loss_and_grad(fn, head, hidden, targets):
    hidden.grad = None
    loss = fn(hidden, head, targets)
    (loss * 0.5).backward()  # a non-unit upstream gradient
    return loss.detach(), hidden.grad.clone()


@pytest.mark.parametrize("chunk", [1, 8, 37, 1024])
def test_linear_cross_entropy_equals_plain(head_case, chunk, monkeypatch):
    monkeypatch.setattr(kernels, "ROW_CHUNK", chunk)
    head, hidden, targets = head_case
    plain = _loss_and_grad(lambda h, m, t: F.cross_entropy(m(h), t, reduction="sum"), head, hidden, targets)
    fused = _loss_and_grad(kernels.linear_cross_entropy, head, hidden, targets)
    assert torch.allclose(fused[0], plain[0], rtol=1e-5)
    assert torch.allclose(fused[1], plain[1], atol=1e-6)


def test_linear_cross_entropy_without_grad_and_for_a_trained_head(head_case):
    head, hidden, targets = head_case
    with torch.no_grad():
        expected = F.cross_entropy(head(hidden), targets, reduction="sum")
        assert torch.allclose(kernels.linear_cross_entropy(hidden, head, targets), expected, rtol=1e-5)
    head.weight.requires_grad_(True)  # a trained head takes the plain path and gets its gradient
    loss = kernels.linear_cross_entropy(hidden, head, targets)
    loss.backward()
    assert head.weight.grad is not None and torch.allclose(loss.detach(), expected, rtol=1e-5)


def test_linear_cross_entropy_under_bf16_autocast(head_case):
    head, hidden, targets = head_case
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
        fused = kernels.linear_cross_entropy(hidden, head, targets)
    assert torch.allclose(fused, plain, rtol=1e-3)
    fused.backward()
    assert hidden.grad.dtype == torch.float32 and torch.isfinite(hidden.grad).all()


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_linear_cross_entropy_trains_after_an_inference_mode_call(head_case, autocast):
    """The baseline's perplexity runs under torch.inference_mode before training: the reused CPU logits buffer
    it leaves behind must not be one training writes into (an inference tensor, refused outside that mode)."""
    head, hidden, targets = head_case
    kernels._BUFFERS.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with torch.inference_mode():
            first = kernels.linear_cross_entropy(hidden.detach(), head, targets)
        loss = kernels.linear_cross_entropy(hidden, head, targets)
    loss.backward()
    assert torch.allclose(loss.detach(), first, rtol=1e-6) and torch.isfinite(hidden.grad).all()


def test_fast_dropout_rate_scale_and_identity():
    x = torch.ones(400, 500)
    drop = kernels.FastDropout(0.25)
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert abs(y.mean().item() - 1) < 0.01  # inverted dropout keeps the expectation
    assert drop.eval()(x) is x and kernels.FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        kernels.FastDropout(1.0)


def test_fast_dropout_follows_torch_seed_and_backpropagates_the_mask():
    drop = kernels.FastDropout(0.5)
    x = torch.randn(64, 48, requires_grad=True)
    torch.manual_seed(7)
    a = drop(x)
    torch.manual_seed(7)
    b = drop(x)
    c = drop(x)
    assert torch.equal(a, b) and not torch.equal(b, c)
    a.sum().backward()
    assert torch.equal(x.grad, (a.detach() != 0).float() * 2)


def test_fast_lora_replaces_active_dropouts_and_fuses_every_lora_linear(tiny_lora_model):
    model, dropout = tiny_lora_model
    replaced, fused = kernels.fast_lora(model)
    drops = [m for m in model.modules() if isinstance(m, kernels.FastDropout)]
    lora_linears = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert fused == len(lora_linears) == 2 and all(type(m).__name__ == "FusedLoraLinear" for m in lora_linears)
    if dropout > 0:
        assert replaced == len(drops) > 0 and all(d.p == dropout for d in drops)
    else:
        assert replaced == 0 and not drops
    assert kernels.fast_lora(model) == (0, 0)  # idempotent


def _llama_lora(dropout: float, seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # a non-zero adapter, so that the LoRA path shows in the loss
                param.normal_(0, 0.1)
    return model


def _loss_and_lora_grads(model, ids, seed):
    torch.manual_seed(seed)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_lora_equals_peft_forward_and_backward(dropout):
    """The fused LoRA layer gives peft's loss and gradients, dropout masks included (FastDropout in peft's
    forward draws the same masks in the same order), in training and in eval mode."""
    peft_model, fused_model = _llama_lora(dropout), _llama_lora(dropout)
    kernels.fast_lora(peft_model)
    for module in peft_model.modules():  # back to peft's own forward, FastDropout kept
        if type(module).__name__ == "FusedLoraLinear":
            module.__class__ = type(module).__mro__[1]
    assert kernels.fast_lora(fused_model)[1] == 14
    ids = torch.randint(0, 100, (3, 17))
    for train_mode in (True, False):
        peft_model.train(train_mode)
        fused_model.train(train_mode)
        loss_p, grads_p = _loss_and_lora_grads(peft_model, ids, seed=5)
        loss_f, grads_f = _loss_and_lora_grads(fused_model, ids, seed=5)
        torch.testing.assert_close(loss_f, loss_p, rtol=1e-6, atol=1e-6)
        assert grads_f.keys() == grads_p.keys() and len(grads_f) == 2 * 14  # A and B of 14 layers
        for name in grads_p:
            torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=1e-7)
        peft_model.zero_grad()
        fused_model.zero_grad()
    if dropout:  # dropout is really on: another seed gives another loss
        fused_model.train()
        assert not torch.equal(_loss_and_lora_grads(fused_model, ids, seed=6)[0], loss_f)


def test_fused_lora_falls_back_to_peft_where_it_does_not_apply():
    model = _llama_lora(0.1)
    kernels.fast_lora(model)
    layer = next(m for m in model.modules() if type(m).__name__ == "FusedLoraLinear")
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        expected = layer.base_layer(x) + layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
        layer.eval()
        torch.testing.assert_close(layer(x), expected)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: peft's forward, in bf16
            assert layer(x).dtype == torch.bfloat16
        layer.merge()  # merged: the base layer alone
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        layer.unmerge()
        with model.disable_adapter():
            torch.testing.assert_close(layer(x), layer.base_layer(x))


@pytest.fixture(params=[0.0, 0.1])
def tiny_lora_model(request):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=100)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_dropout=request.param,
                                                                target_modules=["q_proj", "down_proj"]))
    return model, request.param


def test_right_padded_masks_are_dropped_only_when_causal_attention_suffices():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    holes = torch.tensor([[1, 0, 1, 0]])
    assert kernels.right_padded(right) and not kernels.right_padded(left) and not kernels.right_padded(holes)
    assert not kernels.right_padded(None)
