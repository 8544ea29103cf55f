"""medsweep.run, the train-eval recipe. End to end through the real entrypoint (`python -m medsweep` in a subprocess,
as a user runs it) on tiny_random and real MedQuAD pairs: the record holds every metric, the predictions and the
adapter are written, a re-run of a complete config is skipped, evaluation every epoch reuses the last epoch's, a
single run's plan writes nothing; and in-process (run.train_eval): a complete record is never overwritten."""

import json
import re

import pytest

from medsweep import metrics, run, semantic
from tests.conftest import MEDQUAD_JSONL, need_shared_data, run_medsweep

METRICS = {"exact_match", "f1", "bleu", "rouge1", "rouge2", "rougeL", "perplexity", "seconds_per_answer",
           "latency_p50_s", "latency_p95_s", "generated_tokens_per_s", "n_eval"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, embedded_dir):
    need_shared_data()
    out = tmp_path_factory.mktemp("results")
    overrides = ["experiment=smoke", "data=local", f"data.path={MEDQUAD_JSONL}", f"output_root={out}",
                 "eval.baseline=true"]
    proc = run_medsweep(*overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (out / "runs").iterdir()
    return run_dir, overrides, proc


def test_record_holds_every_metric(smoke_run):
    run_dir, _, proc = smoke_run
    rec = json.loads((run_dir / "metrics.json").read_text())
    assert rec["status"] == "complete" and rec["error"] is None
    assert METRICS <= set(rec["metrics"]) and METRICS <= set(rec["baseline"])
    assert set(rec["delta"]) >= METRICS - {"n_eval"}
    assert rec["metrics"]["n_eval"] == 8
    assert rec["train"]["trainable_params"] > 0 and rec["train"]["peak_memory_mb"] > 0
    assert rec["train"]["train_time_s"] > 0 and rec["train"]["steps"] == 6
    assert rec["env"]["packages"]["torch"] == "2.13.0+cpu" or rec["env"]["packages"]["torch"].startswith("2.13.0")
    assert rec["axes"]["model"] == "tiny_random" and rec["data"]["eval"] == 8
    assert "fine-tuned" in proc.stdout  # the summary table
    # what the numbers mean, as this installation computes them (the run is a subprocess of the same environment)
    assert rec["metric_definitions"] == metrics.definitions().to_dict()
    assert rec["metric_definitions"]["semantic"] is None and "semantic" not in rec["metrics"]
    assert "semantic" not in rec["per_example"] and "semantic" not in proc.stdout  # eval.semantic is off


def test_training_loss_went_down(smoke_run):
    run_dir, _, _ = smoke_run
    rec = json.loads((run_dir / "metrics.json").read_text())
    losses = [h["loss"] for h in rec["train"]["log_history"]]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.05, losses


def test_predictions_match_eval_size(smoke_run):
    run_dir, _, _ = smoke_run
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    assert all({"question", "reference", "generated", "scores"} <= set(r) for r in rows)
    assert all(set(r["scores"]) >= {"exact_match", "f1", "bleu", "rougeL"} for r in rows)
    assert (run_dir / "predictions_baseline.jsonl").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()


def test_rerun_of_a_complete_config_is_skipped(smoke_run):
    run_dir, overrides, _ = smoke_run
    before = (run_dir / "metrics.json").read_bytes()
    proc = run_medsweep(*overrides)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already complete" in proc.stdout + proc.stderr
    assert (run_dir / "metrics.json").read_bytes() == before


def test_every_epoch_evaluation_reuses_the_last_epoch(tmp_path):
    """eval.every_epoch: one result per epoch; the final metrics are the last epoch's (same weights), and the
    answers are generated once per epoch, not once more at the end."""
    need_shared_data()
    proc = run_medsweep("experiment=smoke", "data=local", f"data.path={MEDQUAD_JSONL}", f"output_root={tmp_path}",
                        "train.max_steps=-1", "train.epochs=2", "train.train_size=8", "eval.every_epoch=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    rec = json.loads((run_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in rec["epochs"]] == [1.0, 2.0]
    assert rec["epochs"][-1]["step"] == rec["train"]["steps"] == 4
    assert rec["epochs"][-1]["metrics"] == rec["metrics"]
    log = (run_dir / "medsweep.log").read_text()
    assert "evaluating the fine-tuned model" not in log and "the last epoch's" in log
    assert len((run_dir / "predictions.jsonl").read_text().splitlines()) == 8
    assert rec["metric_definitions"]["bleu"] == metrics.definitions().bleu  # the epochs' and final numbers' source


@pytest.mark.skipif(not semantic.available(), reason="wordllama not installed (medsweep[semantic])")
def test_semantic_scores_every_answer_and_names_its_model(tmp_path):
    """eval.semantic=true: a cosine per answer in the prediction files, their mean as `semantic` for the fine-tuned
    and the base model, the per-example list for the paired tests, and the embedding model in the definitions."""
    need_shared_data()
    proc = run_medsweep("experiment=smoke", "data=local", f"data.path={MEDQUAD_JSONL}", f"output_root={tmp_path}",
                        "eval.semantic=true", "eval.baseline=true", "eval.perplexity=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    rec = json.loads((run_dir / "metrics.json").read_text())
    assert rec["metric_definitions"] == metrics.definitions(semantic=True).to_dict()
    assert semantic.MODEL in rec["metric_definitions"]["semantic"]
    for name, section in (("predictions.jsonl", "metrics"), ("predictions_baseline.jsonl", "baseline")):
        rows = [json.loads(line) for line in (run_dir / name).read_text().splitlines()]
        scores = [r["scores"]["semantic"] for r in rows]
        assert len(scores) == 8 and all(-1.0 <= s <= 1.0 for s in scores)
        assert rec[section]["semantic"] == pytest.approx(sum(scores) / 8)
        if section == "metrics":
            assert rec["per_example"]["semantic"] == scores
            assert scores == pytest.approx(semantic.similarities([r["generated"] for r in rows],
                                                                 [r["reference"] for r in rows]), abs=1e-6)
    assert "semantic" in proc.stdout  # the end-of-run summary table


def test_single_run_plan_says_what_would_happen_and_writes_no_run(smoke_run, tmp_path):
    """`plan=true` without -m: one line per run (would run / complete, fits or REFUSED, GPU-hours), nothing run."""
    run_dir, overrides, _ = smoke_run
    done = run_medsweep(*overrides, "plan=true")
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(rf"^{re.escape(run_dir.name)}: complete \(would be skipped\); fits: tiny_random .* on local_cpu "
                     r"\(CPU\): needs [\d.]+ GiB .*; estimated 0\.00 GPU-hours$", done.stdout, re.M), done.stdout

    fresh = run_medsweep(f"output_root={tmp_path}", "model=llama3_8b", "profile=1cpu_1v100", "plan=true")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    line = next(line for line in fresh.stdout.splitlines() if line.startswith("llama3_8b_"))
    # 8B parameters in fp16 are 15 GiB of weights alone, more than a 16 GB V100 leaves usable
    assert ": would run; REFUSED: llama3_8b (8.03B, fp16) on 1cpu_1v100 (1 GPU)" in line
    assert float(re.search(r"estimated ([\d.]+) GPU-hours$", line).group(1)) > 0.05  # a full epoch of 8B
    assert not list((tmp_path / "runs").glob("*")), "plan=true left a run directory"
    assert not (tmp_path / "runs").exists(), "plan=true left an empty runs/ behind"


def _cfg(compose, overrides=()):
    return compose(["experiment=smoke", "train.max_steps=6", "train.save_steps=100", "eval.num_examples=4",
                    *overrides])


def test_complete_record_is_never_overwritten(compose, tmp_path, embedded_dir):
    cfg = _cfg(compose)
    first = run.train_eval(cfg, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    again = run.train_eval(cfg, tmp_path / "run")
    assert again == json.loads(before) and (tmp_path / "run" / "metrics.json").read_bytes() == before
    assert first["status"] == "complete"
