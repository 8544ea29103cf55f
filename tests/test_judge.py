"""Judge-model scoring (medsweep/judge.py, judge_text.py): the parser on good, lenient, malformed, empty and
out-of-range replies (counted unparsed, never a score); the position-swapped pairwise outcome; `medsweep-judge` end to
end against a local OpenAI-compatible server (auth from the environment, one server error counted, the key in no
file); a run with judge=openai; and the embedded SmolLM2 as a local judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medsweep import judge, metrics
from medsweep.config import JudgeConfig
from medsweep.errors import ConfigError
from medsweep.judge_text import Grade, Preference, outcome, parse_grade, parse_preference
from medsweep.runrecord import RunRecord
from tests.conftest import ROOT, assert_no_secret, run_medsweep
from tests.fake_openai import FakeOpenAI

# --------------------------------------------------------------------------- the parser


@pytest.mark.parametrize("reply, scores, reason", [
    ('{"correct": 4, "complete": 3, "safe": 5, "reason": "Misses the dose."}', (4, 3, 5), "Misses the dose."),
    ('Here is my grade:\n```json\n{"Correct": "5", "complete": 2.0, "safe": 1, "reason": "Harmful."}\n```',
     (5, 2, 1), "Harmful."),
    ('{"note": "first"} then {"correct": 1, "complete": 1, "safe": 5}', (1, 1, 5), ""),
    ("Correctness: 4/5\n**Completeness**: 3\nSafety = 5\nReason: covers most points.", (4, 3, 5),
     "covers most points."),
    ('"correct": 2, "complete": 2, "safe": 4, "reason": "vague"', (2, 2, 4), "vague"),
])
def test_good_and_lenient_replies_are_read(reply, scores, reason):
    grade = parse_grade(reply)
    assert grade.status == "ok" and (grade.correct, grade.complete, grade.safe) == scores
    assert grade.reason == reason and grade.raw is None


@pytest.mark.parametrize("reply, why", [
    ("", "empty reply"),
    ("   \n ", "empty reply"),
    ('{"correct": 4, "complete": ', "no scores"),
    ("The answer is mostly fine and safe.", "no scores"),
    ('{"correct": 4, "complete": 3}', "no scores"),
    ("correct: 4\ncomplete: 3", "no scores"),
    ('{"correct": 6, "complete": 3, "safe": 5}', "not a whole number from 1 to 5"),
    ('{"correct": 0, "complete": 3, "safe": 5}', "not a whole number from 1 to 5"),
    ('{"correct": 3.5, "complete": 3, "safe": 5}', "not a whole number from 1 to 5"),
    ('{"correct": true, "complete": 3, "safe": 5}', "not a whole number from 1 to 5"),
    ('{"correct": "good", "complete": 3, "safe": 5}', "not a whole number from 1 to 5"),
    ("correct: 7\ncomplete: 3\nsafe: 5", "not a whole number from 1 to 5"),
    ("correct: -1, complete: 3, safe: 5", "not a whole number from 1 to 5"),
])
def test_malformed_empty_and_out_of_range_replies_are_unparsed_not_scored(reply, why):
    grade = parse_grade(reply)
    assert grade.status == "unparsed" and why in grade.reason
    assert (grade.correct, grade.complete, grade.safe) == (None, None, None)
    assert grade.raw == reply[:300]
    assert parse_grade("x" * 1000).raw == "x" * 300  # only the start of a long reply is kept


@pytest.mark.parametrize("reply, better", [
    ('{"better": "A", "reason": "more complete"}', "A"),
    ('Sure. {"better": "answer b", "reason": "safer"}', "B"),
    ('{"better": "tie"}', "tie"),
    ("Better: B\nReason: it names the dose.", "B"),
    ("Answer A.", "A"),
    ("tie", "tie"),
])
def test_preferences_are_read(reply, better):
    assert parse_preference(reply) == Preference("ok", better, parse_preference(reply).reason)
    assert parse_preference(reply).better == better


@pytest.mark.parametrize("reply", ["", "Both are good answers.", '{"better": "C"}', '{"winner": 1}', "A or B"])
def test_unreadable_preferences_are_unparsed(reply):
    pref = parse_preference(reply)
    assert pref.status == "unparsed" and pref.better is None and pref.raw == reply


def test_position_swapped_outcome_win_loss_tie():
    ok = {side: Preference("ok", side) for side in ("A", "B", "tie")}
    # first: the fine-tuned answer is A; swapped: it is B
    assert outcome(ok["A"], ok["B"]) == "win"
    assert outcome(ok["B"], ok["A"]) == "loss"
    assert outcome(ok["A"], ok["A"]) == "tie"  # always the first position: inconsistent, a tie
    assert outcome(ok["B"], ok["B"]) == "tie"
    assert outcome(ok["tie"], ok["tie"]) == "tie"
    assert outcome(ok["A"], ok["tie"]) == "tie"
    assert outcome(Preference("unparsed"), ok["B"]) == "unparsed"
    assert outcome(ok["A"], Preference("error")) == "error"
    assert outcome(Preference("unparsed"), Preference("error")) == "error"


def test_grade_row_and_the_prompt_version():
    assert Grade("ok", 4, 3, 5, "fine").as_row() == {"status": "ok", "correct": 4, "complete": 3, "safe": 5,
                                                      "reason": "fine"}
    assert Grade("unparsed", reason="empty reply", raw="").as_row()["raw"] == ""
    from medsweep.judge_text import JUDGE_PROMPT_VERSION, grade_messages, pairwise_messages

    assert JUDGE_PROMPT_VERSION == "rubric-v2"
    user = grade_messages("Q?", "Ref.", "")[1]["content"]
    assert "QUESTION: Q?" in user and "REFERENCE: Ref." in user and "ANSWER: (empty)" in user
    user = pairwise_messages("Q?", "Ref.", "one", "two")[1]["content"]
    assert user.index("ANSWER A: one") < user.index("ANSWER B: two")


# --------------------------------------------------------------------------- a run directory to judge

ITEMS = [  # id, fine-tuned answer, base answer
    ("i1", "Statins lower cholesterol.", "Drink more water."),
    ("i2", "Drink more water.", "Statins lower cholesterol."),
    ("i3", "Rest and fluids help.", "Rest helps a cold."),
    ("i4", "GARBLE", "Stop your insulin."),
    ("i5", "Statins help the heart.", "Nothing."),
]


def _rows(which: int) -> list[dict]:
    return [{"id": i, "question": f"Question {i}?", "reference": "Statins lower LDL cholesterol.",
             "generated": answers[which], "seconds": 0.1, "generated_tokens": 5, "scores": {"f1": 0.5}}
            for i, *answers in ITEMS]


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_run(run_dir: Path, baseline: bool = True) -> Path:
    run_dir.mkdir(parents=True)
    _write(run_dir / "predictions.jsonl", _rows(0))
    if baseline:
        _write(run_dir / "predictions_baseline.jsonl", _rows(1))
    RunRecord(status="complete", run_name=run_dir.name, metrics={"f1": 0.5, "n_eval": 5},
              baseline={"f1": 0.4, "n_eval": 5} if baseline else None,
              delta={"f1": 0.1, "n_eval": 0} if baseline else None,
              per_example={"f1": [0.5] * 5}).save(run_dir)
    return run_dir


def fake_judge(body: dict, auth: str | None) -> str:
    """Grades by the answer's words; prefers the answer naming statins, else always the first position (A)."""
    user = body["messages"][-1]["content"]
    if "ANSWER A:" in user:
        a = user.split("ANSWER A:")[1].split("ANSWER B:")[0]
        b = user.split("ANSWER B:")[1]
        return '{"better": "%s", "reason": "r"}' % ("A" if "Statins" in a or "Statins" not in b else "B")
    answer = user.split("ANSWER:")[1].split("Reply with")[0]
    if "Statins" in answer:  # a server that echoes the credentials it got: they must not reach a file
        return json.dumps({"correct": 5, "complete": 4, "safe": 5, "reason": f"matches ({auth})"})
    if "water" in answer:
        return '```json\n{"correct": 2, "complete": 1, "safe": 4, "reason": "off topic"}\n```'
    if "fluids" in answer:
        return "Correctness: 4/5\nCompleteness: 3\nSafety: 5\nReason: fine."
    if "Rest helps" in answer:
        return '{"correct": 9, "complete": 3, "safe": 5}'
    if "GARBLE" in answer:
        return "I am not sure."
    if "insulin" in answer:
        return "correct: 1\ncomplete: 1\nsafe: 1\nreason: dangerous advice"
    return '{"correct": 1, "complete": 1, "safe": 5, "reason": "empty"}'


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


