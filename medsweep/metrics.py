"""Answer-quality metrics: SQuAD-normalised exact match and token F1, sacrebleu BLEU, rouge-score ROUGE.

EM/F1 follow the official SQuAD v1.1 evaluation script (lower-case, strip punctuation and the
articles a/an/the, collapse whitespace). BLEU is sacrebleu's corpus BLEU (0-100) and, per example,
its sentence BLEU. ROUGE-1/2/L are rouge-score F-measures with the Porter stemmer, averaged.
PubMedQA decisions are read from the generated text (first yes/no/maybe word). With eval.semantic, `semantic` is the
mean cosine similarity of answer and reference embeddings (medsweep/semantic.py).

`definitions(semantic)` pins what each number means (sacreBLEU's signatures, rouge-score's settings, the EM/F1
normalisation and its version, the embedding model, the package versions); every run record stores it, and the
report refuses to test runs against each other whose definitions differ.

The registry (`METRICS`) names every number a run record's `metrics` holds and how the tables label, scale and
rank it; the report, the tracker and the end-of-run summary read it instead of listing metric names themselves.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from statistics import mean
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One entry of a record's metrics (and of its baseline and delta)."""

    name: str
    label: str  # its column in Table 4
    higher_is_better: bool = True
    fmt: str = ".4g"  # as the tables print it (report._num and run.summary_table print every number .4g)
    scale: float = 1.0  # tables show value * scale
    per_example: bool = False  # the record keeps its per-example scores (bootstrap intervals in the report)
    # score (per answer, lexical) | semantic (per answer, embeddings) | perplexity | latency | count | decision
    # (PubMedQA) | judge
    kind: str = "score"
    short: str = ""  # its column in narrow tables (latency by profile), when not the label
    upper: float | None = None  # the largest value it can take (before scale), for a figure's full range; None: none


METRICS: tuple[Metric, ...] = (
    Metric("exact_match", "EM %", scale=100.0, per_example=True, upper=1.0),
    Metric("f1", "F1", per_example=True, upper=1.0),
    Metric("bleu", "BLEU", per_example=True, upper=100.0),  # corpus BLEU; the per-example scores are sentence BLEU
    Metric("rouge1", "ROUGE-1", upper=1.0),
    Metric("rouge2", "ROUGE-2", upper=1.0),
    Metric("rougeL", "ROUGE-L", per_example=True, upper=1.0),
    Metric("semantic", "Semantic", per_example=True, kind="semantic", upper=1.0),  # eval.semantic only
    Metric("perplexity", "Perplexity", higher_is_better=False, kind="perplexity"),
    Metric("seconds_per_answer", "Inference s/answer", higher_is_better=False, kind="latency", short="s/answer"),
    Metric("latency_p50_s", "p50 s", higher_is_better=False, kind="latency"),
    Metric("latency_p95_s", "p95 s", higher_is_better=False, kind="latency"),
    Metric("generated_tokens_per_s", "tokens/s", kind="latency"),
    # Counts are no quality; a table asked to rank by one ranks highest first, as it always has.
    Metric("mean_generated_tokens", "Generated tokens", kind="count"),
    Metric("n_eval", "n eval", fmt="d", kind="count"),
    Metric("decision_accuracy", "Decision acc", kind="decision", upper=1.0),
    Metric("decision_macro_f1", "Decision macro-F1", kind="decision", upper=1.0),
    # medsweep/judge.py: a judge model's 1-5 rubric scores (means over the answers it graded), the fine-tuned answer's
    # pairwise win rate against the base model's (ties count half), and the replies it could not read
    Metric("judge_correct", "Judge correct", per_example=True, kind="judge", upper=5.0),
    Metric("judge_complete", "Judge complete", per_example=True, kind="judge", upper=5.0),
    Metric("judge_safe", "Judge safe", per_example=True, kind="judge", upper=5.0),
    Metric("judge_pref_win_rate", "Judge win rate", kind="judge", upper=1.0),
    Metric("judge_unparsed", "Judge unparsed", higher_is_better=False, fmt="d", kind="count"),
    Metric("judge_low_mass", "Judge low mass", higher_is_better=False, fmt="d", kind="count"),
)
BY_NAME = {m.name: m for m in METRICS}
SCORE_KEYS = tuple(m.name for m in METRICS if m.kind == "score")
PER_EXAMPLE = tuple(m.name for m in METRICS if m.per_example)
LATENCY = tuple(m.name for m in METRICS if m.kind == "latency")
JUDGE = tuple(m.name for m in METRICS if m.name.startswith("judge_"))  # what judging writes (and replaces)
LOWER_IS_BETTER = frozenset(m.name for m in METRICS if not m.higher_is_better)
SCALE = {m.name: m.scale for m in METRICS if m.scale != 1.0}
# Two tables pick their own metrics in their own order: the paper's Table 4, and the end-of-run summary.
TABLE4 = ("exact_match", "bleu", "rouge1", "rouge2", "rougeL", "f1", "semantic", "seconds_per_answer", "perplexity",
          "decision_accuracy", "decision_macro_f1", "judge_correct", "judge_complete", "judge_safe",
          "judge_pref_win_rate")
SUMMARY = ("exact_match", "f1", "bleu", "rouge1", "rouge2", "rougeL", "semantic", "perplexity", "seconds_per_answer",
           "latency_p95_s", "generated_tokens_per_s")
# Answer-quality metrics (the report's agreement table correlates every pair of them across configurations).
QUALITY = tuple(m.name for m in METRICS if m.kind in ("score", "semantic", "decision", "judge"))
assert set(TABLE4) | set(SUMMARY) <= set(BY_NAME)


