"""medsweep-synth: cleaning rules, grounding flags, abstracts in, local and OpenAI-compatible generators; and the
curation loop's fixed held-out questions (data.eval_path) and base -> stage 1 -> stage 2 report."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medsweep import data, generators, report, synth, synth_text
from medsweep.errors import ConfigError, DataError, MedsweepError
from tests.conftest import CONF_DIR, MEDQUAD_JSONL, SHARED_DATA, run_medsweep
from tests.fake_openai import FakeOpenAI

PUBMEDQA_JSONL = SHARED_DATA / "pubmedqa" / "pubmedqa_pqal.jsonl"
NUMBERING = re.compile(r"^\s*(?:\(?\d+[.):]|[-*\u2022]|Q\d*[:.]|Question\s*\d*[:.])")


def synth_cfg(*overrides: str):
    from hydra import compose, initialize_config_dir

    from medsweep.run import config_schema  # noqa: F401  registers the run_id resolver used nowhere here

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("synth", overrides=list(overrides))


def read_jsonl(path: Path) -> list[dict]:
    """JSONL rows (split on newlines only: texts may hold U+2028, which str.splitlines also splits on)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]


def need_pubmedqa():
    if not PUBMEDQA_JSONL.is_file():
        pytest.skip(f"real data not found at {PUBMEDQA_JSONL}")


# --------------------------------------------------------------------------- cleaning


GENERATION = """Here are five questions about the abstract:
1. What are the symptoms of iron deficiency anemia?
2) How is iron deficiency anemia treated?
(3) How is iron-deficiency anemia treated ?
- Can iron deficiency anemia be prevented by diet?
**4.** What blood test diagnoses iron deficiency anemia?
Answer: Iron tablets.
???
Iron deficiency anemia is common in women.
Ques: Anemia?
Q6: Who is at risk of iron deficiency anemia? 7. Does iron deficiency anemia cause fatigue in children?
8. What did this study find about iron deficiency anemia?
"""


def test_questions_one_per_line_without_numbering_deduplicated():
    questions, counts = synth_text.clean_questions(GENERATION, limit=10)
    assert questions == [
        "What are the symptoms of iron deficiency anemia?",
        "How is iron deficiency anemia treated?",
        "Can iron deficiency anemia be prevented by diet?",
        "What blood test diagnoses iron deficiency anemia?",
        "Who is at risk of iron deficiency anemia?",
        "Does iron deficiency anemia cause fatigue in children?",
    ]
    assert not any(NUMBERING.match(q) for q in questions)
    assert counts == {"lines": 13, "no_alnum": 1, "header": 1, "answer_line": 1, "too_short": 1, "too_long": 0,
                      "not_a_question": 1, "not_standalone": 1, "duplicate": 1, "over_limit": 0}


def test_question_limit_dedup_across_abstracts_and_options():
    seen: set[str] = set()
    first, _ = synth_text.clean_questions("What is anemia?\nWhat causes anemia?\nHow is anemia treated?", 2, seen=seen)
    assert first == ["What is anemia?", "What causes anemia?"]
    second, counts = synth_text.clean_questions("what is ANEMIA ?\nWhat is a fever?", 5, seen=seen)
    assert second == ["What is a fever?"] and counts["duplicate"] == 1
    statements, _ = synth_text.clean_questions("List the symptoms of anemia", 5, require_question_mark=False)
    assert statements == ["List the symptoms of anemia"]
    long_line = "Why " + "very " * 50 + "long?"
    assert synth_text.clean_questions(long_line, 5)[1]["too_long"] == 1
    assert synth_text.clean_questions("Why?", 5, min_words=1)[0] == ["Why?"]
    assert synth_text.clean_questions("What does the text discuss?", 5)[1]["not_standalone"] == 1
    assert synth_text.clean_questions("What does the text discuss?", 5, standalone=False)[0]


@pytest.mark.parametrize("raw, clean", [
    ("1. What is gout?", "What is gout?"), ("12) What is gout?", "What is gout?"),
    ("(2) What is gout?", "What is gout?"),
    ("a) What is gout?", "What is gout?"), ("Q3: What is gout?", "What is gout?"),
    ("Question 4 - What is gout?", "What is gout?"), ("* **What is gout?**", "What is gout?"),
    ('"What is gout?"', "What is gout?"), ("\u2022 What is gout?", "What is gout?"),
    ("A 45-year-old man has gout: why?", "A 45-year-old man has gout: why?"),
    ("**Is it vitamin X**", "Is it vitamin X"), ('"Is it vitamin X"', "Is it vitamin X"),
])
def test_strip_numbering(raw, clean):
    assert synth_text.strip_numbering(raw) == clean


def test_answers_cleaned_and_flagged():
    abstract = "Iron supplements treat iron deficiency anemia. Fatigue is the commonest symptom."
    assert synth_text.clean_answer("Answer: Iron supplements.\nQuestion: What else?") == "Iron supplements."
    assert synth_text.clean_answer("  Fatigue   is common. Q: next?") == "Fatigue is common."
    assert synth_text.clean_answer("Not stated.", "not stated") == ""
    assert synth_text.grounding("", abstract) == (["empty"], 0.0)
    assert synth_text.grounding("The moon is made of cheese.", abstract) == (["ungrounded"], 0.0)
    flags, overlap = synth_text.grounding("Fatigue.", abstract)
    assert flags == [] and overlap == 1.0
    flags, overlap = synth_text.grounding("Fatigue, nausea and headaches.", abstract)
    assert flags == [] and 0 < overlap < 1
    assert synth_text.grounding("Fatigue, nausea and headaches.", abstract, min_overlap=0.5)[0] == ["ungrounded"]
    assert synth_text.grounding("It is the.", abstract) == (["ungrounded"], 0.0)  # stopwords only: nothing grounded


# --------------------------------------------------------------------------- abstracts


def test_pubmedqa_contexts_train_split_only():
    need_pubmedqa()
    cfg = synth_cfg(f"input.path={PUBMEDQA_JSONL}", "input.limit=null")
    abstracts = synth.load_abstracts(cfg.input)
    test_ids = {r["id"].split("-")[-1] for r in read_jsonl(PUBMEDQA_JSONL) if r.get("split") == "test"}
    assert len(abstracts) == 500 and not {a["id"] for a in abstracts} & test_ids
    assert all(a["source"] == "pubmedqa" and len(a["text"].split()) <= 350 for a in abstracts)
    two = synth.load_abstracts(synth_cfg(f"input.path={PUBMEDQA_JSONL}", "input.limit=2", "input.offset=3").input)
    assert [a["id"] for a in two] == [a["id"] for a in abstracts[3:5]]


def test_any_table_text_column_and_medal(tmp_path):
    table = tmp_path / "abstracts.csv"
    table.write_text('pmid,abstract\n11,"Gout causes joint pain. {braces} stay."\n12,"Gout causes joint pain. '
                     '{braces} stay."\n13,\n14,"Statins lower cholesterol."\n')
    cfg = synth_cfg("input.loader=table", f"input.path={table}", "input.text_col=abstract", "input.id_col=pmid")
    abstracts = synth.load_abstracts(cfg.input)
    assert abstracts == [{"id": "11", "text": "Gout causes joint pain. {braces} stay.", "source": "abstracts"},
                         {"id": "14", "text": "Statins lower cholesterol.", "source": "abstracts"}]
    with pytest.raises(DataError, match="missing column"):
        synth.load_abstracts(synth_cfg("input.loader=table", f"input.path={table}").input)
    medal = tmp_path / "medal.csv"
    medal.write_text("ABSTRACT_ID,TEXT,LOCATION,LABEL\n7,the pt had an mi last year,[3],['myocardial infarction']\n")
    got = synth.load_abstracts(synth_cfg("input.loader=medal", f"input.path={medal}").input)
    assert got == [{"id": "7", "text": "the pt had an mi last year", "source": "medal"}]


# --------------------------------------------------------------------------- generation (a fake generator)


class Canned:
    name = "canned"

    def __init__(self):
        self.calls = []

    def chat(self, conversations, max_new_tokens):
        self.calls.append((conversations, max_new_tokens))
        out = []
        for messages in conversations:
            user = messages[-1]["content"]
            if "Question:" not in user:  # step 1
                out.append("1. What do statins lower?\n2. What do statins lower?\n3. Who discovered statins?")
            elif "discovered" in user:
                out.append("Not stated.")
            else:
                out.append("Answer: Statins lower cholesterol.")
        return out