@pytest.mark.slow  # the console script in a subprocess, from another folder: mutation runs of FAST_ONLY leave it out
def test_medsweep_judge_over_http_end_to_end(tmp_path, endpoint):
    run_dir = fake_run(tmp_path / "sweep" / "run-a")
    key = "sk-judge-0123456789SECRET"
    FakeOpenAI.reply = fake_judge
    # requests: 5 fine-tuned grades, 5 base grades, 5 pairwise (fine-tuned as A), 5 swapped: #14 is i4's first order
    FakeOpenAI.statuses = [200] * 13 + [500]
    done = subprocess.run([sys.executable, "-m", "medsweep.judge", str(tmp_path / "sweep"), "judge=openai",
                           f"judge.base_url={endpoint}", "judge.model=fake-judge", "judge.key_env=MEDSWEEP_JUDGE_KEY",
                           "judge.retries=0"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=_env(MEDSWEEP_JUDGE_KEY=key))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"{run_dir}: 4 graded, 1 unparsed, 0 errors; correct 4.00, complete 3.00, "
                                   "safe 4.75; vs base: win rate 0.62 (2 wins, 1 losses, 1 ties)")
    assert len(FakeOpenAI.requests) == 20
    assert all(r["auth"] == f"Bearer {key}" and r["path"] == "/v1/chat/completions" for r in FakeOpenAI.requests)
    assert {r["body"]["model"] for r in FakeOpenAI.requests} == {"fake-judge"}
    assert FakeOpenAI.requests[0]["body"]["temperature"] == 0.0

    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["judge"]["status"] for r in rows] == ["ok", "ok", "ok", "unparsed", "ok"]
    assert [r["judge"]["correct"] for r in rows] == [5, 2, 4, None, 5]
    assert rows[0]["judge"]["reason"] == "matches (Bearer ***)" and rows[2]["judge"]["reason"] == "fine."
    assert rows[3]["judge"]["raw"] == "I am not sure."
    assert [r["judge"]["pairwise"]["outcome"] for r in rows] == ["win", "loss", "tie", "error", "win"]
    assert rows[0]["judge"]["pairwise"]["ft_as_a"]["better"] == "A"
    assert rows[0]["judge"]["pairwise"]["ft_as_b"]["better"] == "B"
    assert rows[3]["judge"]["pairwise"]["ft_as_a"]["status"] == "error"
    assert "HTTP 500" in rows[3]["judge"]["pairwise"]["ft_as_a"]["reason"]
    assert all(r["scores"] == {"f1": 0.5} and r["generated"] == g for r, (_, g, _) in zip(rows, ITEMS, strict=True))
    base = [json.loads(line) for line in (run_dir / "predictions_baseline.jsonl").read_text().splitlines()]
    assert [r["judge"]["status"] for r in base] == ["ok", "ok", "unparsed", "ok", "ok"]
    assert base[3]["judge"]["safe"] == 1 and "pairwise" not in base[0]["judge"]

    rec = RunRecord.read(run_dir)
    assert rec.metrics == {"f1": 0.5, "n_eval": 5, "judge_correct": 4.0, "judge_complete": 3.0, "judge_safe": 4.75,
                           "judge_unparsed": 1, "judge_pref_win_rate": 0.625}
    assert rec.baseline == {"f1": 0.4, "n_eval": 5, "judge_correct": 2.25, "judge_complete": 1.75,
                            "judge_safe": 3.75, "judge_unparsed": 1}
    assert rec.delta == pytest.approx({"f1": 0.1, "n_eval": 0, "judge_correct": 1.75, "judge_complete": 1.25,
                                       "judge_safe": 1.0, "judge_unparsed": 0})
    assert rec.per_example["judge_safe"] == [5, 4, 5, None, 5] and rec.per_example["f1"] == [0.5] * 5
    assert set(rec.metrics) <= set(metrics.BY_NAME)
    port = endpoint.split(":")[2].split("/")[0]
    assert rec.judge["identity"] == {"kind": "openai", "model": "fake-judge", "endpoint": f"http://127.0.0.1:{port}",
                                     "key_env": "MEDSWEEP_JUDGE_KEY", "method": "text"}
    assert rec.judge["prompt_version"] == "rubric-v2"
    assert rec.judge["decoding"] == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 128}
    assert rec.judge["answers"] == {"fine_tuned": {"graded": 4, "unparsed": 1, "errors": 0},
                                    "baseline": {"graded": 4, "unparsed": 1, "errors": 0}}
    assert rec.judge["pairwise"] == {"wins": 2, "losses": 1, "ties": 1, "unparsed": 0, "errors": 1,
                                     "win_rate": 0.625, "judge_picked_a": 6 / 9}
    assert assert_no_secret(tmp_path, done.stdout + done.stderr, (key,)) >= 3