def label(name: str) -> str:
    """The metric's Table 4 label; a name outside the registry is its own label."""
    return BY_NAME[name].label if name in BY_NAME else name


def short_label(name: str) -> str:
    """The metric's label in narrow tables."""
    return (BY_NAME[name].short or BY_NAME[name].label) if name in BY_NAME else name


def higher_is_better(name: str) -> bool:
    """Whether a larger value ranks first; True outside the registry (any other column ranks highest first)."""
    return name not in LOWER_IS_BETTER


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
_DECISION = re.compile(r"\b(yes|no|maybe)\b", re.IGNORECASE)


# The settings BLEU and ROUGE are computed with: sacrebleu's defaults for corpus BLEU (13a tokenizer, exp smoothing,
# case kept) and effective order for sentence BLEU, as sacrebleu.sentence_bleu has it; rouge-score's default
# tokenizer with the Porter stemmer.
CORPUS_BLEU: dict[str, Any] = {}
SENTENCE_BLEU: dict[str, Any] = {"effective_order": True}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
ROUGE_STEMMER = True
# Bump when normalize_answer, exact_match or token_f1 change what they compute: records say which one they used.
EM_F1_VERSION = "medsweep-squad-v1"
EM_F1 = ("SQuAD v1.1 normalisation (lower-case, punctuation removed, articles a/an/the removed, whitespace "
         f"collapsed); token F1 over the normalised words; {EM_F1_VERSION}")


# sacrebleu and rouge-score (nltk, absl) take ~0.5 s to import: imported on first use, so that the report, the
# tracker and a job's start-up can read the registry without them.
@cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=ROUGE_STEMMER)


@cache
def _bleu(sentence: bool) -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(**(SENTENCE_BLEU if sentence else CORPUS_BLEU))


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class MetricDefinitions:
    """What each answer-quality number of a record means, as text that two records can be compared by."""

    em_f1: str  # the normalisation and medsweep's version of it
    bleu: str  # sacreBLEU's signature of corpus BLEU (`bleu`)
    sentence_bleu: str  # sacreBLEU's signature of the per-example BLEU in predictions.jsonl
    rouge: str  # rouge-score's types, stemmer and tokenizer
    semantic: str | None = None  # the embedding model of `semantic`; None: not computed
    packages: dict[str, str | None] = field(default_factory=dict)  # sacrebleu, rouge-score (and the embedder)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> MetricDefinitions | None:
        """The definitions a record holds; None when it has none (written before they were recorded) or holds
        something else."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(**data)
        except TypeError:
            return None

    def lines(self) -> dict[str, str]:
        """Field -> its one-line text, each package's version its own field (`packages.sacrebleu`); `semantic` and
        the embedder's version only when it was computed, so that a run without them disagrees with no other."""
        out = {k: v for k, v in asdict(self).items() if k != "packages" and v is not None}
        out.update({f"packages.{k}": v for k, v in sorted(self.packages.items()) if v is not None})
        return out


def _signature(sentence: bool) -> str:
    """sacreBLEU's signature of the BLEU medsweep computes; it names the number of references, which sacrebleu
    knows only after scoring, so a fresh metric of the same settings scores one pair (medsweep has one reference)."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(**(SENTENCE_BLEU if sentence else CORPUS_BLEU))
    bleu.sentence_score("a", ["a"]) if sentence else bleu.corpus_score(["a"], [["a"]])
    return str(bleu.get_signature())


@cache
def definitions(semantic: bool = False) -> MetricDefinitions:
    """The definitions of the metrics this installation computes (with `semantic`: the embedding similarity too)."""
    from medsweep import semantic as embedder

    tokenizer = type(_rouge_scorer()._tokenizer).__name__  # rouge-score's default unless one is passed
    packages = {"sacrebleu": _version("sacrebleu"), "rouge-score": _version("rouge-score")}
    if semantic:
        packages[embedder.PACKAGE] = _version(embedder.PACKAGE)
    return MetricDefinitions(
        em_f1=EM_F1,
        bleu=_signature(sentence=False),
        sentence_bleu=_signature(sentence=True),
        rouge=(f"rouge-score {','.join(ROUGE_TYPES)} F-measure, use_stemmer={ROUGE_STEMMER} (Porter), "
               f"tokenizer={tokenizer}"),
        semantic=embedder.description() if semantic else None,
        packages=packages,
    )


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
    return float(_bleu(sentence=True).sentence_score(prediction, [reference]).score)


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    return float(_bleu(sentence=False).corpus_score(predictions, [references]).score)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    scores = _rouge_scorer().score(reference, prediction)
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


def score_corpus(predictions: list[str], references: list[str], semantic: bool = False
                 ) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Corpus metrics (means of per-example EM/F1/ROUGE, corpus BLEU; with `semantic` the mean embedding
    similarity) and the per-example scores."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equal, non-zero numbers of predictions and references, got "
                         f"{len(predictions)} and {len(references)}")
    per_example = [score_example(p, r) for p, r in zip(predictions, references, strict=True)]
    if semantic:
        from medsweep import semantic as embedder

        for scores, similarity in zip(per_example, embedder.similarities(predictions, references), strict=True):
            scores["semantic"] = similarity
    # BLEU is a corpus statistic, not the mean of the sentence BLEUs
    corpus = {key: mean(s[key] for s in per_example) for key in per_example[0] if key != "bleu"}
    corpus["bleu"] = corpus_bleu(predictions, references)
    return corpus, per_example