def test_synthesize_two_steps_rows_and_stats():
    abstracts = [{"id": "p1", "text": "Statins lower {cholesterol} in adults.", "source": "t"},
                 {"id": "p2", "text": "Statins lower cholesterol.", "source": "t"}]
    prompts = synth_cfg("input.path=x").prompts
    gen = Canned()
    rows, stats = synth.synthesize(abstracts, gen, prompts, num_questions=5)
    step1, step2 = gen.calls
    assert len(step1[0]) == 2 and step1[0][0][0] == {"role": "system", "content": prompts.question_system}
    assert "{cholesterol}" in step1[0][0][1]["content"] and "Write 5 different questions" in step1[0][0][1]["content"]
    assert [r["id"] for r in rows] == ["p1-q1", "p1-q2"]  # p2's questions duplicate p1's
    assert rows[0] == {"id": "p1-q1", "abstract_id": "p1", "source": "t", "question": "What do statins lower?",
                       "answer": "Statins lower cholesterol.", "context": abstracts[0]["text"], "flags": [],
                       "overlap": 1.0, "generator": "canned"}
    assert rows[1]["answer"] == "" and rows[1]["flags"] == ["empty"]
    assert "Question: Who discovered statins?" in step2[0][1][1]["content"]
    assert stats["abstracts"] == 2 and stats["questions"] == 2 and stats["abstracts_without_questions"] == 1
    assert stats["dropped"]["duplicate"] == 4 and stats["flagged_empty"] == 1 and stats["unflagged"] == 1


