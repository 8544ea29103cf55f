"""medsweep.kernels: the fused LM-head cross-entropy equals the plain one (loss and gradient), and the numpy
LoRA dropout is inverted dropout with the right rate, reproducible from torch's seed."""

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


def test_fast_lora_dropout_replaces_only_active_dropouts(tiny_lora_model):
    model, dropout = tiny_lora_model
    n = kernels.fast_lora_dropout(model)
    drops = [m for m in model.modules() if isinstance(m, kernels.FastDropout)]
    if dropout > 0:
        assert n == len(drops) > 0 and all(d.p == dropout for d in drops)
    else:
        assert n == 0 and not drops


@pytest.fixture(params=[0.0, 0.1])
def tiny_lora_model(request):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=100)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_dropout=request.param,
                                                                target_modules=["q_proj", "down_proj"]))
    return model, request.param