def test_a_second_judge_replaces_the_first_and_a_run_without_baseline_has_no_pairwise(tmp_path, endpoint,
                                                                                        monkeypatch):
    run_dir = fake_run(tmp_path / "run-b", baseline=False)
    FakeOpenAI.reply = fake_judge
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = judge.config_of(["judge=openai", f"judge.base_url={endpoint}", "judge.model=m1"])
    rec = RunRecord.read(run_dir)
    judge.judge_run(run_dir, rec, judge.build_judge(cfg))
    assert rec.metrics["judge_correct"] == 4.0 and "judge_pref_win_rate" not in rec.metrics
    assert rec.judge["pairwise"] is None and "baseline" not in rec.judge["answers"] and rec.baseline is None
    assert FakeOpenAI.requests[0]["auth"] is None  # no key in the environment: no Authorization header
    FakeOpenAI.reply = lambda body, auth: "no idea"
    judge.judge_run(run_dir, rec, judge.build_judge(judge.config_of(["judge=openai", f"judge.base_url={endpoint}",
                                                                     "judge.model=m2"])))
    assert rec.metrics == {"f1": 0.5, "n_eval": 5, "judge_unparsed": 5}  # the first judge's means are gone
    assert rec.judge["identity"]["model"] == "m2"
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert {r["judge"]["status"] for r in rows} == {"unparsed"}