def _reference_generation(model, tokenizer, messages, max_new_tokens, repetition_penalty=1.0) -> str:
    """One conversation generated alone (no batch, no padding) with plain transformers calls: what a batched
    LocalGenerator must reproduce."""
    import torch

    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=[tokenizer.eos_token_id],
                             pad_token_id=tokenizer.pad_token_id, repetition_penalty=repetition_penalty)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def _scale_weights(model, factor: float = 20.0):
    """The tiny random Llama writes only newlines; scaled weights make it write varied (random) words."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    return model


def test_local_generator_tiny_random_writes_outputs(tmp_path, embedded_dir):
    need_pubmedqa()
    cfg = synth_cfg(f"input.path={PUBMEDQA_JSONL}", "input.limit=2", "model=tiny_random", f"out_dir={tmp_path}",
                    "generator.max_new_tokens_questions=10", "generator.max_new_tokens_answer=6",
                    "generator.device=cpu", "input.max_words=40",
                    "require_question_mark=false", "min_question_words=1")
    gen = generators.build_generator(cfg)
    assert isinstance(gen, generators.LocalGenerator) and gen.name == "tiny_random"
    assert (gen.batch_size, gen.temperature, gen.top_p, gen.repetition_penalty) == (4, 0.0, 0.9, 1.15)
    assert gen.hw.device == "cpu" and gen.hw.precision == "fp32"
    newlines = _reference_generation(gen.model, gen.tokenizer, [{"role": "user", "content": "Hi"}], 4, 1.15)
    assert newlines.strip() == ""  # the unscaled model: nothing but whitespace, so no question at all
    _scale_weights(gen.model)
    summary = synth.run(cfg, generator=gen)
    assert summary["abstracts"] == 2 and summary["generator"] == "tiny_random"
    rows = read_jsonl(tmp_path / "synthetic.jsonl")
    assert rows and len(rows) == summary["rows"] == summary["questions"]
    assert all(set(r["flags"]) <= {"empty", "ungrounded"} for r in rows)
    abstracts = {a["id"]: a["text"] for a in synth.load_abstracts(cfg.input)}
    assert {r["abstract_id"] for r in rows} <= set(abstracts) and len(abstracts) == 2
    prompts = cfg.prompts
    for r in rows:  # every question is a line of what the model wrote for its abstract, every answer is its reply
        assert r["context"] == abstracts[r["abstract_id"]] and r["generator"] == "tiny_random"
        asked = prompts.question_user.replace("{n}", "5").replace("{abstract}", r["context"])
        written = _reference_generation(gen.model, gen.tokenizer, [
            {"role": "system", "content": prompts.question_system}, {"role": "user", "content": asked}], 10, 1.15)
        assert r["question"] and r["question"] in [" ".join(line.split()) for line in written.splitlines()]
        answer_prompt = prompts.answer_user.replace("{abstract}", r["context"]).replace("{question}", r["question"])
        answered = _reference_generation(gen.model, gen.tokenizer, [
            {"role": "system", "content": prompts.answer_system}, {"role": "user", "content": answer_prompt}], 6, 1.15)
        assert r["answer"] == " ".join(answered.split()) and r["answer"]
    on_disk = json.loads((tmp_path / "stats.json").read_text())
    assert on_disk == {k: v for k, v in summary.items() if k not in ("out_dir", "rows")}
    assert on_disk["abstracts"] == 2 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", on_disk["written_at"])
    assert OmegaConf.load(tmp_path / "synth_config.yaml").model.name == "tiny_random"


class ScriptedLM:
    """A stand-in causal LM: generate() decodes each (left-padded) prompt, looks up the scripted reply for it and
    returns prompt + reply tokens + <|im_end|> + tokens after the stop (which must be cut off), padded per batch."""

    def __init__(self, tokenizer, replies: dict[str, str]):
        from types import SimpleNamespace

        self.tokenizer, self.replies, self.calls = tokenizer, replies, []
        self.generation_config = SimpleNamespace(eos_token_id=tokenizer.eos_token_id)
        self.evaluated = False

    def eval(self):
        self.evaluated = True
        return self

    def reply(self, prompt: str) -> str:
        hits = [text for key, text in self.replies.items() if key in prompt]
        assert len(hits) == 1, prompt
        return hits[0]

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, **kwargs):
        import torch

        self.calls.append({"rows": input_ids.shape[0], "padding_side": self.tokenizer.padding_side,
                           "max_new_tokens": max_new_tokens, "eos_token_id": eos_token_id,
                           "pad_token_id": pad_token_id, "prompts": [], **kwargs})
        new = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            start = mask.index(1)
            assert all(mask[start:]) and all(t == pad_token_id for t in ids[:start])  # left padding
            self.calls[-1]["prompts"].append(ids[start:])
            prompt = self.tokenizer.decode(ids[start:])
            tokens = self.tokenizer(self.reply(prompt), add_special_tokens=False)["input_ids"]
            tokens += [self.tokenizer.eos_token_id] + self.tokenizer(" after the stop", add_special_tokens=False)[
                "input_ids"]
            new.append(tokens[:max_new_tokens])
        width = max(len(t) for t in new)
        new = [t + [pad_token_id] * (width - len(t)) for t in new]
        return torch.cat([input_ids, torch.tensor(new, dtype=input_ids.dtype)], dim=1)


def _cpu():
    from medsweep.hardware import Hardware

    return Hardware(device="cpu", precision="fp32", threads=1)


@pytest.fixture(scope="module")
def tiny_tokenizer(embedded_dir):
    from medsweep import models

    return models.load_tokenizer(synth_cfg("input.path=x", "model=tiny_random").model)


def test_local_generator_batches_left_pads_and_keeps_the_order(tiny_tokenizer):
    tok = tiny_tokenizer
    tok.padding_side = "right"
    replies = {"short one": "Reply A.", "a much longer second prompt that pads the others": "Reply B\nline two.",
               "third": "Reply C."}
    lm = ScriptedLM(tok, replies)
    gen = generators.LocalGenerator(lm, tok, _cpu(), "scripted", batch_size=2, repetition_penalty=1.3)
    conversations = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "short one"}],
                     [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "a much longer second prompt that pads the others"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "third"}]]
    assert gen.chat(conversations, 64) == ["Reply A.", "Reply B\nline two.", "Reply C."]
    assert lm.evaluated and tok.padding_side == "right"  # restored after generation
    assert [c["rows"] for c in lm.calls] == [2, 1] and {c["padding_side"] for c in lm.calls} == {"left"}
    longest = tok.apply_chat_template(conversations[1], tokenize=False, add_generation_prompt=True)
    assert lm.calls[0]["prompts"][0] == tok(longest, add_special_tokens=False)["input_ids"]  # longest first
    call = lm.calls[0]
    assert (call["max_new_tokens"], call["eos_token_id"], call["pad_token_id"]) == (64, [tok.eos_token_id],
                                                                                     tok.pad_token_id)
    assert call["repetition_penalty"] == 1.3 and call["use_cache"] is True
    assert call["do_sample"] is False and "temperature" not in call and "top_p" not in call  # greedy
    assert gen.chat(conversations[:1], 2) == [tok.decode(tok("Reply A.")["input_ids"][:2])]  # max_new_tokens
    sampled = generators.LocalGenerator(lm, tok, _cpu(), "s", temperature=0.7, top_p=0.8)
    sampled.chat(conversations[:1], 8)
    assert (lm.calls[-1]["do_sample"], lm.calls[-1]["temperature"], lm.calls[-1]["top_p"]) == (True, 0.7, 0.8)
    assert sampled.batch_size == 4 and sampled.repetition_penalty == 1.0  # the defaults


def test_local_generator_needs_a_chat_template(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="the generator plain has no chat template; use a chat"):
        generators.LocalGenerator(ScriptedLM(tiny_tokenizer, {}), tok, _cpu(), "plain")


def test_local_generator_batched_equals_one_by_one_on_the_tiny_model(embedded_dir):
    from medsweep import models

    cfg = synth_cfg("input.path=x", "model=tiny_random")
    tok = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tok, _cpu(), seed=0)
    _scale_weights(model)
    conversations = [[{"role": "user", "content": "What is gout?"}],
                     [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Tell me about statins and cholesterol in adults."}],
                     [{"role": "user", "content": "Why?"}]]
    got = generators.LocalGenerator(model, tok, _cpu(), "tiny", batch_size=2).chat(conversations, 12)
    expected = [_reference_generation(model, tok, c, 12) for c in conversations]
    assert got == expected and all(e.strip() for e in expected) and len(set(expected)) == 3


def test_run_with_a_local_generator_writes_exactly_the_scripted_pairs(tmp_path, tiny_tokenizer):
    abstracts = tmp_path / "abstracts.csv"
    abstracts.write_text("pmid,abstract\n1,Gout causes painful joints.\n2,Statins lower cholesterol.\n")
    replies = {"Abstract:\nGout causes": "1. What does gout cause?\n2) Is gout painful?",
               "Abstract:\nStatins": "- What do statins lower?",
               "Question: What does gout cause?": "Answer: Painful joints.",
               "Question: Is gout painful?": "Yes. Q2: next",
               "Question: What do statins lower?": "not stated"}
    tok = tiny_tokenizer
    gen = generators.LocalGenerator(ScriptedLM(tok, replies), tok, _cpu(), "scripted")
    cfg = synth_cfg("input.loader=table", f"input.path={abstracts}", "input.text_col=abstract", "input.id_col=pmid",
                    f"out_dir={tmp_path / 'out'}")
    summary = synth.run(cfg, generator=gen)
    rows = read_jsonl(tmp_path / "out/synthetic.jsonl")
    base = {"source": "abstracts", "generator": "scripted"}
    assert rows == [
        {"id": "1-q1", "abstract_id": "1", **base, "question": "What does gout cause?", "answer": "Painful joints.",
         "context": "Gout causes painful joints.", "flags": [], "overlap": 1.0},
        {"id": "1-q2", "abstract_id": "1", **base, "question": "Is gout painful?", "answer": "Yes.",
         "context": "Gout causes painful joints.", "flags": ["ungrounded"], "overlap": 0.0},
        {"id": "2-q1", "abstract_id": "2", **base, "question": "What do statins lower?", "answer": "",
         "context": "Statins lower cholesterol.", "flags": ["empty"], "overlap": 0.0},
    ]
    assert summary["rows"] == 3 and summary["questions"] == 3 and summary["question_lines"] == 3
    assert (summary["flagged_empty"], summary["flagged_ungrounded"], summary["unflagged"]) == (1, 1, 1)
    assert summary["abstracts_without_questions"] == 0 and summary["generator"] == "scripted"
    assert [c["max_new_tokens"] for c in gen.model.calls] == [192, 96]  # generator.max_new_tokens_* defaults


@pytest.mark.slow
def test_embedded_smollm2_generates_clean_questions_and_answers(tmp_path, embedded_dir):
    need_pubmedqa()
    cfg = synth_cfg(f"input.path={PUBMEDQA_JSONL}", "input.limit=2", "num_questions=3", f"out_dir={tmp_path}",
                    "generator.max_new_tokens_questions=96", "generator.max_new_tokens_answer=48")
    summary = synth.run(cfg)
    rows = read_jsonl(tmp_path / "synthetic.jsonl")
    assert summary["abstracts"] == 2 and rows, summary
    keys = [data.question_key(r["question"]) for r in rows]
    assert len(keys) == len(set(keys))
    for r in rows:
        assert not NUMBERING.match(r["question"]) and r["question"].endswith("?")
        assert set(r["flags"]) <= {"empty", "ungrounded"} and 0 <= r["overlap"] <= 1
        assert ("empty" in r["flags"]) == (r["answer"] == "")
    assert all(sum(r["abstract_id"] == a for r in rows) <= 3 for a in {r["abstract_id"] for r in rows})


# --------------------------------------------------------------------------- OpenAI-compatible endpoint


def test_openai_endpoint_key_from_env_never_written(tmp_path, endpoint, monkeypatch):
    key = "sk-test-0123456789abcdefSECRET"
    monkeypatch.setenv("MEDSWEEP_TEST_LLM_KEY", key)
    abstracts = tmp_path / "abstracts.jsonl"
    abstracts.write_text(json.dumps({"id": "s1", "text": "Statins lower cholesterol and prevent heart attacks."})
                         + "\n")
    cfg = synth_cfg("synth/generator=openai", f"generator.base_url={endpoint}", "generator.model=fake-llm",
                    "generator.key_env=MEDSWEEP_TEST_LLM_KEY", "input.loader=table", f"input.path={abstracts}",
                    "input.text_col=text", "input.id_col=id", f"out_dir={tmp_path / 'out'}")
    summary = synth.run(cfg)
    assert summary["generator"] == "openai:fake-llm" and summary["rows"] == 2
    assert {r["path"] for r in FakeOpenAI.requests} == {"/v1/chat/completions"}
    assert all(r["auth"] == f"Bearer {key}" for r in FakeOpenAI.requests) and len(FakeOpenAI.requests) == 3
    first = FakeOpenAI.requests[0]["body"]
    assert first["model"] == "fake-llm" and first["messages"][0]["role"] == "system"
    assert first["max_tokens"] == cfg.generator.max_new_tokens_questions
    rows = read_jsonl(tmp_path / "out/synthetic.jsonl")
    assert [r["question"] for r in rows] == ["Which drug lowers cholesterol?", "Why are statins used?"]
    assert "***" in rows[1]["answer"]  # the echoed credentials were scrubbed
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert key not in path.read_text(), path
    assert "MEDSWEEP_TEST_LLM_KEY" in (tmp_path / "out/synth_config.yaml").read_text()  # the variable's name only


def test_openai_endpoint_errors_and_no_key(tmp_path, endpoint, monkeypatch):
    monkeypatch.delenv("MEDSWEEP_TEST_LLM_KEY", raising=False)
    gen = generators.OpenAIGenerator(endpoint, "fake-llm", key_env="MEDSWEEP_TEST_LLM_KEY", retries=0)
    assert gen.chat([[{"role": "user", "content": "Question: x"}]], 8) == ["Statins."]
    assert FakeOpenAI.requests[-1]["auth"] is None  # no key in the environment: no Authorization header
    monkeypatch.setenv("MEDSWEEP_TEST_LLM_KEY", "sk-wrong-key-987654")
    FakeOpenAI.status = 401
    with pytest.raises(MedsweepError, match=r"HTTP 401 \(is \$MEDSWEEP_TEST_LLM_KEY set\?\)") as err:
        gen.complete([{"role": "user", "content": "x"}], 8)
    assert "sk-wrong-key-987654" not in str(err.value)
    closed = generators.OpenAIGenerator("http://127.0.0.1:9/v1", "m", retries=0, timeout_s=2)
    with pytest.raises(MedsweepError, match="cannot reach the endpoint"):
        closed.complete([{"role": "user", "content": "x"}], 8)
    with pytest.raises(ConfigError, match="generator.base_url"):
        generators.OpenAIGenerator("127.0.0.1:11434", "m")


def test_required_settings_are_named(tmp_path):
    with pytest.raises(ConfigError, match="input.path is required"):
        synth.run(synth_cfg(f"out_dir={tmp_path}"))
    with pytest.raises(ConfigError, match="generator.model is required"):
        synth.run(synth_cfg("synth/generator=openai", "input.path=x", f"out_dir={tmp_path}"))


# --------------------------------------------------------------------------- the curation loop


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_path_gives_the_same_heldout_questions_whatever_the_training_data(compose, tmp_path):
    held = _jsonl(tmp_path / "heldout.jsonl", [{"id": f"h{i}", "question": f"What is held-out condition {i}?",
                                                "answer": f"Condition {i}.", "context": "c"} for i in range(6)])
    reviewed = _jsonl(tmp_path / "reviewed.jsonl", [{"id": f"r{i}", "question": f"What is condition {i}?",
                                                     "answer": f"It is {i}."} for i in range(30)]
                      + [{"id": "dup", "question": "what is held-out condition 2", "answer": "leak"}])
    synth_cfg_ = compose(["data=synth", f"data.path={reviewed}", f"data.eval_path={held}", "train.eval_split=4"])
    sample_cfg = compose(["data=sample", f"data.eval_path={held}", "train.eval_split=4"])
    a = data.build(synth_cfg_.data, eval_size=4)
    b = data.build(sample_cfg.data, eval_size=4)
    assert [r["id"] for r in a.eval] == [r["id"] for r in b.eval] == ["h0", "h1", "h2", "h3"]
    assert "context" not in a.eval[0]  # closed-book data: the eval prompts carry no context either
    assert "dup" not in {r["id"] for r in a.train} and a.stats["eval_file"]["dropped_from_train"] == 1
    assert len(a.train) == 30 and a.stats["eval"] == 4
    plain = data.build(compose(["data=sample"]).data, eval_size=4)
    assert [r["id"] for r in plain.eval] != [r["id"] for r in b.eval]


def _fake_run(path: Path, data_name: str, metrics: dict, baseline: dict | None, init: str | None, questions):
    path.mkdir(parents=True)
    rec = {"status": "complete", "run_name": path.name, "axes": {"model": "smollm2_135m", "data": data_name},
           "metrics": metrics, "baseline": baseline}
    (path / "metrics.json").write_text(json.dumps(rec))
    (path / "config.yaml").write_text(OmegaConf.to_yaml({"train": {"init_adapter": init}}))
    for name in ("predictions.jsonl", "predictions_baseline.jsonl"):
        _jsonl(path / name, [{"question": q, "generated": "x"} for q in questions])
    return path


def test_stages_table_base_stage1_stage2(tmp_path, capsys):
    runs = tmp_path / "runs"
    qs = ["What is gout?", "What is anemia?"]
    _fake_run(runs / "s1", "medquad", {"f1": 0.2, "exact_match": 0.0, "rougeL": 0.15}, {"f1": 0.1, "exact_match": 0.0,
                                                                                        "rougeL": 0.1}, None, qs)
    _fake_run(runs / "s2", "synth", {"f1": 0.3, "exact_match": 0.5, "rougeL": 0.25}, None,
              "results/runs/s1/adapter", qs)  # a relative path from another working directory: found next to s2
    table = report.stages(runs / "s2")
    assert list(table["stage"]) == ["base", "stage 1", "stage 2"]
    assert list(table["F1"]) == [0.1, 0.2, 0.3] and list(table["EM %"]) == [0.0, 0.0, 50.0]
    assert list(table["data"]) == ["", "medquad", "synth"] and table["eval set"].nunique() == 1
    assert report.main([str(runs / "s2"), "--stages"]) == 0
    assert "| stage 2 " in capsys.readouterr().out
    with pytest.raises(MedsweepError, match="no metrics.json"):
        report.stages(tmp_path)


@pytest.mark.slow
def test_curation_loop_end_to_end_on_the_tiny_model(tmp_path, embedded_dir):
    """stage 1 (MedQuAD) -> stage 2 (reviewed synthetic pairs) from the stage-1 adapter, same held-out questions."""
    if not MEDQUAD_JSONL.is_file():
        pytest.skip(f"real data not found at {MEDQUAD_JSONL}")
    synth_dir = tmp_path / "synth"
    synth_dir.mkdir()
    _jsonl(synth_dir / "reviewed.jsonl", [{"id": f"r{i}", "question": f"What lowers cholesterol level {i}?",
                                           "answer": "Statins lower cholesterol."} for i in range(24)])
    _jsonl(synth_dir / "heldout.jsonl", [{"id": f"h{i}", "question": f"Which drug treats condition {i}?",
                                          "answer": "Metformin."} for i in range(6)])
    fast = ["model=tiny_random", f"output_root={tmp_path}", "train.max_steps=3", "train.eval_split=4",
            "train.max_seq_length=128", "eval.max_new_tokens=4", "train.batch_size=4", "eval.perplexity=false"]
    one = run_medsweep("experiment=curation_stage1", f"data.path={MEDQUAD_JSONL}", "train.train_size=24", *fast)
    assert one.returncode == 0, one.stderr[-3000:]
    stage1 = next((tmp_path / "runs").iterdir())
    two = run_medsweep("experiment=curation_stage2", f"train.init_adapter={stage1}", *fast, "train.lr=1e-9")
    assert two.returncode == 0, two.stderr[-3000:]
    stage2 = next(d for d in (tmp_path / "runs").iterdir() if d != stage1)
    # stage 2 trained at a negligible learning rate, so its adapter is still stage 1's: it started from it (a fresh
    # LoRA starts with B = 0 and a different A, far from stage 1's trained weights)
    first, second = _adapter_tensors(stage1), _adapter_tensors(stage2)
    assert first.keys() == second.keys() and first
    assert max(t.abs().max().item() for k, t in first.items() if "lora_B" in k) > 1e-5
    for key, tensor in first.items():
        assert torch_allclose(second[key], tensor, atol=1e-6), key
    table = report.stages(stage2)
    assert list(table["stage"]) == ["base", "stage 1", "stage 2"] and table["eval set"].nunique() == 1
    assert list(table["data"])[1:] == ["medquad", "synth"]


# --------------------------------------------------------------------------- the medsweep-synth command


@pytest.fixture
def synth_main(monkeypatch):
    """synth.main() in this process with the given arguments (Hydra reads sys.argv); the exit code. Hydra's own
    logging set-up is switched off: it would attach handlers to pytest's captured streams, and closing those broke
    capture for the rest of the worker's tests."""
    from hydra.core.global_hydra import GlobalHydra

    def call(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["medsweep-synth", *args, "hydra/job_logging=none",
                                          "hydra/hydra_logging=none"])
        try:
            synth.main()
        except SystemExit as exc:
            return exc.code
        finally:
            GlobalHydra.instance().clear()
        return 0

    return call


