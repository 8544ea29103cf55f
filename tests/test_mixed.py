"""A pack's adapters evaluated in shared batches (medsweep/mixed.py, pack_eval=mixed): each adapter's rows get that
adapter's computation, its answers are those it gives alone, the model is left as it was, and what cannot be mixed
is evaluated in turn."""

import json
import logging

import pytest
import torch

from medsweep import evaluate, mixed, models, packrun, record
from medsweep.config import typed
from medsweep.hardware import Hardware
from medsweep.prompts import PromptStyle

CPU = Hardware(device="cpu", precision="fp32", threads=2)
BF16 = Hardware(device="cpu", precision="bf16", threads=2)
QUESTIONS = [{"question": q, "answer": "x"} for q in
             ("What is asthma?", "Is aspirin safe for children with a fever?", "What causes gout?", "Why?",
              "How is type 2 diabetes treated in adults?")]
NAMES = ["m0", "m1", "m2"]


@pytest.fixture(scope="module")
def adapted():
    """The tiny model with three adapters of different targets and ranks, their B matrices random (a fresh adapter's
    B is zero: every adapter would answer as the base model)."""
    from tests.conftest import compose_config

    cfg = compose_config(["model=tiny_random", "eval.max_new_tokens=8", "eval.batch_size=2"])
    tokenizer = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tokenizer, CPU, seed=0)
    run = typed(cfg)
    for k, (r, targets) in enumerate([(4, None), (8, None), (2, ["q_proj", "v_proj"])]):
        lora = run.lora
        lora.r, lora.alpha = r, 2 * r
        if targets:
            lora.target_modules = targets
        model = models.add_lora(model, lora, run.model, seed=k, adapter_name=NAMES[k])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.eval()
    return cfg, run, tokenizer, model


def _own_logits(model, name, ids):
    model.set_adapter(name)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_each_row_group_gets_its_own_adapter(adapted):
    _, _, _, model = adapted
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    own = [_own_logits(model, name, ids) for name in NAMES]
    assert not torch.allclose(own[0], own[1], atol=1e-3)  # the adapters differ: a mix-up would show
    assert not torch.allclose(own[0], own[2], atol=1e-3)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with torch.no_grad(), mixed.mixed_adapters(model, NAMES, CPU):
        together = model(input_ids=ids.repeat(len(NAMES), 1)).logits
    for k, logits in enumerate(together.chunk(len(NAMES))):
        torch.testing.assert_close(logits, own[k], atol=1e-5, rtol=1e-5)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[n], before[n]) for n in before)  # the layers are back, unchanged
    assert _own_logits(model, "m1", ids).equal(own[1])


def test_bf16_mixed_batches_store_the_weights_in_bf16_only_meanwhile(adapted):
    _, _, _, model = adapted
    with mixed.mixed_adapters(model, NAMES, BF16):
        layer = next(m for m in model.modules() if isinstance(m, mixed._MixedLinear))
        assert layer.weight.dtype == torch.bfloat16
        assert model.get_output_embeddings().weight.dtype == torch.bfloat16
    assert not any(isinstance(m, mixed._MixedLinear) for m in model.modules())
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_mixed_answers_are_each_adapters_own(adapted):
    cfg, run, tokenizer, model = adapted
    style = PromptStyle.of(run)
    alone = {}
    for name in NAMES:
        model.set_adapter(name)
        alone[name] = evaluate.generate(model, tokenizer, QUESTIONS, style, run.eval, CPU)
    assert alone["m0"][0] != alone["m1"][0]  # different adapters, different answers: a mix-up would show
    together = mixed.generate_mixed(model, tokenizer, QUESTIONS, style, run.eval, CPU, NAMES)
    assert together.keys() == alone.keys()
    for name in NAMES:
        assert together[name][0] == alone[name][0]  # texts
        assert together[name][2] == alone[name][2]  # generated tokens
        # each batch's time shared by its rows: batches of 2 questions, 3 adapters (6 rows) or one (2 rows)
        assert len(together[name][1]) == len(QUESTIONS) and all(s > 0 for s in together[name][1])
    assert tokenizer.padding_side == "right"
    # the rows of one batch share its time: a question's seconds are the same for every adapter
    assert together["m0"][1] == together["m2"][1]


def test_what_cannot_be_mixed_says_why(adapted):
    _, run, _, model = adapted
    assert mixed.unsupported(model, NAMES, run.eval) is None
    assert mixed.unsupported(model, ["m0"], run.eval) == "one adapter"
    run.eval.decoding = "sample"
    try:
        assert "eval.decoding=sample" in mixed.unsupported(model, NAMES, run.eval)
    finally:
        run.eval.decoding = "greedy"


