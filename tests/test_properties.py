"""Property tests (hypothesis): prompt formatting and metrics on arbitrary unicode, empty and long text."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsweep import metrics
from medsweep.prompts import IGNORE_INDEX, prompt_ids, render, tokenize_example

text = st.text(max_size=300)
# 2,000-6,000 characters built from a short random piece: as long as truncation needs, with little enough entropy
# that hypothesis does not give up on generating it (HealthCheck.data_too_large)
long_text = st.tuples(st.text(min_size=1, max_size=60), st.integers(2000, 6000)).map(
    lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]])
words = st.lists(st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=8), min_size=1,
                 max_size=30).map(" ".join)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(question=st.one_of(text, long_text), answer=st.one_of(text, long_text), fmt=st.sampled_from(["chat", "alpaca"]))
def test_prompt_formatting_never_crashes_or_loses_the_answer(smol_tokenizer, question, answer, fmt):
    record = {"question": question, "answer": answer}
    prompt, completion = render(smol_tokenizer, record, "Answer.", fmt)
    assert question.strip() in prompt and completion.startswith(answer.strip())
    ex = tokenize_example(smol_tokenizer, record, "Answer.", fmt, max_seq_length=512)
    if ex is None:  # only when the prompt alone does not fit
        assert len(prompt_ids(smol_tokenizer, record, "Answer.", fmt)) >= 512
        return
    n_answer = sum(t != IGNORE_INDEX for t in ex["labels"])
    assert n_answer >= 1  # at least the end-of-answer marker is learned
    assert len(ex["input_ids"]) == len(ex["labels"]) == ex["length"] <= 512
    if not ex["truncated"]:  # the whole answer is in the labels, as the tokenizer itself renders it
        labels = [t for t in ex["labels"] if t != IGNORE_INDEX]
        as_tokenized = smol_tokenizer.decode(smol_tokenizer(answer.strip(), add_special_tokens=False)["input_ids"])
        assert smol_tokenizer.decode(labels).startswith(as_tokenized)


@settings(max_examples=200, deadline=None)
@given(a=text, b=text)
def test_metric_bounds_and_symmetry(a, b):
    em, f1 = metrics.exact_match(a, b), metrics.token_f1(a, b)
    assert 0.0 <= em <= f1 <= 1.0
    assert em == metrics.exact_match(b, a) and abs(f1 - metrics.token_f1(b, a)) < 1e-12
    r, r_swapped = metrics.rouge(a, b), metrics.rouge(b, a)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert 0.0 <= r[key] <= 1.0 and abs(r[key] - r_swapped[key]) < 1e-9  # F-measure is symmetric
    assert 0.0 <= metrics.sentence_bleu(a, b) <= 100.0 + 1e-9  # sacrebleu can round to 100.00000000000004


@settings(max_examples=100, deadline=None)
@given(a=st.one_of(text, words))
def test_identical_strings_score_one(a):
    assert metrics.exact_match(a, a) == 1.0 and metrics.token_f1(a, a) == 1.0
    r = metrics.rouge(a, a)
    if any(v > 0 for v in r.values()):  # rouge-score tokenizes ASCII words only; all-symbol text scores 0
        assert r["rouge1"] == 1.0 and r["rougeL"] == 1.0


@settings(max_examples=100, deadline=None)
@given(a=words)
def test_identical_word_strings_get_full_bleu(a):
    if len(a.split()) >= 4:  # BLEU-4 needs at least one 4-gram
        assert abs(metrics.corpus_bleu([a], [a]) - 100.0) < 1e-6