def _statins_file(tmp_path) -> Path:
    path = tmp_path / "abstracts.jsonl"
    path.write_text(json.dumps({"id": "s1", "text": "Statins lower cholesterol and prevent heart attacks."}) + "\n")
    return path


def test_cli_success_prints_the_summary_and_the_next_step(tmp_path, endpoint, synth_main, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "out"
    code = synth_main("synth/generator=openai", f"generator.base_url={endpoint}", "generator.model=fake-llm",
                      "input.loader=table", f"input.path={_statins_file(tmp_path)}", "input.text_col=text",
                      "input.id_col=id", f"out_dir={out}")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [line for line in captured.out.splitlines() if not line.startswith("[")] == [  # [...] are log lines
        f"{out}/synthetic.jsonl: 2 QA pairs from 1 abstracts (0 flagged empty, 0 ungrounded)",
        f"review: python -m medsweep.labelstudio tasks {out}/synthetic.jsonl"]
    assert [r["question"] for r in read_jsonl(out / "synthetic.jsonl")] == ["Which drug lowers cholesterol?",
                                                                             "Why are statins used?"]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["abstracts"], stats["questions"], stats["generator"]) == (1, 2, "openai:fake-llm")


@pytest.mark.parametrize("args, message", [
    ((), "medsweep-synth: error: input.path is required: the abstracts file (e.g. input.path=pubmedqa_pqal.jsonl; "
         "input.path=null reads the hub copy of pubmedqa/medal)"),
    (("input.loader=table", "input.path=/nonexistent/abstracts.csv"),
     "medsweep-synth: error: /nonexistent/abstracts.csv: file not found"),
    (("input.path=x", "num_questions=0"), "medsweep-synth: error: num_questions=0 is invalid: must be >= 1"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, synth_main, capsys, args, message):
    code = synth_main(*args, f"out_dir={tmp_path / 'out'}")
    captured = capsys.readouterr()
    assert code == 2 and captured.err == message + "\n", captured.err
    assert captured.out == "" and not (tmp_path / "out" / "synthetic.jsonl").exists()


@pytest.mark.slow
def test_console_script_medsweep_synth(tmp_path, endpoint):
    import subprocess

    script = Path(sys.executable).with_name("medsweep-synth")
    if not script.is_file():
        pytest.skip("medsweep-synth is not installed in this environment")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    bad = subprocess.run([str(script), f"out_dir={tmp_path / 'bad'}"], capture_output=True, text=True, timeout=300,
                         env=env, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "medsweep-synth: error: input.path is required: the abstracts file (e.g. input.path=pubmedqa_pqal.jsonl; "
        "input.path=null reads the hub copy of pubmedqa/medal)"], bad.stderr
    out = tmp_path / "out"
    good = subprocess.run([str(script), "synth/generator=openai", f"generator.base_url={endpoint}",
                           "generator.model=fake-llm", "input.loader=table", f"input.path={_statins_file(tmp_path)}",
                           "input.text_col=text", f"out_dir={out}"], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[-2] == f"{out}/synthetic.jsonl: 2 QA pairs from 1 abstracts (0 flagged empty, 0 " \
                                          "ungrounded)"
    assert len(read_jsonl(out / "synthetic.jsonl")) == 2


# --------------------------------------------------------------------------- OpenAI-compatible endpoint: the details


def test_openai_request_body_headers_and_retries(endpoint, monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(generators.time, "sleep", sleeps.append)
    gen = generators.OpenAIGenerator(endpoint + "/", "m", key_env=None, temperature=0.3, top_p=0.7)
    assert gen.url == endpoint + "/chat/completions" and gen.name == "openai:m"
    assert (gen.key_env, gen.timeout_s, gen.retries) == (None, 120.0, 2)
    messages = [{"role": "user", "content": "Question: x"}]
    FakeOpenAI.statuses = [503, 429]
    assert gen.complete(messages, 5) == "Statins." and sleeps == [1, 2]
    assert len(FakeOpenAI.requests) == 3 and FakeOpenAI.requests[-1]["path"] == "/v1/chat/completions"
    last = FakeOpenAI.requests[-1]
    assert last["body"] == {"model": "m", "messages": messages, "max_tokens": 5, "temperature": 0.3, "top_p": 0.7,
                            "stream": False}
    assert (last["content_type"], last["accept"], last["auth"], last["method"]) == (
        "application/json", "application/json", None, "POST")
    FakeOpenAI.statuses, sleeps[:] = [500, 502, 504], []
    with pytest.raises(MedsweepError) as err:
        gen.complete(messages, 5)
    assert str(err.value) == f'{gen.url}: HTTP 504: {{"error": {{"message": "bad key "}}, "code": 504}}'
    assert sleeps == [1, 2] and len(FakeOpenAI.requests) == 6
    FakeOpenAI.statuses, sleeps[:] = [400], []
    with pytest.raises(MedsweepError) as err:
        gen.complete(messages, 5)
    assert sleeps == [] and len(FakeOpenAI.requests) == 7 and "HTTP 400: " in str(err.value)
    FakeOpenAI.statuses = [401]
    with pytest.raises(MedsweepError) as err:  # no key variable configured: no hint about one
        gen.complete(messages, 5)
    assert f"{gen.url}: HTTP 401: " in str(err.value) and "is $" not in str(err.value)
    keyed = generators.OpenAIGenerator(endpoint, "m", key_env="MEDSWEEP_TEST_LLM_KEY", retries=0)
    FakeOpenAI.statuses = [403]
    with pytest.raises(MedsweepError, match=r"HTTP 403 \(is \$MEDSWEEP_TEST_LLM_KEY set\?\): "):
        keyed.complete(messages, 5)
    FakeOpenAI.statuses = [503]
    with pytest.raises(MedsweepError, match="HTTP 503: "):  # retries=0: the first failure is final
        keyed.complete(messages, 5)
    FakeOpenAI.statuses, sleeps[:] = [504], []
    assert gen.complete(messages, 5) == "Statins." and sleeps == [1]  # 504 is retried too
    FakeOpenAI.statuses, FakeOpenAI.error_body = [500], b"\xff" + b"E" * 400
    with pytest.raises(MedsweepError) as err:  # not UTF-8, long: decoded with replacement, cut at 300 characters
        keyed.complete(messages, 5)
    assert str(err.value) == f"{keyed.url}: HTTP 500: \ufffd" + "E" * 299
    assert generators.OpenAIGenerator("http://h/apiX/", "m").url == "http://h/apiX/chat/completions"
    defaults = generators.OpenAIGenerator("https://example.org/v1", "m")
    assert (defaults.key_env, defaults.temperature, defaults.top_p) == ("OPENAI_API_KEY", 0.0, 1.0)


def test_openai_odd_replies_and_unreachable(endpoint, monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(generators.time, "sleep", sleeps.append)
    gen = generators.OpenAIGenerator(endpoint, "m", key_env=None, retries=1)
    for raw in (b"not json", b'{"choices": []}', b'{"choices": [{"message": {}}]}', b'{"choices": "x"}'):
        FakeOpenAI.raw = raw
        with pytest.raises(MedsweepError) as err:
            gen.complete([{"role": "user", "content": "x"}], 4)
        assert str(err.value) == f"{gen.url}: not an OpenAI chat completion response", raw
    FakeOpenAI.raw = b'{"choices": [{"message": {"content": null}}]}'
    assert gen.chat([[{"role": "user", "content": "x"}], [{"role": "user", "content": "y"}]], 4) == ["", ""]
    assert sleeps == []
    timeouts = []
    real = generators.urllib.request.urlopen
    monkeypatch.setattr(generators.urllib.request, "urlopen",
                        lambda request, timeout: timeouts.append(timeout) or real(request, timeout=timeout))
    closed = generators.OpenAIGenerator("http://127.0.0.1:9/v1", "m", retries=2, timeout_s=3)
    with pytest.raises(MedsweepError) as err:
        closed.complete([{"role": "user", "content": "x"}], 8)
    assert str(err.value).startswith("http://127.0.0.1:9/v1/chat/completions: cannot reach the endpoint: ")
    assert "Connection refused" in str(err.value)  # the reason from the socket
    assert sleeps == [1, 2] and timeouts == [3, 3, 3]


def test_openai_settings_are_checked_and_the_key_is_scrubbed(monkeypatch):
    for base_url, model in (("", "m"), ("http://h/v1", ""), (None, "m")):
        with pytest.raises(ConfigError) as err:
            generators.OpenAIGenerator(base_url, model)
        assert str(err.value) == "generator.base_url and generator.model are required with synth/generator=openai"
    with pytest.raises(ConfigError) as err:
        generators.OpenAIGenerator("ftp://h/v1", "m")
    assert str(err.value) == "generator.base_url='ftp://h/v1' is invalid: expected http(s)://host[:port]/v1"
    assert generators.OpenAIGenerator("https://h/v1", "m").url == "https://h/v1/chat/completions"
    monkeypatch.setenv("MEDSWEEP_TEST_LLM_KEY", "sk-abcdef")
    keyed = generators.OpenAIGenerator("http://h/v1", "m", key_env="MEDSWEEP_TEST_LLM_KEY")
    assert keyed._scrub("key sk-abcdef here") == "key *** here"
    assert generators.OpenAIGenerator("http://h/v1", "m", key_env=None)._scrub("sk-abcdef") == "sk-abcdef"
    monkeypatch.delenv("MEDSWEEP_TEST_LLM_KEY")
    assert keyed._scrub("sk-abcdef") == "sk-abcdef"


def test_build_generator_from_the_config(tmp_path, embedded_dir):
    cfg = synth_cfg("synth/generator=openai", "generator.base_url=http://h:1/v1", "generator.model=llm",
                    "generator.key_env=K", "generator.temperature=0.5", "generator.top_p=0.8",
                    "generator.timeout_s=7", "generator.retries=4", "input.path=x")
    gen = generators.build_generator(cfg)
    assert isinstance(gen, generators.OpenAIGenerator)
    assert (gen.url, gen.model, gen.key_env, gen.temperature, gen.top_p, gen.timeout_s, gen.retries) == (
        "http://h:1/v1/chat/completions", "llm", "K", 0.5, 0.8, 7, 4)
    cfg = synth_cfg("input.path=x", "model=tiny_random", "generator.device=cpu")
    cfg.generator.backend = "vllm"
    with pytest.raises(ConfigError) as err:
        generators.build_generator(cfg)
    assert str(err.value) == "generator.backend='vllm' is invalid: allowed local, openai"


def test_build_generator_from_a_model_dir(tmp_path, embedded_dir):
    import torch

    from medsweep import models

    base = synth_cfg("input.path=x", "model=tiny_random")
    tok = models.load_tokenizer(base.model)
    model, _ = models.load_model(base.model, tok, _cpu(), seed=3)
    saved = tmp_path / "my-model"
    model.save_pretrained(saved)
    tok.save_pretrained(saved)
    cfg = synth_cfg("input.path=x", "model=tiny_random", f"generator.model_dir={saved}", "generator.device=cpu",
                    "generator.batch_size=3", "generator.temperature=0.4", "generator.top_p=0.6",
                    "generator.repetition_penalty=1.05")
    gen = generators.build_generator(cfg)
    assert isinstance(gen, generators.LocalGenerator) and gen.name == "my-model"
    assert (gen.batch_size, gen.temperature, gen.top_p, gen.repetition_penalty) == (3, 0.4, 0.6, 1.05)
    reference = model.state_dict()
    assert all(torch.equal(t, reference[k]) for k, t in gen.model.state_dict().items())
    assert gen.hw == generators._device(cfg.generator)
    cfg.generator.model_dir = str(tmp_path / "nothing-here")
    with pytest.raises(ConfigError, match="generator.model_dir=.* is invalid: neither a run directory"):
        generators.build_generator(cfg)


def test_a_model_dir_loads_on_the_generators_device(monkeypatch):
    from medsweep import export
    from medsweep.hardware import Hardware

    loaded = []
    gpu = Hardware(device="cuda", precision="bf16", threads=2)
    monkeypatch.setattr(generators, "_device", lambda g: gpu)
    monkeypatch.setattr(export, "load_generator_model", lambda spec, hw=None: loaded.append((spec, hw)) or
                        (object(), type("Tok", (), {"chat_template": "t"})()))
    cfg = synth_cfg("input.path=x", "generator.model_dir=/models/m", "generator.device=cuda")
    gen = generators.build_generator(cfg)
    assert loaded == [("/models/m", gpu)] and gen.hw == gpu  # loaded where it generates, not on export's CPU default


def test_generator_device(monkeypatch):
    import torch

    cfg = synth_cfg("input.path=x").generator
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    hw = generators._device(cfg)  # auto without a GPU
    assert (hw.device, hw.precision) == ("cpu", "fp32") and hw.threads == min(2, len(os.sched_getaffinity(0)))
    cfg.device = "cuda"
    with pytest.raises(ConfigError) as err:
        generators._device(cfg)
    assert str(err.value) == "generator.device=cuda is invalid: no CUDA GPU is visible"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16, precision in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        for device in ("cuda", "auto"):
            cfg.device = device
            hw = generators._device(cfg)
            assert (hw.device, hw.precision) == ("cuda", precision)
    cfg.device = "cpu"
    assert generators._device(cfg).precision == "fp32"


# --------------------------------------------------------------------------- abstracts and run(): the details


def test_table_abstracts_ids_source_truncation_offset_limit(tmp_path):
    table = tmp_path / "notes.tsv"
    rows = ["text\tkind", "one two three four five six\ta", "  Gout   hurts.  \tb", "gout HURTS\tc", "\td",
            "Statins work.\te", "Aspirin thins blood.\tf"]
    table.write_text("\n".join(rows) + "\n")
    cfg = synth_cfg("input.loader=table", f"input.path={table}", "input.text_col=text", "input.max_words=4",
                    "input.limit=null")
    got = synth.load_abstracts(cfg.input)
    assert got == [{"id": "notes-0", "text": "one two three four", "source": "notes"},
                   {"id": "notes-1", "text": "Gout hurts.", "source": "notes"},
                   {"id": "notes-4", "text": "Statins work.", "source": "notes"},
                   {"id": "notes-5", "text": "Aspirin thins blood.", "source": "notes"}]
    cfg = synth_cfg("input.loader=table", f"input.path={table}", "input.text_col=text", "input.max_words=null",
                    "input.source=clinic", "input.offset=1", "input.limit=2")
    assert synth.load_abstracts(cfg.input) == [{"id": "notes-1", "text": "Gout hurts.", "source": "clinic"},
                                               {"id": "notes-4", "text": "Statins work.", "source": "clinic"}]
    cfg = synth_cfg("input.loader=table", f"input.path={table}", "input.text_col=text", "input.max_words=null",
                    "input.limit=null")
    assert synth.load_abstracts(cfg.input)[0]["text"] == "one two three four five six"
    with pytest.raises(DataError) as err:
        synth.load_abstracts(synth_cfg("input.loader=table", f"input.path={table}", "input.text_col=body",
                                       "input.id_col=pmid").input)
    assert str(err.value) == f"{table}: missing column(s) body, pmid; available columns: text, kind"
    with pytest.raises(ConfigError) as err:
        synth.load_abstracts(synth_cfg("input.loader=table", "input.path=null").input)
    assert str(err.value) == "input.path is required with input.loader=table"
    with pytest.raises(DataError) as err:
        synth.load_abstracts(synth_cfg("input.loader=table", f"input.path={tmp_path / 'no.csv'}").input)
    assert str(err.value) == f"{tmp_path / 'no.csv'}: file not found"
    with pytest.raises(ConfigError) as err:
        synth.load_abstracts(synth_cfg("input.loader=pdf", "input.path=x").input)
    assert str(err.value) == "input.loader='pdf' is invalid: allowed pubmedqa, medal, table"


def test_pubmedqa_split_and_medal_rows(tmp_path):
    pqa = tmp_path / "pqa.jsonl"
    pqa.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "pubmedqa-1", "question": "Q1?", "answer": "A1.", "context": "Context one.", "split": "train",
         "final_decision": "yes"},
        {"id": "pubmedqa-2", "question": "Q2?", "answer": "A2.", "context": "Context two.", "split": "test",
         "final_decision": "no"}]))
    got = synth.load_abstracts(synth_cfg("input.loader=pubmedqa", f"input.path={pqa}", "input.split=test").input)
    assert [a["text"] for a in got] == ["Context two."] and got[0]["source"] == "pubmedqa"
    assert got[0]["id"] == "2"  # the abstract keeps its item's id (synthetic rows name it)
    medal = tmp_path / "medal.csv"
    medal.write_text("ABSTRACT_ID,TEXT,LOCATION,LABEL\n7,first abstract,[0],['x']\n8,second abstract,[0],['y']\n")
    got = synth.load_abstracts(synth_cfg("input.loader=medal", f"input.path={medal}", "input.max_rows=1").input)
    assert [a["id"] for a in got] == ["7"]


def test_run_checks_and_writes_a_redacted_config(tmp_path, endpoint, monkeypatch):
    with pytest.raises(ConfigError) as err:
        synth.run(synth_cfg("input.path=x", "num_questions=0", f"out_dir={tmp_path}"))
    assert str(err.value) == "num_questions=0 is invalid: must be >= 1"
    assert synth.run(synth_cfg("input.loader=table", f"input.path={_statins_file(tmp_path)}", "input.text_col=text",
                               "num_questions=1", f"out_dir={tmp_path / 'one'}"), generator=Canned())["rows"] == 1
    with pytest.raises(DataError) as err:
        synth.run(synth_cfg("input.loader=table", f"input.path={_statins_file(tmp_path)}", "input.text_col=text",
                            "input.offset=5", f"out_dir={tmp_path}"), generator=Canned())
    assert str(err.value) == f"no abstracts in {tmp_path / 'abstracts.jsonl'} (after de-duplication, offset and limit)"
    with pytest.raises(ConfigError) as err:
        synth.run(synth_cfg("synth/generator=openai", "input.path=x", f"out_dir={tmp_path}"))
    assert str(err.value) == "generator.model is required with synth/generator=openai (the endpoint's model name)"
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefgh123")
    cfg = synth_cfg("input.loader=table", f"input.path={_statins_file(tmp_path)}", "input.text_col=text",
                    f"out_dir={tmp_path / 'out'}", "+input.note='token hf_abcdefgh123'")
    summary = synth.run(cfg, generator=Canned())
    written = (tmp_path / "out/synth_config.yaml").read_text()
    assert "hf_abcdefgh123" not in written and "token ***" in written
    assert OmegaConf.create(written).input.path == str(tmp_path / "abstracts.jsonl")
    rows = read_jsonl(tmp_path / "out/synthetic.jsonl")
    assert [r["question"] for r in rows] == ["What do statins lower?", "Who discovered statins?"]
    assert summary["rows"] == 2 and [r["flags"] for r in rows] == [[], ["empty"]]


# ---------------------------------------------------------------- train.init_adapter (stage 2 starts from stage 1)


def _adapter_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(run_dir) / "adapter" / "adapter_model.safetensors")


