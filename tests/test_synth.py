"""medsweep-synth: cleaning rules, grounding flags, abstracts in, local and OpenAI-compatible generators; and the
curation loop's fixed held-out questions (data.eval_path) and base -> stage 1 -> stage 2 report."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medsweep import data, report, synth
from medsweep.errors import ConfigError, DataError, MedsweepError
from tests.conftest import CONF_DIR, MEDQUAD_JSONL, SHARED_DATA, run_medsweep

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
    questions, counts = synth.clean_questions(GENERATION, limit=10)
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
    first, _ = synth.clean_questions("What is anemia?\nWhat causes anemia?\nHow is anemia treated?", 2, seen=seen)
    assert first == ["What is anemia?", "What causes anemia?"]
    second, counts = synth.clean_questions("what is ANEMIA ?\nWhat is a fever?", 5, seen=seen)
    assert second == ["What is a fever?"] and counts["duplicate"] == 1
    statements, _ = synth.clean_questions("List the symptoms of anemia", 5, require_question_mark=False)
    assert statements == ["List the symptoms of anemia"]
    long_line = "Why " + "very " * 50 + "long?"
    assert synth.clean_questions(long_line, 5)[1]["too_long"] == 1
    assert synth.clean_questions("Why?", 5, min_words=1)[0] == ["Why?"]
    assert synth.clean_questions("What does the text discuss?", 5)[1]["not_standalone"] == 1
    assert synth.clean_questions("What does the text discuss?", 5, standalone=False)[0]


@pytest.mark.parametrize("raw, clean", [
    ("1. What is gout?", "What is gout?"), ("12) What is gout?", "What is gout?"),
    ("(2) What is gout?", "What is gout?"),
    ("a) What is gout?", "What is gout?"), ("Q3: What is gout?", "What is gout?"),
    ("Question 4 - What is gout?", "What is gout?"), ("* **What is gout?**", "What is gout?"),
    ('"What is gout?"', "What is gout?"), ("\u2022 What is gout?", "What is gout?"),
    ("A 45-year-old man has gout: why?", "A 45-year-old man has gout: why?"),
])
def test_strip_numbering(raw, clean):
    assert synth.strip_numbering(raw) == clean


def test_answers_cleaned_and_flagged():
    abstract = "Iron supplements treat iron deficiency anemia. Fatigue is the commonest symptom."
    assert synth.clean_answer("Answer: Iron supplements.\nQuestion: What else?") == "Iron supplements."
    assert synth.clean_answer("  Fatigue   is common. Q: next?") == "Fatigue is common."
    assert synth.clean_answer("Not stated.", "not stated") == ""
    assert synth.grounding("", abstract) == (["empty"], 0.0)
    assert synth.grounding("The moon is made of cheese.", abstract) == (["ungrounded"], 0.0)
    flags, overlap = synth.grounding("Fatigue.", abstract)
    assert flags == [] and overlap == 1.0
    flags, overlap = synth.grounding("Fatigue, nausea and headaches.", abstract)
    assert flags == [] and 0 < overlap < 1
    assert synth.grounding("Fatigue, nausea and headaches.", abstract, min_overlap=0.5)[0] == ["ungrounded"]
    assert synth.grounding("It is the.", abstract) == (["ungrounded"], 0.0)  # stopwords only: nothing grounded


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


def test_local_generator_tiny_random_writes_outputs(tmp_path, embedded_dir):
    need_pubmedqa()
    cfg = synth_cfg(f"input.path={PUBMEDQA_JSONL}", "input.limit=2", "model=tiny_random", f"out_dir={tmp_path}",
                    "generator.max_new_tokens_questions=16", "generator.max_new_tokens_answer=8",
                    "generator.device=cpu",
                    "require_question_mark=false", "min_question_words=1")
    summary = synth.run(cfg)
    assert summary["abstracts"] == 2 and summary["generator"] == "tiny_random"
    rows = read_jsonl(tmp_path / "synthetic.jsonl")
    assert len(rows) == summary["rows"] and all(set(r["flags"]) <= {"empty", "ungrounded"} for r in rows)
    assert json.loads((tmp_path / "stats.json").read_text())["abstracts"] == 2
    assert OmegaConf.load(tmp_path / "synth_config.yaml").model.name == "tiny_random"


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


class FakeOpenAI(BaseHTTPRequestHandler):
    requests: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if FakeOpenAI.status != 200:
            self.send_response(FakeOpenAI.status)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "bad key ' + (self.headers.get("Authorization") or "").encode()
                             + b'"}}')
            return
        user = body["messages"][-1]["content"]
        if "Question:" not in user:
            content = "1. Which drug lowers cholesterol?\n2. Which drug lowers cholesterol?\n- Why are statins used?"
        elif "Why" in user:  # a server that echoes the credentials it got must not leak them into the output
            content = f"Statins lower cholesterol ({self.headers.get('Authorization')})."
        else:
            content = "Statins."
        payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop"}]}
        raw = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeOpenAI.requests, FakeOpenAI.status = [], 200
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


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
    gen = synth.OpenAIGenerator(endpoint, "fake-llm", key_env="MEDSWEEP_TEST_LLM_KEY", retries=0)
    assert gen.chat([[{"role": "user", "content": "Question: x"}]], 8) == ["Statins."]
    assert FakeOpenAI.requests[-1]["auth"] is None  # no key in the environment: no Authorization header
    monkeypatch.setenv("MEDSWEEP_TEST_LLM_KEY", "sk-wrong-key-987654")
    FakeOpenAI.status = 401
    with pytest.raises(MedsweepError, match=r"HTTP 401 \(is \$MEDSWEEP_TEST_LLM_KEY set\?\)") as err:
        gen.complete([{"role": "user", "content": "x"}], 8)
    assert "sk-wrong-key-987654" not in str(err.value)
    closed = synth.OpenAIGenerator("http://127.0.0.1:9/v1", "m", retries=0, timeout_s=2)
    with pytest.raises(MedsweepError, match="cannot reach the endpoint"):
        closed.complete([{"role": "user", "content": "x"}], 8)
    with pytest.raises(ConfigError, match="generator.base_url"):
        synth.OpenAIGenerator("127.0.0.1:11434", "m")


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
    two = run_medsweep("experiment=curation_stage2", f"train.init_adapter={stage1}", *fast)
    assert two.returncode == 0, two.stderr[-3000:]
    stage2 = next(d for d in (tmp_path / "runs").iterdir() if d != stage1)
    table = report.stages(stage2)
    assert list(table["stage"]) == ["base", "stage 1", "stage 2"] and table["eval set"].nunique() == 1
    assert list(table["data"])[1:] == ["medquad", "synth"]
