"""Metric functions against hand-checked values."""

import json
import math

import pytest

from medsweep import metrics
from tests.conftest import ROOT


@pytest.mark.parametrize("text, expected", [
    ("The Cat sat.", "cat sat"),
    ("  An apple, a day!  ", "apple day"),
    ("theory of the atheist", "theory of atheist"),  # articles only as whole words
    ("Hello---world", "helloworld"),  # SQuAD removes punctuation without inserting spaces
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert metrics.normalize_answer(text) == expected


def test_exact_match_ignores_case_punctuation_articles():
    assert metrics.exact_match("The flu.", "flu") == 1.0
    assert metrics.exact_match("flu virus", "flu") == 0.0


def test_token_f1_hand_checked():
    # pred tokens: [insulin, lowers, blood, sugar]; ref: [insulin, lowers, sugar, levels, fast]
    # common = 3, precision 3/4, recall 3/5, F1 = 2*0.75*0.6/1.35 = 0.6667
    assert metrics.token_f1("Insulin lowers blood sugar", "insulin lowers sugar levels fast") == pytest.approx(2 / 3)
    assert metrics.token_f1("x b b", "b b c") == pytest.approx(2 / 3)  # multiset overlap: 2 common of 3 and 3
    assert metrics.token_f1("a b b", "b b c") == pytest.approx(0.8)  # "a" is an article: P = 2/2, R = 2/3
    assert metrics.token_f1("", "") == 1.0
    assert metrics.token_f1("the", "an") == 1.0  # both empty after normalisation
    assert metrics.token_f1("", "flu") == 0.0
    assert metrics.token_f1("cold", "flu") == 0.0


def test_bleu_identical_and_disjoint():
    same = "rest and drink plenty of fluids"
    assert metrics.sentence_bleu(same, same) == pytest.approx(100)
    assert metrics.corpus_bleu(["completely unrelated words here"], ["rest and drink plenty of fluids"]) == 0.0


def test_corpus_bleu_hand_checked():
    assert metrics.corpus_bleu(["a b c d e f", "x y z w"], ["a b c d e f", "x y z w"]) == pytest.approx(100)
    # 5-token hypothesis vs 6-token reference, all n-grams match: precisions 1, brevity penalty exp(1 - 6/5)
    score = metrics.corpus_bleu(["a b c d e"], ["a b c d e f"])
    assert score == pytest.approx(100 * math.exp(1 - 6 / 5), rel=1e-6)


def test_rouge_hand_checked():
    r = metrics.rouge("the cat was found under the bed", "the cat was under the bed")
    # ROUGE-1: overlap 6 unigrams, P = 6/7, R = 6/6 -> F = 12/13
    assert r["rouge1"] == pytest.approx(12 / 13)
    # ROUGE-2: bigrams pred 6, ref 5, overlap 4 (the cat, cat was, under the, the bed) -> F = 2*4/11
    assert r["rouge2"] == pytest.approx(8 / 11)
    assert r["rougeL"] == pytest.approx(12 / 13)


def test_score_corpus_means_and_per_example():
    corpus, per = metrics.score_corpus(["flu", "a cold"], ["flu", "the flu"])
    assert [p["exact_match"] for p in per] == [1.0, 0.0]
    assert corpus["exact_match"] == 0.5
    assert corpus["f1"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        metrics.score_corpus([], [])


def test_decisions():
    assert metrics.extract_decision("Yes, it does.") == "yes"
    assert metrics.extract_decision("The answer is maybe; unclear") == "maybe"
    assert metrics.extract_decision("Nothing here") is None
    assert metrics.extract_decision("Notably, no.") == "no"  # 'Notably' is not 'no'
    s = metrics.decision_scores(["yes", "no", None, "yes"], ["yes", "no", "maybe", "no"])
    assert s["decision_accuracy"] == 0.5
    # per class F1: yes 2*1/(2+1+0)=2/3, no 2*1/(2+0+1)=2/3, maybe 0 -> macro 4/9
    assert s["decision_macro_f1"] == pytest.approx(4 / 9)
    assert not math.isnan(s["decision_macro_f1"])


def test_the_registry_names_every_metric_a_record_holds():
    (path, *_) = sorted((ROOT / "results" / "sweeps" / "example_sweep").glob("*/metrics.json"))
    rec = json.loads(path.read_text())
    for section in ("metrics", "baseline", "delta"):
        assert set(rec[section]) <= set(metrics.BY_NAME), section
    # the example sweep ran with eval.semantic and was judged afterwards: every per-example metric, in order
    assert metrics.PER_EXAMPLE == ("exact_match", "f1", "bleu", "rougeL", "semantic", "judge_correct",
                                   "judge_complete", "judge_safe")
    assert tuple(rec["per_example"]) == metrics.PER_EXAMPLE
    assert {"semantic", "judge_correct", "judge_safe"} <= set(rec["metrics"]) & set(rec["baseline"])
    assert "judge_pref_win_rate" in rec["metrics"]  # fine-tuned against base: the run's, not the base model's
    assert set(metrics.score_example("a b", "a c")) == set(metrics.SCORE_KEYS)
    assert set(metrics.decision_scores(["yes"], ["yes"])) <= set(metrics.BY_NAME)
    assert set(metrics.TABLE4) | set(metrics.SUMMARY) <= set(metrics.BY_NAME)
    assert [m.name for m in metrics.METRICS] == list(metrics.BY_NAME)  # no name twice
    corpus, _ = metrics.score_corpus(["a"], ["a"])
    assert [k for k in rec["metrics"] if k in corpus] == list(corpus)  # the record's order (semantic among them)


def test_registry_labels_ranks_and_scales():
    assert metrics.label("exact_match") == "EM %" and metrics.BY_NAME["exact_match"].scale == 100.0
    assert metrics.label("seconds_per_answer") == "Inference s/answer"
    assert metrics.short_label("seconds_per_answer") == "s/answer" and metrics.short_label("f1") == "F1"
    assert metrics.label("train_loss_last") == metrics.short_label("train_loss_last") == "train_loss_last"
    assert not metrics.higher_is_better("perplexity") and not metrics.higher_is_better("latency_p95_s")
    assert metrics.higher_is_better("f1") and metrics.higher_is_better("generated_tokens_per_s")
    assert metrics.higher_is_better("not_a_metric")