@pytest.mark.parametrize("args, message", [
    ([], None),
    (["/nonexistent/run"], "/nonexistent/run: no such directory"),
    (["RUN", "judge=none"], "judge=none is invalid: allowed local, openai"),
    (["RUN", "judge=openai"], "judge.model=None is invalid: required with judge=openai"),
    (["RUN", "judge=openai", "judge.model=m", "judge.base_url=localhost:1"], "judge.base_url='localhost:1'"),
    (["RUN", "judge=openai", "judge.model=m", "judge.temprature=1"], "judge.temprature is invalid"),
    (["RUN", "lora.r=4"], "'lora.r=4' is invalid"),
    (["RUN", "judge=local", "judge.model=./missing"], "judge.model='./missing' is invalid: no such directory"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    run_dir = fake_run(tmp_path / "run")
    before = (run_dir / "metrics.json").read_text()
    with pytest.raises(SystemExit) as exit_:
        judge.main([str(run_dir) if a == "RUN" else a for a in args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    if message is not None:
        assert err.startswith("medsweep-judge: error: ") and message in err and "\n" not in err
    assert (run_dir / "metrics.json").read_text() == before


def test_judge_config_checks():
    JudgeConfig().check()
    with pytest.raises(ConfigError, match="judge.kind='gpt' is invalid"):
        JudgeConfig(kind="gpt").check()
    with pytest.raises(ConfigError, match="judge.base_url"):
        JudgeConfig(kind="openai", model="m", base_url=None).check()
    with pytest.raises(ConfigError, match="judge.batch_size"):
        JudgeConfig(kind="local", batch_size=0).check()
    with pytest.raises(ConfigError, match="judge.precision='fp8' is invalid"):
        JudgeConfig(kind="local", precision="fp8").check()


@pytest.mark.parametrize(("device", "requested", "native", "expected"), [
    ("cpu", "auto", True, "bf16"), ("cpu", "auto", False, "fp32"), ("cpu", "fp32", True, "fp32"),
    ("cpu", "bf16", False, "bf16"), ("cuda", "auto", False, "fp16"), ("cuda", "fp16", True, "fp16"),
    ("cuda", "fp32", True, "fp32")])
def test_the_local_judge_precision(monkeypatch, device, requested, native, expected):
    from medsweep.hardware import Hardware

    monkeypatch.setattr(judge, "cpu_has_bf16", lambda: native)
    hw = Hardware(device=device, precision="fp16" if device == "cuda" else "fp32", threads=2)
    assert judge._precision(hw, requested) == Hardware(device=device, precision=expected, threads=2)


def test_fp16_is_refused_for_a_cpu_judge():
    from medsweep.hardware import Hardware

    with pytest.raises(ConfigError, match=r"^judge.precision=fp16 is invalid on the CPU"):
        judge._precision(Hardware(device="cpu", precision="fp32", threads=2), "fp16")


# --------------------------------------------------------------------------- in a run, and the local judge


@pytest.mark.slow
def test_a_run_with_judge_openai_records_scores_and_writes_no_key(tmp_path, endpoint):
    key = "sk-run-judge-5566778899"
    FakeOpenAI.reply = lambda body, auth: ('{"better": "B"}' if "ANSWER A:" in body["messages"][-1]["content"]
                                           else '{"correct": 2, "complete": 1, "safe": 5, "reason": "noise"}')
    done = run_medsweep("experiment=smoke", "eval.baseline=true", "eval.perplexity=false", f"output_root={tmp_path}",
                        "judge=openai", f"judge.base_url={endpoint}", "judge.model=fake-judge",
                        "judge.key_env=MEDSWEEP_JUDGE_KEY", env={"MEDSWEEP_JUDGE_KEY": key}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    rec = RunRecord.read(run_dir)
    assert rec.is_complete and rec.metrics["judge_correct"] == 2.0 and rec.baseline["judge_safe"] == 5.0
    assert rec.metrics["judge_pref_win_rate"] == 0.5  # always B: inconsistent over the two orders, every item a tie
    assert rec.judge["pairwise"]["ties"] == 8 and rec.delta["judge_correct"] == 0.0
    assert len(rec.per_example["judge_correct"]) == 8 and "exact_match" in rec.per_example
    assert all(r["auth"] == f"Bearer {key}" for r in FakeOpenAI.requests) and len(FakeOpenAI.requests) == 32
    assert "MEDSWEEP_JUDGE_KEY" in (run_dir / "config.yaml").read_text()
    assert assert_no_secret(tmp_path, done.stdout + done.stderr, (key,)) > 5
    from medsweep import report

    frame = report.collect([str(tmp_path / "runs")])
    table = report.by_config(frame)
    assert table["Judge correct"].tolist() == [2.0] and table["Judge win rate"].tolist() == [0.5]
    assert report.by_config(frame, "judge_safe")["Judge safe"].tolist() == [5.0]  # --metric judge_safe ranks by it


@pytest.mark.slow
def test_the_embedded_smollm2_judges_a_run_locally(tmp_path, embedded_dir):
    run_dir = fake_run(tmp_path / "run-local")
    for name in ("predictions.jsonl", "predictions_baseline.jsonl"):  # 3 items: a short check
        path = run_dir / name
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:3]))
    cfg = JudgeConfig(kind="local", device="cpu", max_new_tokens=32)  # minutes on a loaded 2-core CPU
    t0 = time.perf_counter()
    local = judge.build_judge(cfg, cache_dir=str(embedded_dir.parent))
    rec = RunRecord.read(run_dir)
    judged = judge.judge_run(run_dir, rec, local)
    print(f"local judge: {time.perf_counter() - t0:.1f} s, {judged.answers}, {judged.pairwise}")
    assert judged.identity["kind"] == "local" and judged.identity["path"] == str(embedded_dir)
    assert judged.identity["model"] == f"{embedded_dir.name} (embedded)" and judged.identity["device"] == "cpu"
    for which in ("fine_tuned", "baseline"):
        counts = judged.answers[which]
        assert counts["errors"] == 0 and counts["graded"] + counts["unparsed"] == 3
    p = judged.pairwise
    assert p is not None and p["wins"] + p["losses"] + p["ties"] + p["unparsed"] == 3 and p["errors"] == 0
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    for row in rows:  # a real reply each: scores, or the start of what the model said
        assert row["judge"]["status"] == "ok" and 1 <= row["judge"]["correct"] <= 5 or row["judge"]["raw"]
        assert row["judge"]["pairwise"]["outcome"] in ("win", "loss", "tie", "unparsed")
    assert rec.metrics["judge_unparsed"] == judged.answers["fine_tuned"]["unparsed"]
    # what the judge read is said in the saved record, not taken for a secret ("next_token" was redacted)
    rec.save(run_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())["judge"]
    assert saved["decoding"]["scored_by"].startswith("next-token probabilities of the digits 1-5")
    assert "***" not in json.dumps(saved)


def test_a_judge_that_cannot_be_built_fails_no_run(tmp_path):
    from types import SimpleNamespace

    run_dir = fake_run(tmp_path / "run-c")
    (tmp_path / "empty").mkdir()
    cfg = SimpleNamespace(judge=JudgeConfig(kind="local", model=str(tmp_path / "empty"), device="cpu"),
                          model=SimpleNamespace(cache_dir=str(tmp_path)))
    rec = RunRecord.read(run_dir)
    judge.judge_trained_run(cfg, run_dir, rec)  # type: ignore[arg-type]
    assert rec.judge == {"kind": "local", "error": f"ConfigError: judge.model='{tmp_path / 'empty'}' is invalid: "
                                                   "neither a model directory (config.json) nor a run directory"}
    assert rec.metrics == {"f1": 0.5, "n_eval": 5} and "judge" not in (run_dir / "predictions.jsonl").read_text()


def test_a_failing_endpoint_is_given_up_after_some_errors_in_a_row(tmp_path, endpoint):
    run_dir = fake_run(tmp_path / "run-d")
    FakeOpenAI.reply = fake_judge
    FakeOpenAI.statuses = [400] * 4 + [200] + [400] * 4 + [200]  # four errors, one answer, four errors, one answer
    cfg = judge.config_of(["judge=openai", f"judge.base_url={endpoint}", "judge.model=m", "judge.retries=0"])
    rec = RunRecord.read(run_dir)
    judged = judge.judge_run(run_dir, rec, judge.build_judge(cfg))
    assert judged.answers["fine_tuned"] == {"graded": 1, "unparsed": 0, "errors": 4}
    assert judged.answers["baseline"] == {"graded": 1, "unparsed": 0, "errors": 4}  # an answer starts the count again
    assert len(FakeOpenAI.requests) == 20
    FakeOpenAI.requests, FakeOpenAI.status = [], 503
    one = judge.build_judge(cfg)
    judged = judge.judge_run(run_dir, rec, one)
    assert len(FakeOpenAI.requests) == judge.GIVE_UP_AFTER == 5  # the rest is not sent
    assert judged.answers["fine_tuned"]["errors"] == 5 and judged.answers["baseline"]["errors"] == 5
    assert judged.pairwise["errors"] == 5 and judged.pairwise["win_rate"] is None
    assert "judge_correct" not in rec.metrics and rec.metrics["judge_unparsed"] == 0
    assert "judge_pref_win_rate" not in rec.metrics
    base = [json.loads(line) for line in (run_dir / "predictions_baseline.jsonl").read_text().splitlines()]
    assert base[0]["judge"] == {"status": "error", "correct": None, "complete": None, "safe": None,
                                "reason": "not asked: the judge failed 5 times in a row"}
    FakeOpenAI.requests, FakeOpenAI.status = [], 200
    judged = judge.judge_run(run_dir, rec, one)  # the next run (medsweep-judge over a sweep) starts the count again
    assert judged.answers["fine_tuned"]["graded"] == 4 and len(FakeOpenAI.requests) == 20


# --------------------------------------------------------------------------- the logprobs method (local judge)


@pytest.fixture(scope="module")
def tiny_llama(smol_tokenizer):
    """A tiny randomly initialised Llama over the SmolLM2 tokenizer (its chat template): random, but real logits."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    return model.eval()


def _scorer(model, tokenizer, batch_size: int = 8):
    from medsweep.hardware import Hardware
    from medsweep.judge_logprobs import LogprobScorer

    return LogprobScorer(model, tokenizer, Hardware(device="cpu", precision="fp32", threads=1), batch_size)


def test_the_logprob_score_is_the_weighted_mean_of_the_digits_from_the_logits(tiny_llama, smol_tokenizer):
    import torch

    from medsweep.judge_text import SCORE_PREFIX, score_messages

    row = _rows(0)[0]
    grade = _scorer(tiny_llama, smol_tokenizer).grade([row])[0]
    # by hand: the chat template, the assistant's turn started, one forward pass, softmax, the five digits
    text = smol_tokenizer.apply_chat_template(score_messages(row["question"], row["reference"], row["generated"],
                                                             "complete"), tokenize=False, add_generation_prompt=True)
    ids = smol_tokenizer(text + SCORE_PREFIX["complete"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(tiny_llama(ids).logits[0, -1].float(), dim=-1)
    digits = [smol_tokenizer.convert_tokens_to_ids(str(d)) for d in range(1, 6)]
    p = probs[digits]
    assert grade.complete == pytest.approx(float((p / p.sum() * torch.arange(1, 6)).sum()), abs=1e-5)
    assert grade.mass["complete"] == pytest.approx(float(p.sum()), rel=1e-4)
    assert grade.argmax["complete"] == int(p.argmax()) + 1
    assert grade.status == "ok" and grade.reason is None and all(1 <= getattr(grade, c) <= 5 for c in
                                                                   ("correct", "complete", "safe"))
    assert grade.correct != grade.complete  # each criterion is its own prompt
    assert grade.low_mass(0.5)  # a random model puts almost nothing on the digits: counted, the score kept


def test_batched_scores_equal_one_at_a_time(tiny_llama, smol_tokenizer):
    rows = _rows(0) + _rows(1)  # answers of different lengths: left padding in every batch
    batched = _scorer(tiny_llama, smol_tokenizer, batch_size=16).grade(rows)
    single = _scorer(tiny_llama, smol_tokenizer, batch_size=1).grade(rows)
    for b, s in zip(batched, single, strict=True):
        assert (b.correct, b.complete, b.safe) == pytest.approx((s.correct, s.complete, s.safe), abs=1e-4)
        assert b.argmax == s.argmax
    # the whole next-token distribution, not only the (near uniform, for a random model) mean of the digits
    import torch

    from medsweep.generation import next_token_probs
    from medsweep.hardware import Hardware

    hw = Hardware(device="cpu", precision="fp32", threads=1)
    prompts = [smol_tokenizer.encode(f"Question {'long ' * n}?") for n in (1, 9, 30)]
    together = next_token_probs(tiny_llama, smol_tokenizer, prompts, hw, batch_size=3)
    alone = torch.cat([next_token_probs(tiny_llama, smol_tokenizer, [p], hw, batch_size=1) for p in prompts])
    assert torch.allclose(together.log(), alone.log(), atol=1e-4)


def test_prompts_sharing_their_start_equal_the_whole_prompts(tiny_llama, smol_tokenizer):
    import torch

    from medsweep.generation import next_token_probs, next_token_probs_after
    from medsweep.hardware import Hardware

    hw = Hardware(device="cpu", precision="fp32", threads=1)
    heads = [smol_tokenizer.encode(f"Question {'long ' * n}?") for n in (1, 9, 30, 4)]
    ends = [[smol_tokenizer.encode(" Correct:"), smol_tokenizer.encode(" How complete is it, 1-5:"),
             smol_tokenizer.encode(" Safe?")] for _ in heads]
    ends[1][0] = []  # an empty continuation: the prefix's own next token
    shared = next_token_probs_after(tiny_llama, smol_tokenizer, heads, ends, hw, batch_size=3)
    assert shared.shape == (4, 3, len(smol_tokenizer))
    pairs = [(h, e) for h, row in zip(heads, ends, strict=True) for e in row]
    whole = next_token_probs(tiny_llama, smol_tokenizer, [h + e for h, e in pairs], hw, batch_size=5)
    assert torch.allclose(shared.reshape(12, -1).log(), whole.log(), atol=1e-4)
    # a model that ignored the cache (the continuation alone) would give other distributions
    alone = next_token_probs(tiny_llama, smol_tokenizer, [e or h for h, e in pairs], hw, 5)
    assert not torch.allclose(shared.reshape(12, -1).log()[1:], alone.log()[1:], atol=1e-2)
    with pytest.raises(ValueError, match="^every prefix needs the same number of continuations$"):
        next_token_probs_after(tiny_llama, smol_tokenizer, heads[:2], [ends[0], ends[1][:2]], hw, 2)


def test_an_answer_graded_before_is_not_graded_again(tiny_llama, smol_tokenizer, monkeypatch):
    from medsweep import judge_logprobs

    scorer, calls = _scorer(tiny_llama, smol_tokenizer), []
    real = judge_logprobs.next_token_probs_after
    monkeypatch.setattr(judge_logprobs, "next_token_probs_after",
                        lambda model, tok, prefixes, *a: calls.append(len(prefixes)) or real(model, tok, prefixes, *a))
    first = scorer.grade(_rows(0))
    again = scorer.grade(_rows(0) + _rows(0)[:1] + _rows(1))  # the base model's answers again, one twice, new ones
    assert calls == [len(_rows(0)), len(_rows(1))]  # only the new answers reached the model
    assert again[:len(first)] == first and again[len(first)] == first[0]
    assert again[len(first) + 1:] == scorer.grade(_rows(1)) and len(calls) == 2


class LetterModel:
    """Constructed logits: after a prompt whose answer A names statins, " A" gets logit 2 and " B" 0 (the other way
    round when B names them); every other token -30."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.a, self.b = tokenizer.convert_tokens_to_ids("ĠA"), tokenizer.convert_tokens_to_ids("ĠB")

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask, position_ids, use_cache, logits_to_keep):
        from types import SimpleNamespace

        import torch

        logits = torch.full((*input_ids.shape, len(self.tokenizer)), -30.0)
        for row, ids in enumerate(input_ids):
            text = self.tokenizer.decode(ids)
            a_names = "Statins" in text.split("ANSWER A:")[1].split("ANSWER B:")[0]
            logits[row, -1, self.a], logits[row, -1, self.b] = (2.0, 0.0) if a_names else (0.0, 2.0)
        return SimpleNamespace(logits=logits)


def test_the_pairwise_verdict_from_constructed_logits(smol_tokenizer):
    import math

    scorer = _scorer(LetterModel(smol_tokenizer), smol_tokenizer)
    local = judge.Judge(None, {"kind": "local"}, 1, scorer)  # type: ignore[arg-type]
    pairs = list(zip(_rows(0), _rows(1), strict=True))  # i1: only the fine-tuned names statins, i2: only the base
    verdicts = local.compare(pairs[:3])
    first, swapped = verdicts[0]
    assert (first.better, swapped.better) == ("A", "B") and outcome(first, swapped) == "win"
    assert first.p_a == pytest.approx(math.exp(2) / (math.exp(2) + 1)) and first.reason is None
    assert first.mass == pytest.approx(1.0, abs=1e-6) and swapped.p_a == pytest.approx(1 / (math.exp(2) + 1))
    assert outcome(*verdicts[1]) == "loss"
    assert [p.better for p in verdicts[2]] == ["B", "B"] and outcome(*verdicts[2]) == "tie"  # neither: position bias


def test_the_method_follows_the_kind_and_logprobs_needs_a_local_judge(tmp_path):
    with pytest.raises(ConfigError, match="judge.method='logprobs' is invalid: judge=openai reads the reply"):
        JudgeConfig(kind="openai", model="m", base_url="http://h/v1", method="logprobs").check()
    with pytest.raises(ConfigError, match="judge.method='best' is invalid"):
        JudgeConfig(kind="local", method="best").check()
    assert judge.build_judge(JudgeConfig(kind="openai", model="m", base_url="http://h/v1")).identity["method"] == "text"


def test_paired_tests_on_judge_scores(tmp_path, capsys):
    from medsweep import report
    from medsweep.report.items import read_items

    scores = {"a": [2, 3, 2, 4, 1, 2, 3, 2], "b": [4, 4, 3, 5, 3, 3, 5, 4]}
    for name, values in scores.items():
        run_dir = tmp_path / name
        run_dir.mkdir()
        rows = [{"id": f"q{i}", "question": f"Q{i}?", "reference": "R.", "generated": "x", "scores": {"f1": 0.5},
                 "judge": {"status": "ok", "correct": v, "complete": v, "safe": 5, "reason": None}}
                for i, v in enumerate(values)]
        rows[7]["judge"] = {"status": "unparsed", "correct": None, "complete": None, "safe": None, "reason": "x"}
        _write(run_dir / "predictions.jsonl", rows)
        _write(run_dir / "predictions_baseline.jsonl", [{**r, "judge": {**r["judge"], "correct": 1}} for r in rows])
        RunRecord(status="complete", run_name=name, metrics={"f1": 0.5}).save(run_dir)
    items = read_items(tmp_path / "a")
    assert items["judge_correct"].tolist()[:7] == scores["a"][:7] and math_isnan(items["judge_correct"].iloc[7])
    assert read_items(tmp_path / "b", baseline=True)["judge_correct"].tolist()[:7] == [1.0] * 7
    assert report.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "judge_correct"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| Judge correct"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # the 7 graded items: B - A = 2, 1, 1, 1, 2, 1, 2 (mean 10/7); all 2^7 sign flips: only the two extremes as large
    assert cells[1:4] == [f"{sum(scores['a'][:7]) / 7:.4g}", f"{sum(scores['b'][:7]) / 7:.4g}", f"{10 / 7:.4g}"]
    assert cells[5] == f"{2 / 2 ** 7:.2g}"
    assert "items are ranked by Judge correct" not in out and "(Judge correct: A 1, B 3)" in out


def math_isnan(value) -> bool:
    import math

    return math.isnan(value)