SMOKE = ["experiment=smoke", "train.max_steps=3", "train.save_steps=100", "eval.num_examples=4", "train.batch_size=2",
         "eval.batch_size=2", "profile.precision=fp32"]
MEMBERS = [["lora.r=4", "lora.alpha=8", "lora.dropout=0"],
           ["lora.r=8", "lora.alpha=32", "lora.dropout=0.1", "train.lr=5e-2"]]


def test_a_mixed_pack_records_the_answers_of_an_in_turn_pack(compose, tmp_path, embedded_dir, caplog, monkeypatch):
    caplog.set_level(logging.INFO, "medsweep")
    records = {}
    for how in ("in_turn", "mixed"):
        if how == "mixed":  # no adapter generates alone
            monkeypatch.setattr(evaluate, "generate", lambda *a, **k: pytest.fail("generated in turn"))
        cfgs = [compose([*SMOKE, *m, f"pack_eval={how}"]) for m in MEMBERS]
        records[how] = packrun.run_pack(cfgs, [tmp_path / how / f"m{k}" for k in range(len(cfgs))])
    assert "generating the answers of 2 adapters in shared batches" in caplog.text
    for in_turn, shared in zip(records["in_turn"], records["mixed"], strict=True):
        assert shared["status"] == "complete", shared.get("error")
        for key in ("f1", "exact_match", "bleu", "rougeL", "perplexity", "mean_generated_tokens"):
            assert shared["metrics"][key] == pytest.approx(in_turn["metrics"][key], rel=1e-5), key
    answers = {how: [[json.loads(line)["generated"] for line in (tmp_path / how / f"m{k}" / "predictions.jsonl")
                      .read_text().splitlines()] for k in range(len(MEMBERS))] for how in records}
    assert answers["mixed"] == answers["in_turn"]
    # how a pack generates is not part of a run's identity: a re-run with the other setting finds its runs complete
    assert record.run_id(compose([*SMOKE, "pack_eval=mixed"])) == record.run_id(compose(SMOKE))


def test_a_mixed_pack_with_sampling_evaluates_in_turn(compose, tmp_path, embedded_dir, caplog):
    cfgs = [compose([*SMOKE, *m, "pack_eval=mixed", "eval.decoding=sample"]) for m in MEMBERS]
    packed = packrun.run_pack(cfgs, [tmp_path / f"m{k}" for k in range(len(cfgs))])
    assert all(p["status"] == "complete" for p in packed)
    assert "the adapters are evaluated in turn instead: eval.decoding=sample" in caplog.text


def test_a_mixed_batchs_time_is_shared_by_all_its_rows(adapted, monkeypatch):
    """Each generate() call takes one tick of a fake clock: 5 questions in batches of 2 for 3 adapters are batches of
    6, 6 and 3 rows, so each answer costs 1/6, 1/6 or 1/3 of a tick."""
    from types import SimpleNamespace

    from medsweep import generation

    ticks = iter(range(100))
    monkeypatch.setattr(generation, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    _, run, tokenizer, model = adapted
    together = mixed.generate_mixed(model, tokenizer, QUESTIONS, PromptStyle.of(run), run.eval, CPU, NAMES)
    for name in NAMES:
        assert sorted(together[name][1]) == pytest.approx([1 / 6] * 4 + [1 / 3])


def test_a_layer_none_of_the_adapters_adapts_runs_its_frozen_weight_alone(adapted):
    """m2 adapts q_proj and v_proj only: mixed with itself, the other layers (adapted by m0 and m1, which are not in
    the batch) get no term."""
    _, _, _, model = adapted
    ids = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(3))
    own = _own_logits(model, "m2", ids)
    with torch.no_grad(), mixed.mixed_adapters(model, ["m2", "m2"], CPU):
        together = model(input_ids=ids.repeat(2, 1)).logits
    for logits in together.chunk(2):
        torch.testing.assert_close(logits, own, atol=1e-5, rtol=1e-5)


def test_a_mixed_batch_that_does_not_fit_the_gpu_evaluates_in_turn(compose, tmp_path, embedded_dir, caplog,
                                                                   monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(mixed, "generate_mixed", out_of_memory)
    cfgs = [compose([*SMOKE, *m, "pack_eval=mixed"]) for m in MEMBERS]
    packed = packrun.run_pack(cfgs, [tmp_path / f"m{k}" for k in range(len(cfgs))])
    assert [p["status"] for p in packed] == ["complete", "complete"]
    assert all(len(p["metrics"]) > 5 and p["metrics"]["n_eval"] == 4 for p in packed)
    assert "2 x eval.batch_size=2 rows do not fit the GPU; the adapters are evaluated in turn instead" in caplog.text