def torch_allclose(a, b, atol: float) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=atol, rtol=0))


def test_init_adapter_loads_the_saved_weights_and_bad_paths_are_one_clear_error(tmp_path, compose, embedded_dir):
    import torch
    from peft import get_peft_model_state_dict

    from medsweep import models

    cfg = compose(["model=tiny_random"])
    tok = models.load_tokenizer(cfg.model)
    trained = models.add_lora(models.load_model(cfg.model, tok, _cpu(), seed=0)[0], cfg.lora, cfg.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    trained.save_pretrained(tmp_path / "stage1" / "adapter")
    saved = _adapter_tensors(tmp_path / "stage1")
    assert saved and any("lora_B" in k for k in saved)
    for where in (tmp_path / "stage1", tmp_path / "stage1" / "adapter"):  # a run directory or the adapter itself
        base, _ = models.load_model(cfg.model, tok, _cpu(), seed=0)
        continued = models.add_lora(base, cfg.lora, cfg.model, init_adapter=str(where))
        state = get_peft_model_state_dict(continued)
        assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved), where
        lora = [p for n, p in continued.named_parameters() if "lora_" in n]
        assert lora and all(p.requires_grad for p in lora)  # trainable: stage 2 goes on training it
    fresh = get_peft_model_state_dict(models.add_lora(models.load_model(cfg.model, tok, _cpu(), seed=0)[0],
                                                      cfg.lora, cfg.model))
    assert all(not fresh[k].any() for k in fresh if "lora_B" in k)  # what stage 2 would start from without it

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        models.add_lora(models.load_model(cfg.model, tok, _cpu(), seed=0)[0], cfg.lora, cfg.model,
                        init_adapter=str(tmp_path / "empty"))
    assert str(err.value) == (f"train.init_adapter={str(tmp_path / 'empty')!r} is invalid: no adapter_config.json "
                              "in it or in its adapter/")
    from medsweep import checks

    with pytest.raises(ConfigError) as err:
        checks.validate(compose(["model=tiny_random", f"train.init_adapter={tmp_path / 'missing'}"]))
    assert str(err.value) == (f"train.init_adapter={str(tmp_path / 'missing')!r} is invalid: must be an existing run "
                              "directory (or adapter directory) to continue from")


