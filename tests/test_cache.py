"""The tokenized-training-set cache (medsweep/cache.py) and the filled chat template (prompts.render_many):
a hit gives exactly what tokenizing gives, any input that changes the result changes the key, a damaged entry
is recomputed, and templates that do not treat the content as opaque text fall back to rendering per record."""

from __future__ import annotations

import copy

import pytest

from medsweep import cache, prompts
from medsweep.prompts import PromptStyle

RECORDS = [
    {"question": "What is a fever?", "answer": "A body temperature above the normal range."},
    {"question": "How is high blood pressure treated?", "answer": "Less salt, more exercise, and medicines."},
    {"question": "What causes asthma?", "context": "Asthma is a chronic disease of the airways.",
     "answer": "Allergens, smoke or cold air can trigger it."},
    {"question": "Is insomnia serious?", "answer": "It can be; see a doctor if it lasts."},
    {"question": "What are the symptoms of a cold?", "answer": "Runny nose, sore throat, cough and sneezing."},
    {"question": "Who gets gout?", "answer": "Mostly men over 40 with high uric acid."},
]
STYLE = PromptStyle("Answer the medical question.", "chat", system_prompt=True)


def test_hit_equals_tokenizing_and_is_reported(smol_tokenizer, tmp_path):
    fresh, fresh_stats = prompts.tokenize(RECORDS, smol_tokenizer, STYLE, 64)
    first, first_stats = cache.tokenize_cached(RECORDS, smol_tokenizer, STYLE, 64, tmp_path)
    second, second_stats = cache.tokenize_cached(RECORDS, smol_tokenizer, STYLE, 64, tmp_path)
    assert (first_stats["cache"], second_stats["cache"]) == ("miss", "hit")
    assert first.to_list() == second.to_list() == fresh.to_list()
    assert {k: v for k, v in second_stats.items() if k != "cache"} == fresh_stats
    assert len(list((tmp_path / "tokenized").iterdir())) == 1  # no temporary directory left behind
    off, off_stats = cache.tokenize_cached(RECORDS, smol_tokenizer, STYLE, 64, None)
    assert off_stats["cache"] == "off" and off.to_list() == fresh.to_list()


def test_every_input_of_the_result_is_in_the_key(smol_tokenizer):
    base = cache.key(RECORDS, smol_tokenizer, STYLE, 64)
    assert cache.key(copy.deepcopy(RECORDS), smol_tokenizer, STYLE, 64) == base  # stable
    edited = copy.deepcopy(RECORDS)
    edited[3]["answer"] += "!"
    other_template = copy.deepcopy(smol_tokenizer)
    other_template.chat_template = smol_tokenizer.chat_template.replace("<|im_start|>", "<|im_start|> ")
    variants = [
        cache.key(RECORDS, smol_tokenizer, STYLE, 128),
        cache.key(edited, smol_tokenizer, STYLE, 64),
        cache.key(RECORDS[:-1], smol_tokenizer, STYLE, 64),
        cache.key(RECORDS, smol_tokenizer, PromptStyle("Answer briefly.", "chat", True), 64),
        cache.key(RECORDS, smol_tokenizer, PromptStyle(STYLE.instruction, "alpaca", True), 64),
        cache.key(RECORDS, smol_tokenizer, PromptStyle(STYLE.instruction, "chat", False), 64),
        cache.key(RECORDS, other_template, STYLE, 64),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def test_damaged_entry_is_recomputed(smol_tokenizer, tmp_path):
    cache.tokenize_cached(RECORDS, smol_tokenizer, STYLE, 64, tmp_path)
    (entry,) = (tmp_path / "tokenized").iterdir()
    for f in (entry / "dataset").glob("*.arrow"):
        f.write_bytes(b"not arrow")
    again, stats = cache.tokenize_cached(RECORDS, smol_tokenizer, STYLE, 64, tmp_path)
    assert stats["cache"] == "miss"
    assert again.to_list() == prompts.tokenize(RECORDS, smol_tokenizer, STYLE, 64)[0].to_list()
    assert cache.tokenize_cached(RECORDS, smol_tokenizer, STYLE, 64, tmp_path)[1]["cache"] == "hit"


@pytest.mark.parametrize("system_prompt", [True, False])
def test_filled_template_equals_rendering_each_record(smol_tokenizer, system_prompt):
    many = prompts.render_many(smol_tokenizer, RECORDS, STYLE.instruction, "chat", system_prompt)
    assert many == [prompts.render(smol_tokenizer, r, STYLE.instruction, "chat", system_prompt) for r in RECORDS]
    assert prompts._skeleton(smol_tokenizer, STYLE.instruction, "chat", system_prompt) is not None  # the fast path


@pytest.mark.parametrize("template", [
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | upper }}</s>{% endfor %}",  # rewrites the content
    "{% for m in messages %}{% if 'fever' in m['content'] %}[urgent]{% endif %}{{ m['content'] }}|{% endfor %}",
])
def test_content_dependent_templates_are_rendered_per_record(smol_tokenizer, template):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = template
    many = prompts.render_many(tokenizer, RECORDS, STYLE.instruction, "chat")
    assert many == [prompts.render(tokenizer, r, STYLE.instruction, "chat") for r in RECORDS]
