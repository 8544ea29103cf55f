"""Evaluation as a run does it: sampled decoding, and PubMedQA's decision metrics in a real record."""

import json

import pytest
import torch

from medsweep import evaluate, models, run
from medsweep.hardware import Hardware
from medsweep.prompts import PromptStyle
from tests.conftest import SHARED_DATA

CPU = Hardware(device="cpu", precision="fp32", threads=2)
PUBMEDQA = SHARED_DATA / "pubmedqa" / "pubmedqa_pqal.jsonl"
QUESTIONS = [{"question": q, "answer": "x"} for q in ("What is asthma?", "Is aspirin safe?", "What causes gout?")]


def _answers(cfg, tokenizer, model, seed: int) -> list[str]:
    torch.manual_seed(seed)
    return evaluate.generate(model, tokenizer, QUESTIONS, PromptStyle.of(cfg), cfg.eval, CPU)[0]


def test_sampled_decoding_follows_the_seed_and_greedy_ignores_it(compose, embedded_dir):
    cfg = compose(["model=tiny_random", "eval.max_new_tokens=6", "eval.decoding=sample", "eval.temperature=5.0",
                   "eval.top_p=1.0"])
    tokenizer = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tokenizer, CPU, seed=0)
    sampled = [_answers(cfg, tokenizer, model, seed) for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1]  # same seed, same draws
    assert sampled[0] != sampled[2]  # a random model at temperature 5: another seed draws other tokens

    cfg.eval.decoding = "greedy"
    greedy = [_answers(cfg, tokenizer, model, seed) for seed in (1, 2)]
    assert greedy[0] == greedy[1] and greedy[0] != sampled[0]


def _macro_f1(pairs: list[tuple[str | None, str]]) -> float:
    """Macro-F1 over the classes present in the gold labels (the record's definition), written out: a missing
    decision counts as wrong for its gold class."""
    classes = {g for _, g in pairs}
    f1s = []
    for c in classes:
        tp = sum(p == c and g == c for p, g in pairs)
        fp = sum(p == c and g != c for p, g in pairs)
        fn = sum(p != c and g == c for p, g in pairs)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(f1s) / len(classes)


def test_pubmedqa_decision_metrics_in_the_record(compose, tmp_path, monkeypatch, embedded_dir):
    """A PubMedQA run's record carries decision accuracy and macro-F1 of the decisions its answers start with.
    The model's answers are scripted (a random model says nothing decidable): yes, no, maybe, then no decision."""
    if not PUBMEDQA.is_file():
        pytest.skip(f"real data not found at {PUBMEDQA}")
    script = ["Yes, it does.", "No.", "Maybe; the evidence is mixed.", "The study is unclear about it."]
    real_generate = evaluate.generate

    def scripted(model, tokenizer, records, *args):
        answers, seconds, n_tokens = real_generate(model, tokenizer, records, *args)
        return [script[i % 4] for i in range(len(records))], seconds, n_tokens

    monkeypatch.setattr(evaluate, "generate", scripted)
    cfg = compose(["experiment=smoke", "data=pubmedqa", f"data.path={PUBMEDQA}", "train.max_steps=1",
                   "train.eval_split=8", "eval.perplexity=false"])
    rec = run.train_eval(cfg, tmp_path / "run")
    assert rec["status"] == "complete"

    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    labels = [r["label"] for r in rows]
    assert len(labels) == 8 and set(labels) <= {"yes", "no", "maybe"}
    decided = [("yes", "no", "maybe", None)[i % 4] for i in range(8)]
    expected_accuracy = sum(p == g for p, g in zip(decided, labels, strict=True)) / 8
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert on_disk["decision_accuracy"] == pytest.approx(expected_accuracy)
    assert on_disk["decision_macro_f1"] == pytest.approx(_macro_f1(list(zip(decided, labels, strict=True))))


@pytest.mark.parametrize("fast", [True, False])
def test_train_fast_kernels_switches_evaluations_fast_paths(compose, embedded_dir, monkeypatch, fast):
    """train.fast_kernels=false is the plain path for evaluation too: the adapter's own forward (no folded weights)
    and the library's full-logits loss for perplexity; true folds the adapter and uses the fused loss. Both give
    the same answers."""
    from medsweep import config, kernels

    cfg = config.typed(compose(["model=tiny_random", "eval.max_new_tokens=4", f"train.fast_kernels={fast}"]))
    tokenizer = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tokenizer, CPU, seed=0)
    model = models.add_lora(model, cfg.lora, cfg.model)
    folded, losses = [], []
    real_fold, real_loss = evaluate.inference_weights, kernels.answer_loss_sum

    def fold(m, hw):
        folded.append(True)
        return real_fold(m, hw)

    def loss(*args, **kwargs):
        losses.append(kwargs.get("fast_kernels", True))
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(evaluate, "inference_weights", fold)
    monkeypatch.setattr(evaluate, "answer_loss_sum", loss)
    result, rows = evaluate.evaluate(model, tokenizer, QUESTIONS, cfg, CPU)
    assert len(folded) == (2 if fast else 0)  # generation and perplexity each fold once, or never
    assert losses and set(losses) == {fast}
    assert result["perplexity"] > 1 and len(rows) == len(QUESTIONS)
    plain = evaluate.generate(model, tokenizer, QUESTIONS, PromptStyle.of(cfg), cfg.eval, CPU, fold_lora=False)[0]
    assert [r["generated"] for r in rows] == plain