def test_stage2_without_init_adapter_stops_with_one_line(monkeypatch, capsys, tmp_path):
    from medsweep import cli

    for args, shown in ((["experiment=curation_stage2"], "'REQUIRED: pass train.init_adapter=<stage-1 run dir>'"),
                        (["model=tiny_random", f"train.init_adapter={tmp_path / 'missing'}"],
                         repr(str(tmp_path / "missing")))):
        monkeypatch.setattr(sys, "argv", ["medsweep", *args, f"output_root={tmp_path}"])
        with pytest.raises(SystemExit) as done:
            cli.main()
        err = capsys.readouterr().err
        assert done.value.code == 2 and err == (f"medsweep: error: train.init_adapter={shown} is invalid: must be an "
                                                "existing run directory (or adapter directory) to continue from\n")


class Fixed:
    """Step 1 always writes `questions`; step 2 always answers `answer`."""

    name = "fixed"

    def __init__(self, questions: str, answer: str = "Statins lower cholesterol."):
        self.questions, self.answer, self.calls = questions, answer, []

    def chat(self, conversations, max_new_tokens):
        self.calls.append(max_new_tokens)
        return [self.answer if "Question:" in c[-1]["content"] else self.questions for c in conversations]


def test_synthesize_passes_every_setting_and_reports_progress(monkeypatch):
    abstracts = [{"id": "p1", "text": "Statins lower {cholesterol} in adults.", "source": "t"},
                 {"id": "p2", "text": "Statins lower cholesterol.", "source": "t"}]
    prompts = synth_cfg("input.path=x").prompts
    from types import SimpleNamespace

    clock = iter([10.0, 11.23456, 14.5678])
    monkeypatch.setattr(synth, "time", SimpleNamespace(perf_counter=lambda: next(clock)))  # synth's clock only
    progress: list[str] = []
    gen = Canned()
    rows, stats = synth.synthesize(abstracts, gen, prompts, num_questions=1, min_overlap=1.1,
                                   max_new_tokens_questions=11, max_new_tokens_answer=7, progress=progress.append)
    assert progress == ["step 1: questions for 2 abstracts with canned", "step 2: answers for 2 questions"]
    assert [c[1] for c in gen.calls] == [11, 7]
    assert [(r["id"], r["question"], r["flags"], r["overlap"]) for r in rows] == [
        ("p1-q1", "What do statins lower?", ["ungrounded"], 1.0),  # overlap 1.0 < min_overlap 1.1
        ("p2-q1", "Who discovered statins?", ["empty"], 0.0)]  # over p1's limit, so still new for p2
    assert stats == {"abstracts": 2, "question_lines": 6, "questions": 2,
                     "dropped": {"no_alnum": 0, "header": 0, "answer_line": 0, "too_short": 0, "too_long": 0,
                                 "not_a_question": 0, "not_standalone": 0, "duplicate": 3, "over_limit": 1},
                     "abstracts_without_questions": 0, "flagged_empty": 1, "flagged_ungrounded": 1, "unflagged": 0,
                     "seconds_questions": 1.23, "seconds_answers": 3.33, "generator": "canned"}
    monkeypatch.undo()
    text = "What do statins lower?\nList statin side effects\nWhat did this study find?\nWho made it?"
    one = [abstracts[1]]

    def questions(**settings):
        return [r["question"] for r in synth.synthesize(one, Fixed(text), prompts, 5, progress=lambda m: None,
                                                        **settings)[0]]

    assert questions() == ["What do statins lower?", "Who made it?"]
    assert questions(min_question_words=4) == ["What do statins lower?"]
    assert questions(max_question_words=3) == ["Who made it?"]
    assert questions(require_question_mark=False) == ["What do statins lower?", "List statin side effects",
                                                      "Who made it?"]
    assert questions(standalone=False) == ["What do statins lower?", "What did this study find?", "Who made it?"]
    gen = Fixed(text)
    synth.synthesize(one, gen, prompts, 5, progress=lambda m: None)
    assert gen.calls == [192, 96]  # the defaults
    rows, stats = synth.synthesize(one + [{"id": "p3", "text": "x", "source": "t"}], Fixed("???"), prompts, 5,
                                   progress=lambda m: None)
    assert rows == [] and stats["abstracts_without_questions"] == 2 and stats["dropped"]["no_alnum"] == 2


