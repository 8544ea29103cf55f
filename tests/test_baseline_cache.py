"""The base model's evaluation cache (medsweep/baseline.py) on the tiny random model: every input of the result is in
the key and nothing else is; a second run reuses the entry and its run directory looks like the first's; racing jobs
leave one sound entry; a damaged entry is evaluated again; eval.cache_baseline=false always evaluates."""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from medsweep import baseline, config, evaluate, models
from medsweep.hardware import Hardware
from medsweep.runrecord import RunRecord
from tests.conftest import RECORDS

CPU = Hardware("cpu", "fp32", 1)
TIMING = {"seconds_per_answer", "latency_p50_s", "latency_p95_s", "generated_tokens_per_s"}


def _scores(result: dict) -> dict:
    """A baseline's metrics without its timings (two evaluations' differ)."""
    return {k: v for k, v in result.items() if k not in TIMING}


@pytest.fixture(scope="module")
def tiny(embedded_dir):
    """(RunConfig of experiment=smoke, tokenizer, tiny random model): loaded once for the module."""
    from hydra import compose, initialize_config_dir

    from medsweep.run import config_schema  # noqa: F401  registers schemas and resolvers
    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        run = config.typed(compose("config", overrides=["experiment=smoke", "eval.max_new_tokens=4"]))
    tokenizer = models.load_tokenizer(run.model)
    model, _ = models.load_model(run.model, tokenizer, CPU, seed=run.train.seed)
    return run, tokenizer, model


@pytest.fixture
def cfg(tiny, tmp_path):
    """The module's config with model.cache_dir in this test's directory."""
    run = tiny[0]
    return replace(run, model=replace(run.model, cache_dir=str(tmp_path / "cache")))


@pytest.fixture
def evaluations(monkeypatch):
    """Counts the base model's evaluations (the real ones, through evaluate.evaluate)."""
    calls = []
    real = evaluate.evaluate

    def counted(*args, **kwargs):
        calls.append(time.monotonic())
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate", counted)
    return calls


def _with(run, **groups):
    """`run` with fields of its groups replaced: _with(run, eval={"batch_size": 2})."""
    return replace(run, **{g: replace(getattr(run, g), **values) for g, values in groups.items()})


def _key(tiny, run=None, records=RECORDS, tokenizer=None, hw=CPU):
    base, tok, model = tiny
    return baseline.digest(baseline.inputs(model, tokenizer or tok, records, run or base, hw))


def _entries(cfg) -> list[Path]:
    return sorted((Path(cfg.model.cache_dir) / baseline.DIR).iterdir())


def test_every_input_of_the_result_is_in_the_key(tiny):
    run, tokenizer, _ = tiny
    base = _key(tiny)
    sampled = _with(run, eval={"decoding": "sample"})
    edited = [dict(r) for r in RECORDS]
    edited[2]["answer"] += " See a doctor."
    other_template = copy.deepcopy(tokenizer)
    other_template.chat_template = tokenizer.chat_template.replace("<|im_start|>", "<|im_start|> ")
    variants = {
        "model name": _key(tiny, _with(run, model={"name": "other"})),
        "random weights": _key(tiny, _with(run, model={"random_config": {**run.model.random_config,
                                                                         "intermediate_size": 96}})),
        "random seed": _key(tiny, _with(run, train={"seed": 1})),
        "precision": _key(tiny, hw=Hardware("cpu", "bf16", 1)),
        "tokenizer": _key(tiny, tokenizer=other_template),
        "answer text": _key(tiny, records=edited),
        "question order": _key(tiny, records=RECORDS[::-1]),
        "fewer questions": _key(tiny, records=RECORDS[:-1]),
        "instruction": _key(tiny, _with(run, data={"instruction": "Answer briefly."})),
        "prompt format": _key(tiny, _with(run, model={"prompt_format": "alpaca"})),
        "system turn": _key(tiny, _with(run, model={"system_prompt": False})),
        "max_new_tokens": _key(tiny, _with(run, eval={"max_new_tokens": 5})),
        "batch size": _key(tiny, _with(run, eval={"batch_size": 2})),
        "decoding": _key(tiny, sampled),
        "temperature": _key(tiny, _with(sampled, eval={"temperature": 0.3})),
        "top_p": _key(tiny, _with(sampled, eval={"top_p": 0.5})),
        "no perplexity": _key(tiny, _with(run, eval={"perplexity": False})),
        "max_seq_length": _key(tiny, _with(run, train={"max_seq_length": 64})),
        "fast kernels": _key(tiny, _with(run, train={"fast_kernels": False})),
        "end of turn": _key(tiny, _with(run, model={"end_of_turn": None})),
    }
    assert base not in variants.values(), [k for k, v in variants.items() if v == base]
    assert len(set(variants.values())) == len(variants)


