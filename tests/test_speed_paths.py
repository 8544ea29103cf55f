"""The fast paths compute the same thing as the plain ones (tiny random model, seconds):
answer-only loss = the model's own loss on answer-masked labels; batched left-padded greedy generation with
the adapter folded into the weights = one question at a time through the unmerged adapter; the folding
leaves the model bit-identical; the bf16 storage of frozen weights changes no number under autocast; batched
tokenization = one example at a time; train.fast_kernels=false trains to the losses of the default kernels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from medsweep import evaluate, kernels, models, prompts, train
from medsweep.hardware import Hardware
from medsweep.prompts import IGNORE_INDEX, PromptStyle
from tests.conftest import RECORDS

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

CPU = Hardware(device="cpu", precision="fp32", threads=2)


@pytest.fixture(scope="module")
def setup():
    from hydra import compose, initialize_config_dir

    from medsweep.run import config_schema  # noqa: F401  registers schemas and resolvers

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny_random", "data=sample"])
    tokenizer = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tokenizer, CPU, seed=0)
    model = models.add_lora(model, cfg.lora, cfg.model)
    torch.manual_seed(1)
    with torch.no_grad():  # a non-zero adapter, so that folding it in changes the weights
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return cfg, tokenizer, model


def _batch(cfg, tokenizer):
    tokenizer.padding_side = "right"
    dataset, _ = prompts.tokenize(RECORDS, tokenizer, PromptStyle.of(cfg), 96)
    return prompts.collator(tokenizer)(dataset.to_list())


def test_answer_only_loss_equals_the_models_masked_loss(setup):
    cfg, tokenizer, model = setup
    batch = _batch(cfg, tokenizer)
    assert (batch["labels"] == IGNORE_INDEX).any() and batch["attention_mask"].eq(0).any()  # prompts and padding
    model.eval()
    with torch.no_grad():
        reference = model(**batch).loss  # full-vocabulary logits at every position, mean over answer tokens
        loss_sum, n = kernels.answer_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert int(n) == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert abs((loss_sum / n).item() - reference.item()) < 1e-5


def test_answer_only_gradients_equal_the_models(setup):
    cfg, tokenizer, model = setup
    batch = _batch(cfg, tokenizer)
    model.eval()  # no dropout: both passes see the same function
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    model(**batch).loss.backward()
    reference = [p.grad.clone() for p in lora]
    model.zero_grad()
    loss_sum, n = kernels.answer_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    (loss_sum / n).backward()
    for p, g in zip(lora, reference, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    model.zero_grad()


def test_batched_merged_generation_equals_one_at_a_time(setup):
    cfg, tokenizer, model = setup
    eval_cfg = OmegaConf.merge(cfg.eval, {"max_new_tokens": 12, "batch_size": 8})
    fast, _, fast_n = evaluate.generate(model, tokenizer, RECORDS, PromptStyle.of(cfg), eval_cfg, CPU)
    # the plain path: no folded weights, one question per generate call
    one = OmegaConf.merge(eval_cfg, {"batch_size": 1})
    slow, _, slow_n = evaluate.generate(model, tokenizer, RECORDS, PromptStyle.of(cfg), one, CPU, fold_lora=False)
    assert fast == slow and fast_n == slow_n
    assert any(fast)  # the comparison means something: there are generated words


def test_inference_weights_leave_the_model_bit_identical(setup):
    cfg, tokenizer, model = setup
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    batch = _batch(cfg, tokenizer)
    model.eval()
    with torch.no_grad():
        unmerged = model(**batch).logits
        with evaluate.inference_weights(model, CPU):
            merged = model(**batch).logits
            assert any(m.merged for m in model.modules() if hasattr(m, "merged_adapters"))
        after = model(**batch).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
    assert torch.equal(after, unmerged)
    for name, param in model.named_parameters():  # the same objects, the same bits
        obj, value = before[name]
        assert param is obj and torch.equal(param, value)
    assert not any(m.merged for m in model.modules() if hasattr(m, "merged_adapters"))


def test_perplexity_is_independent_of_batching(setup):
    cfg, tokenizer, model = setup
    ppl = [evaluate.perplexity(model, tokenizer, RECORDS, PromptStyle.of(cfg), 96, CPU, bs) for bs in (1, 4)]
    assert ppl[0] == pytest.approx(ppl[1], rel=1e-5)


def test_bf16_storage_of_frozen_linears_changes_no_number():
    """Under CPU bf16 autocast, storing the frozen Linear weights in bf16 (no per-step casts) gives the same
    loss and LoRA gradients as fp32 storage: autocast rounds the weights exactly so."""
    from hydra import compose, initialize_config_dir

    from medsweep.run import config_schema  # noqa: F401

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny_random", "lora.dropout=0.0"])
    tokenizer = models.load_tokenizer(cfg.model)
    batch = _batch(cfg, tokenizer)
    results = []
    for convert in (False, True):
        model, _ = models.load_model(cfg.model, tokenizer, CPU, seed=0)
        model = models.add_lora(model, cfg.lora, cfg.model)
        if convert:
            assert train.store_frozen_linears_in_bf16(model) == 2 * 7  # 2 layers x q k v o gate up down
            assert model.get_input_embeddings().weight.dtype == torch.float32  # tied head: stays fp32
            assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_sum, n = kernels.answer_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        (loss_sum / n).backward()
        results.append((loss_sum.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("prompt_format, max_len", [("chat", 512), ("chat", 60), ("alpaca", 128)])
def test_batched_tokenize_equals_tokenize_example(setup, prompt_format, max_len):
    """prompts.tokenize encodes in two batched calls; it must give exactly prompts.tokenize_example's examples."""
    from medsweep import data
    from medsweep.prompts import tokenize_example

    cfg, tokenizer, _ = setup
    records = data.load_records(cfg.data)[0][:60] + RECORDS
    model_cfg = OmegaConf.merge(cfg.model, {"prompt_format": prompt_format})
    style = PromptStyle(cfg.data.instruction, prompt_format, model_cfg.system_prompt)
    dataset, stats = prompts.tokenize(records, tokenizer, style, max_len)
    expected = [tokenize_example(tokenizer, r, cfg.data.instruction, prompt_format, max_len, model_cfg.system_prompt)
                for r in records]
    kept = [e for e in expected if e is not None]
    assert dataset.to_list() == [{k: e[k] for k in ("input_ids", "attention_mask", "labels", "length")} for e in kept]
    assert stats["dropped_prompt_too_long"] == len(expected) - len(kept)
    assert stats["answers_truncated"] == sum(e["truncated"] for e in kept)
    if max_len == 60:
        assert stats["dropped_prompt_too_long"] > 0 or stats["answers_truncated"] > 0