def test_cleaning_edge_cases():
    kept, counts = synth_text.clean_questions("What is gout?\nWhat is anemia?\nWhat is asthma?", 1)
    assert kept == ["What is gout?"] and counts["over_limit"] == 2
    assert synth_text.clean_questions("Questions:\nA1: The answer.\nAnswer 2) Yes.", 5)[1] == {
        "lines": 3, "no_alnum": 0, "header": 1, "answer_line": 2, "too_short": 0, "too_long": 0,
        "not_a_question": 0, "not_standalone": 0, "duplicate": 0, "over_limit": 0}
    four = "Why is gout painful?"
    assert synth_text.clean_questions(four, 5, min_words=4)[0] == [four]
    assert synth_text.clean_questions(four, 5, min_words=5)[1]["too_short"] == 1
    assert synth_text.clean_questions(four, 5, max_words=4)[0] == [four]
    assert synth_text.clean_questions(four, 5, max_words=3)[1]["too_long"] == 1
    assert synth_text.clean_questions("What did the authors find about gout?", 5)[1]["not_standalone"] == 1
    assert synth_text.clean_questions("1. What is gout? 2. What is anemia?", 5)[0] == ["What is gout?",
                                                                                      "What is anemia?"]
    assert synth_text.clean_answer("A - Rest and fluids.") == "Rest and fluids."
    assert synth_text.clean_answer("Not stated!  ", "not stated.") == ""
    assert synth_text.clean_answer("Not stated in the text.", None) == "Not stated in the text."
    assert synth_text.clean_answer("The text does not say.", "not stated") == "The text does not say."
    assert synth_text.content_words("Glass gas 5 mg x2 viruses is the") == {"glass", "gas", "5", "viruse"}
    assert synth_text.grounding("Gout and joints and anemia.", "Gout hurts joints.") == ([], 0.667)
    assert synth_text.grounding("Gout and joints and anemia.", "Gout hurts joints.", min_overlap=2 / 3) == ([], 0.667)
    assert synth_text.grounding("Gout and joints and anemia.", "Gout hurts joints.",
                                min_overlap=0.667)[0] == ["ungrounded"]