def test_what_does_not_change_the_result_is_not_in_the_key(tiny):
    run, _, _ = tiny
    same = [
        _with(run, lora={"r": 4, "alpha": 32, "dropout": 0.2}),
        _with(run, train={"lr": 0.5, "max_steps": 99, "batch_size": 1, "grad_accum": 3, "epochs": 3.0,
                          "save_steps": 7, "cache_tokenized": False}),
        _with(run, eval={"baseline": False, "every_epoch": True, "cache_baseline": False, "num_examples": 3,
                         "temperature": 0.1, "top_p": 0.2}),  # greedy: no sampling setting applies
        _with(run, model={"cache_dir": "/elsewhere", "lora_target_modules": ["q_proj"], "params_b": 9.0}),
        _with(run, profile={"time_limit_min": 5, "memory_gb": 1}),
        replace(run, output_root="/o", sweep_name="s", attempt=3, resume=False),
    ]
    assert {_key(tiny, r) for r in same} == {_key(tiny)}
    without_perplexity = _with(run, eval={"perplexity": False})  # then the references' truncation does not matter
    assert _key(tiny, _with(without_perplexity, train={"max_seq_length": 64})) == _key(tiny, without_perplexity)


def test_the_device_and_quantization_are_in_the_key(tiny, monkeypatch):
    run, _, _ = tiny
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")
    hub = _with(run, model={"source": "hub", "hub_id": "org/model", "hub_id_4bit": "org/model-4bit"})
    gpu = Hardware("cuda", "bf16", 1)
    keys = {_key(tiny, hub), _key(tiny, hub, hw=gpu), _key(tiny, hub, hw=Hardware("cuda", "fp16", 1)),
            _key(tiny, _with(hub, model={"load_in_4bit": True}), hw=gpu),
            _key(tiny, _with(hub, model={"load_in_4bit": True, "hub_id_4bit": None}), hw=gpu)}
    assert len(keys) == 5
    assert _key(tiny, _with(hub, model={"load_in_4bit": "auto"}), hw=gpu) == \
        _key(tiny, _with(hub, model={"load_in_4bit": True}), hw=gpu)  # what was loaded, not how it was asked


def test_the_seed_is_in_the_key_only_where_it_decides_the_result(tiny):
    """A loaded model's greedy answers do not depend on train.seed; a random model's weights and sampling do."""
    run, _, _ = tiny
    hub = _with(run, model={"source": "hub", "hub_id": "org/model"})
    assert _key(tiny, hub) == _key(tiny, _with(hub, train={"seed": 5}))
    sampled = _with(hub, eval={"decoding": "sample"})
    assert _key(tiny, sampled) != _key(tiny, _with(sampled, train={"seed": 5}))


def test_a_local_model_directory_is_fingerprinted_by_its_files(tiny, tmp_path):
    run, _, _ = tiny
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text('{"hidden_size": 64}')
    (local / "model.safetensors").write_bytes(b"\0" * (baseline._FILE_HASH_LIMIT + 1))
    hub = _with(run, model={"source": "hub", "hub_id": str(local)})
    first = _key(tiny, hub)
    assert _key(tiny, hub) == first
    (local / "config.json").write_text('{"hidden_size": 65}')
    second = _key(tiny, hub)
    os.utime(local / "model.safetensors", ns=(1, 1))  # rewritten weights: a new mtime
    assert len({first, second, _key(tiny, hub)}) == 3


def test_a_code_change_changes_the_key(tiny, tmp_path, monkeypatch):
    source = tmp_path / "fake_module.py"
    source.write_text("X = 1\n")
    monkeypatch.setattr(baseline, "CODE", (*baseline.CODE, types.SimpleNamespace(__file__=str(source))))
    before = _key(tiny)
    source.write_text("X = 2\n")
    assert _key(tiny) != before