def test_bf16_inference_weights_are_temporary(setup):
    """With native-bf16 precision the folded copies (and the plain Linears, the tied LM head included) are bf16
    inside the block; on exit the fp32 parameters, and the head/embedding tie, are back."""
    cfg, tokenizer, model = setup
    bf16 = Hardware(device="cpu", precision="bf16", threads=2)
    before = {n: p for n, p in model.named_parameters()}
    lm = model.get_base_model()
    with evaluate.inference_weights(model, bf16):
        assert lm.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
        assert lm.lm_head.weight.dtype == torch.bfloat16
        assert lm.model.embed_tokens.weight.dtype == torch.float32
    assert all(p is before[n] for n, p in model.named_parameters())
    assert lm.lm_head.weight is lm.model.embed_tokens.weight


def test_fast_kernels_false_is_a_run_of_its_own_with_the_same_losses(compose, tmp_path, cross_entropy_calls,
                                                                    embedded_dir):
    """The same run with train.fast_kernels=false trains through the plain library computations to the same losses
    (float rounding apart); it is another computation, so another run id, while the default leaves ids alone."""
    from medsweep import run
    from medsweep.record import run_id

    common = ["experiment=smoke", "profile.precision=fp32", "lora.dropout=0", "train.max_steps=3",
              "eval.num_examples=2", "eval.perplexity=false"]
    fast_cfg, plain_cfg = compose(common), compose([*common, "train.fast_kernels=false"])
    assert run_id(compose([*common, "train.fast_kernels=true"])) == run_id(fast_cfg) != run_id(plain_cfg)
    fast = run.train_eval(fast_cfg, tmp_path / "fast")
    assert cross_entropy_calls == {"linear": 3, "plain": 0}
    plain = run.train_eval(plain_cfg, tmp_path / "plain")
    assert cross_entropy_calls == {"linear": 3, "plain": 3}
    fast_losses = [h["loss"] for h in fast["train"]["log_history"]]
    plain_losses = [h["loss"] for h in plain["train"]["log_history"]]
    assert len(fast_losses) == 3 and plain_losses == pytest.approx(fast_losses, rel=1e-4)