def test_cleaning_counts_every_dropped_line():
    text = ("What is gout?\n\n\nWhat is anemia?\nA: yes\nAnswer: no\n???\n!!!\nQuestions:\nTopics:\nWhy?\nHow?\n"
            + ("Why " + "very " * 40 + "long?\n") * 2 + "Gout is common.\nAnemia is common.\n"
            "What does the text say?\nWhat did this study find?\nwhat is GOUT?\nWhat is gout ?\n"
            "What is asthma?\nWhat is eczema?")
    kept, counts = synth_text.clean_questions(text, 3)
    assert kept == ["What is gout?", "What is anemia?", "What is asthma?"]
    assert counts == {"lines": 20, "no_alnum": 2, "header": 2, "answer_line": 2, "too_short": 2, "too_long": 2,
                      "not_a_question": 2, "not_standalone": 2, "duplicate": 2, "over_limit": 1}
    forty = "Why " + "so " * 38 + "long?"  # 40 words: the default limit keeps it, 41 do not
    assert synth_text.clean_questions(forty, 5)[0] == [forty]
    assert synth_text.clean_questions("Why " + forty, 5)[1]["too_long"] == 1
    assert synth_text.clean_answer("answer: Rest.") == "Rest." and synth_text.clean_answer("a) Rest.") == "Rest."
    assert synth_text.clean_answer("... Not stated", "not stated") == ""
    assert synth_text.content_words("legs gas") == {"leg", "gas"}


def test_synthesize_prompts_roles_defaults_and_counts():
    prompts = synth_cfg("input.path=x").prompts
    abstracts = [{"id": f"p{i}", "text": text, "source": "t"}
                 for i, text in enumerate(["Statins lower cholesterol.", "Gout hurts.", "Asthma narrows airways."])]

    class PerAbstract(Fixed):
        def chat(self, conversations, max_new_tokens):
            self.calls.append(conversations)
            out = []
            for c in conversations:
                user = c[-1]["content"]
                if "Question:" in user:
                    out.append("Statins lower cholesterol and fat.")  # 3 of its 4 content words in the abstract
                elif "Gout" in user:
                    out.append("???")
                else:
                    out.append("Which drug lowers cholesterol?" if "Statins" in user else "What narrows airways?")
            return out

    gen = PerAbstract("")
    rows, stats = synth.synthesize(abstracts, gen, prompts, 5, progress=lambda m: None)
    assert [(r["abstract_id"], r["flags"], r["overlap"]) for r in rows] == [("p0", [], 0.75), ("p2", ["ungrounded"],
                                                                                                   0.0)]
    assert stats["abstracts_without_questions"] == 1  # p1 only
    step1, step2 = gen.calls
    assert [m["role"] for m in step1[0]] == ["system", "user"] and [m["role"] for m in step2[0]] == ["system", "user"]
    assert step2[0][0]["content"] == prompts.answer_system
    assert step2[0][1]["content"] == prompts.answer_user.replace("{abstract}", "Statins lower cholesterol.").replace(
        "{question}", "Which drug lowers cholesterol?")
    no_system = OmegaConf.merge(prompts, {"question_system": "", "answer_system": None})
    gen = PerAbstract("")
    synth.synthesize(abstracts[:1], gen, no_system, 5, progress=lambda m: None)
    assert [[m["role"] for m in c[0]] for c in gen.calls] == [["user"], ["user"]]
    long_question = "Why " + "so " * 39 + "long?"  # 41 words
    assert synth.synthesize(abstracts[:1], Fixed(long_question), prompts, 5, progress=lambda m: None)[0] == []
    rows, stats = synth.synthesize([], Fixed(""), prompts, 5, progress=lambda m: None)
    assert rows == [] and stats["question_lines"] == 0 and stats["dropped"] == {}


def test_run_applies_the_question_filters_and_writes_a_resolved_config(tmp_path, monkeypatch):
    """require_question_mark and require_standalone reach the filters through run(); stats.json carries when it was
    written; synth_config.yaml holds resolved values (no ${...} left to resolve differently later)."""
    monkeypatch.setenv("MEDSWEEP_CACHE", str(tmp_path / "cache"))
    text = "What do statins lower?\nList statin side effects\nWhat did this study find?"

    def asked(*overrides):
        cfg = synth_cfg("input.loader=table", f"input.path={_statins_file(tmp_path)}", "input.text_col=text",
                        f"output_root={tmp_path}", *overrides)
        synth.run(cfg, generator=Fixed(text))
        return [r["question"] for r in read_jsonl(tmp_path / "synth" / "synthetic.jsonl")]

    assert asked() == ["What do statins lower?"]
    assert asked("require_question_mark=false") == ["What do statins lower?", "List statin side effects"]
    assert asked("require_standalone=false") == ["What do statins lower?", "What did this study find?"]
    stats = json.loads((tmp_path / "synth" / "stats.json").read_text())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stats["written_at"])
    saved = (tmp_path / "synth" / "synth_config.yaml").read_text()
    assert "${" not in saved
    assert OmegaConf.create(saved).out_dir == str(tmp_path / "synth")
    assert OmegaConf.create(saved).model.cache_dir == str(tmp_path / "cache")


def test_the_generator_threads_are_the_cores_this_process_may_use_two_at_most(monkeypatch):
    """Under SLURM with cpus_per_task=1 os.cpu_count() is the node's count; the affinity mask is what the job has."""
    cfg = synth_cfg("generator.device=cpu")
    monkeypatch.setattr(generators, "usable_cores", lambda: 1)
    assert generators._device(cfg.generator).threads == 1
    monkeypatch.setattr(generators, "usable_cores", lambda: 16)
    assert generators._device(cfg.generator).threads == 2


@pytest.mark.parametrize("override, message", [
    ("input.limit=0", "input.limit=0 is invalid: must be >= 1 or null"),
    ("input.max_words=0", "input.max_words=0 is invalid: must be >= 1 or null"),
    ("input.offset=-1", "input.offset=-1 is invalid: must be >= 0"),
])
def test_run_refuses_input_counts_out_of_range(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        synth.run(synth_cfg("input.loader=table", f"input.path={_statins_file(tmp_path)}", "input.text_col=text",
                            f"out_dir={tmp_path}", override), generator=Fixed("What do statins lower?"))
    assert str(err.value) == message
    assert not (tmp_path / "synthetic.jsonl").exists()


def test_table_rows_without_an_id_are_named_by_file_and_row(tmp_path):
    path = tmp_path / "abstracts.jsonl"
    path.write_text(json.dumps({"pmid": "77", "text": "Statins lower cholesterol."}) + "\n"
                    + json.dumps({"text": "Aspirin thins the blood."}) + "\n")
    got = synth.load_abstracts(synth_cfg("input.loader=table", f"input.path={path}", "input.text_col=text",
                                         "input.id_col=pmid").input)
    assert [a["id"] for a in got] == ["77", "abstracts-1"]