def test_a_second_run_reuses_the_first_runs_evaluation(tiny, cfg, tmp_path, evaluations):
    _, tokenizer, model = tiny
    first = baseline.cached_baseline(model, tokenizer, RECORDS, cfg, CPU, tmp_path / "run-a")
    second = baseline.cached_baseline(model, tokenizer, RECORDS, cfg, CPU, tmp_path / "run-b")
    assert len(evaluations) == 1
    assert first[0] == second[0] and first[1] == second[1]
    assert first[0]["n_eval"] == len(RECORDS) and "perplexity" in first[0]
    (entry,) = [p for p in _entries(cfg) if not p.name.endswith(".lock")]
    assert first[2].reused is False and first[2].entry == str(entry) and first[2].computed_by.endswith("run-a")
    assert second[2].reused is True and second[2].entry == str(entry) and second[2].computed_by.endswith("run-a")
    assert second[2].computed_at == first[2].computed_at
    assert sorted(p.name for p in entry.iterdir()) == ["manifest.json", "metrics.json", "predictions.jsonl"]


def test_a_run_that_reuses_the_baseline_is_the_run_that_computed_it(compose, tmp_path, embedded_dir):
    """End to end (run.train_eval): the second run reads the entry, says so, and its directory holds the same files,
    the same baseline, predictions_baseline.jsonl and deltas, and the same training (the random state that
    initializes LoRA is not moved by the baseline either way)."""
    from medsweep import run

    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / models.EMBEDDED_CACHE_NAME).symlink_to(embedded_dir)  # no second dequantization of the GGUF
    cfg = compose(["experiment=smoke", "train.max_steps=2", "train.save_steps=100", "eval.num_examples=4",
                   "eval.max_new_tokens=4", "eval.baseline=true", f"model.cache_dir={cache_dir}"])
    recs = [RunRecord.from_dict(run.train_eval(cfg, tmp_path / name)) for name in ("a", "b")]
    a, b = (tmp_path / "a", tmp_path / "b")
    assert recs[0].baseline_source["reused"] is False and recs[1].baseline_source["reused"] is True
    assert recs[1].baseline_source["computed_by"] == str(a) and recs[1].baseline_source["entry"] \
        == recs[0].baseline_source["entry"]
    assert recs[0].baseline == recs[1].baseline
    assert (a / "predictions_baseline.jsonl").read_bytes() == (b / "predictions_baseline.jsonl").read_bytes()
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert [h["loss"] for h in recs[0].train["log_history"]] == [h["loss"] for h in recs[1].train["log_history"]]
    assert _scores(recs[0].metrics) == _scores(recs[1].metrics)
    saved = json.loads((b / "metrics.json").read_text())
    assert saved["baseline_source"]["reused"] is True and set(saved["delta"]) == set(recs[0].delta)


