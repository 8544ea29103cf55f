"""Answer-quality metrics: SQuAD-normalised exact match and token F1, sacrebleu BLEU, rouge-score ROUGE.

EM/F1 follow the official SQuAD v1.1 evaluation script (lower-case, strip punctuation and the
articles a/an/the, collapse whitespace). BLEU is sacrebleu's corpus BLEU (0-100) and, per example,
its sentence BLEU. ROUGE-1/2/L are rouge-score F-measures with the Porter stemmer, averaged.
PubMedQA decisions are read from the generated text (first yes/no/maybe word).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable
from statistics import mean

import sacrebleu
from rouge_score import rouge_scorer

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
_DECISION = re.compile(r"\b(yes|no|maybe)\b", re.IGNORECASE)
_SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:  # SQuAD: both empty counts as a match, one empty as zero
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def sentence_bleu(prediction: str, reference: str) -> float:
    return sacrebleu.sentence_bleu(prediction, [reference]).score


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    return sacrebleu.corpus_bleu(predictions, [references]).score


def rouge(prediction: str, reference: str) -> dict[str, float]:
    scores = _SCORER.score(reference, prediction)
    return {name: s.fmeasure for name, s in scores.items()}


def extract_decision(text: str) -> str | None:
    """The first yes / no / maybe in a generated answer (PubMedQA), or None."""
    match = _DECISION.search(text)
    return match.group(1).lower() if match else None


def decision_scores(predicted: Iterable[str | None], gold: Iterable[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over the yes/no/maybe classes present in the gold labels."""
    pairs = list(zip(predicted, gold, strict=True))
    accuracy = mean(float(p == g) for p, g in pairs)
    f1s = []
    for label in sorted({g for _, g in pairs}):
        tp = sum(p == label and g == label for p, g in pairs)
        fp = sum(p == label and g != label for p, g in pairs)
        fn = sum(p != label and g == label for p, g in pairs)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"decision_accuracy": accuracy, "decision_macro_f1": mean(f1s)}


def score_example(prediction: str, reference: str) -> dict[str, float]:
    """Per-example scores stored next to each prediction."""
    return {
        "exact_match": exact_match(prediction, reference),
        "f1": token_f1(prediction, reference),
        "bleu": sentence_bleu(prediction, reference),
        **rouge(prediction, reference),
    }


def score_corpus(predictions: list[str], references: list[str]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Corpus metrics (means of per-example EM/F1/ROUGE, corpus BLEU) and the per-example scores."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equal, non-zero numbers of predictions and references, got "
                         f"{len(predictions)} and {len(references)}")
    per_example = [score_example(p, r) for p, r in zip(predictions, references, strict=True)]
    corpus = {key: mean(s[key] for s in per_example) for key in ("exact_match", "f1", "rouge1", "rouge2", "rougeL")}
    corpus["bleu"] = corpus_bleu(predictions, references)
    return corpus, per_example