def _race(model, tokenizer, cfg, tmp_path) -> dict:
    """Two jobs "a" and "b" asking for the same baseline at the same moment; their cached_baseline results."""
    start = threading.Barrier(2)
    results = {}

    def job(name):
        start.wait()
        results[name] = baseline.cached_baseline(model, tokenizer, RECORDS, cfg, CPU, tmp_path / name)

    threads = [threading.Thread(target=job, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_racing_jobs_evaluate_once_and_leave_one_entry(tiny, cfg, tmp_path, evaluations):
    _, tokenizer, model = tiny
    results = _race(model, tokenizer, cfg, tmp_path)
    assert len(evaluations) == 1  # the other job waited on the lock and read the entry
    assert results["a"][:2] == results["b"][:2]
    assert sorted(r[2].reused for r in results.values()) == [False, True]
    assert [p.name for p in _entries(cfg) if not p.name.endswith(".lock")] == [Path(results["a"][2].entry).name]
    assert not [p for p in _entries(cfg) if p.name.endswith((".tmp", ".damaged"))]


def test_without_a_working_lock_the_first_complete_entry_wins(tiny, cfg, tmp_path, evaluations, monkeypatch):
    """A file system without flock (ENOLCK): both jobs evaluate, one rename wins, the other copy is discarded."""
    _, tokenizer, model = tiny

    def no_lock(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(baseline.fcntl, "flock", no_lock)
    results = _race(model, tokenizer, cfg, tmp_path)
    assert len(evaluations) == 2
    assert _scores(results["a"][0]) == _scores(results["b"][0]) and results["a"][1][0]["generated"] == \
        results["b"][1][0]["generated"]
    entries = _entries(cfg)
    assert len([p for p in entries if not p.name.endswith(".lock")]) == 1
    assert not [p for p in entries if p.name.endswith((".tmp", ".damaged"))]
    again = baseline.cached_baseline(model, tokenizer, RECORDS, cfg, CPU, tmp_path / "c")
    assert again[2].reused is True and len(evaluations) == 2


@pytest.mark.parametrize("damage", ["truncated predictions", "bad checksum", "no manifest", "manifest not json",
                                    "other key"])
def test_a_damaged_entry_is_evaluated_again_and_replaced(tiny, cfg, tmp_path, evaluations, caplog, damage):
    _, tokenizer, model = tiny
    first = baseline.cached_baseline(model, tokenizer, RECORDS, cfg, CPU, tmp_path / "a")
    entry = Path(first[2].entry)
    manifest = json.loads((entry / "manifest.json").read_text())
    if damage == "truncated predictions":
        text = (entry / "predictions.jsonl").read_text()
        (entry / "predictions.jsonl").write_text(text[: len(text) // 2])
    elif damage == "bad checksum":
        manifest["files"]["metrics.json"] = "0" * 64
        (entry / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "no manifest":
        (entry / "manifest.json").unlink()
    elif damage == "manifest not json":
        (entry / "manifest.json").write_text("{")
    else:
        manifest["key"] = "f" * 32
        (entry / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="medsweep.baseline"):
        second = baseline.cached_baseline(model, tokenizer, RECORDS, cfg, CPU, tmp_path / "b")
    assert len(evaluations) == 2 and second[2].reused is False and second[2].computed_by.endswith("b")
    assert any("damaged or incomplete" in m for m in caplog.messages)
    assert _scores(second[0]) == _scores(first[0])
    third = baseline.cached_baseline(model, tokenizer, RECORDS, cfg, CPU, tmp_path / "c")
    assert third[2].reused is True and third[2].computed_by.endswith("b") and len(evaluations) == 2
    assert not [p for p in _entries(cfg) if p.name.endswith((".tmp", ".damaged"))]


def test_cache_baseline_false_always_evaluates(tiny, cfg, tmp_path, evaluations):
    _, tokenizer, model = tiny
    off = _with(cfg, eval={"cache_baseline": False})
    sources = [baseline.cached_baseline(model, tokenizer, RECORDS, off, CPU, tmp_path / n)[2] for n in "ab"]
    assert len(evaluations) == 2 and [s.reused for s in sources] == [False, False]
    assert [s.entry for s in sources] == [None, None]
    assert not (Path(cfg.model.cache_dir) / baseline.DIR).exists()


def test_an_unwritable_cache_still_gives_the_baseline(tiny, cfg, tmp_path, evaluations, monkeypatch):
    _, tokenizer, model = tiny

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(baseline.tempfile, "mkdtemp", full)
    result, rows, source = baseline.cached_baseline(model, tokenizer, RECORDS, cfg, CPU, tmp_path / "a")
    assert len(rows) == len(RECORDS) and source.reused is False and source.entry is None
    assert not [p for p in _entries(cfg) if not p.name.endswith(".lock")]


def test_a_sampled_baseline_leaves_the_random_state_alone(tiny, cfg, tmp_path):
    """What initializes LoRA after the baseline draws the same numbers whether the baseline was computed or read."""
    _, tokenizer, model = tiny
    sampled = _with(cfg, eval={"decoding": "sample"})
    torch.manual_seed(0)
    before = torch.get_rng_state()
    baseline.cached_baseline(model, tokenizer, RECORDS, sampled, CPU, tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), before)


def test_records_without_a_baseline_source_still_load_and_tabulate(tmp_path):
    old = {"status": "complete", "run_name": "old", "metrics": {"f1": 0.5}, "baseline": {"f1": 0.25},
           "delta": {"f1": 0.25}}
    rec = RunRecord.from_dict(old)
    assert rec.baseline_source is None and rec.to_dict() == old
    assert rec.row(tmp_path)["baseline.f1"] == 0.25
