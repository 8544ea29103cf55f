"""logger=wandb (offline): redaction of secrets, the stable run id, the logged data, and a 2-job sweep end to end.

W&B 0.31 writes no files/config.yaml or files/wandb-summary.json for an offline run: everything is in
`run-<id>.wandb`, which `tests/wandb_offline.py` reads back."""

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medsweep import report, tracking
from medsweep.errors import MedsweepError
from tests.conftest import MEDQUAD_JSONL, need_shared_data, run_medsweep
from tests.wandb_offline import read_offline_run

pytest.importorskip("wandb")

WANDB_KEY = "sk-secret-123456"
HF_TOKEN = "hf_abcdef123456"
CFG_KEY = "xyz-logger-api-key-4711"  # logger.api_key
CFG_TOKEN = "abc-some-token-0815"  # some_token
SECRETS = (WANDB_KEY, HF_TOKEN, CFG_KEY, CFG_TOKEN)
SUMMARY_KEYS = {"eval/exact_match", "eval/f1", "eval/bleu", "eval/rouge1", "eval/rouge2", "eval/rougeL",
                "eval/perplexity", "eval/seconds_per_answer", "eval/n_eval", "train/loss", "train/learning_rate",
                "train/grad_norm", "train/global_step", "train/loss_avg", "train/time_s", "train/steps",
                "train/peak_memory_mb", "train/trainable_params", "status", "system/device", "predictions"}


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """Offline W&B with secrets in the environment; W&B's own state dirs kept out of $HOME."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    return tmp_path


def _cfg(compose, *overrides):
    composed = compose(["experiment=smoke", "logger=wandb", "sweep_name=unit", *overrides])
    cfg = OmegaConf.create(OmegaConf.to_container(composed, resolve=True))  # plain: the schema has no secrets
    cfg.logger.api_key = CFG_KEY
    cfg.some_token = CFG_TOKEN
    cfg.data.note = f"the token is {HF_TOKEN}"  # a secret env value inside an ordinary string
    return cfg


def _offline_run(run_dir: Path) -> Path:
    (found,) = (run_dir / "wandb").glob("offline-run-*")
    return found


def _files_with_secrets(root: Path) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path.relative_to(root)}: {s}" for s in SECRETS if s.encode() in data]
    return hits


def test_run_id_is_stable_per_directory(tmp_path):
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    assert tracking.run_id(a) == tracking.run_id(a) == tracking.run_id(tmp_path / "runs" / ".." / "runs" / "a")
    assert tracking.run_id(a) != tracking.run_id(b)
    assert len(tracking.run_id(a)) == 16 and all(c in "0123456789abcdef" for c in tracking.run_id(a))


def test_tags_are_redacted_and_short(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    long = "data.path=/very/long/" + "x" * 100 + "/medquad.jsonl"
    got = tracking.tags(["paper"], ["lora.r=4", f"+logger.api_key={CFG_KEY}", f"x={HF_TOKEN}", long, "lora.r=4"])
    assert got[:4] == ["paper", "lora.r=4", "+logger.api_key=***", "x=***"]
    assert len(got) == 5 and len(got[4]) == 64 and got[4].startswith("data.path=/very/long/")


def test_logger_none_is_a_no_op(compose, tmp_path):
    tracker = tracking.start(compose(["experiment=smoke"]), tmp_path / "run", [])
    assert type(tracker) is tracking.Tracker and tracker.callback() is None
    tracker.log_eval({"f1": 1.0}, "eval")
    tracker.finish({"status": "complete"})
    assert not (tmp_path / "run" / "wandb").exists()


def test_offline_run_is_redacted_and_complete(compose, wandb_env, monkeypatch, no_network):
    run_dir = wandb_env / "runs" / "job-a"
    monkeypatch.setattr(sys, "argv", ["medsweep", "lora.r=4", f"logger.api_key={CFG_KEY}", f"y={WANDB_KEY}"])
    tracker = tracking.start(_cfg(compose), run_dir, ["lora.r=4", f"+some_token={CFG_TOKEN}"])
    assert isinstance(tracker, tracking.WandbTracker) and tracker.run.id == tracking.run_id(run_dir)
    assert no_network == []  # offline mode reaches for no host

    class State:
        global_step = 2

    cb = tracker.callback(epoch_results=[{"epoch": 1.0, "step": 2, "metrics": {"f1": 0.25}}])
    cb.on_log(None, State(), None, logs={"loss": 3.5, "learning_rate": 1e-3, "grad_norm": 0.7, "epoch": 0.5})
    cb.on_epoch_end(None, State(), None)
    cb.on_log(None, State(), None, logs={"train_loss": 3.4, "train_runtime": 1.5})
    tracker.log_eval({"f1": 0.3, "bleu": 1.0, "rougeL": 0.2, "note": "text"}, "eval", step=2)
    scores = {"exact_match": 0.0, "f1": 0.3, "bleu": 1.0, "rouge1": 0.4, "rouge2": 0.1, "rougeL": 0.2}
    tracker.log_predictions([{"id": "q1", "question": f"what is {WANDB_KEY}?", "reference": "r", "generated": "g",
                              "seconds": 0.1, "generated_tokens": 3, "scores": scores}])
    rec = {"status": "complete", "metrics": {"f1": 0.3, "bleu": 1.0}, "baseline": {"f1": 0.1}, "delta": {"f1": 0.2},
           "train": {"train_time_s": 2.0, "peak_memory_mb": 100.0, "train_loss": 3.4},
           "hardware": {"device": "cpu"}, "env": {"host": "h"}}
    tracker.finish(rec)
    tracker.finish(rec)  # idempotent

    run = read_offline_run(_offline_run(run_dir))
    assert run["id"] == tracking.run_id(run_dir) and run["group"] == "unit" and run["job_type"] == "train-eval"
    assert run["name"] == "job-a" and run["exit_code"] == 0
    assert run["tags"] == ["lora.r=4", "+some_token=***"]
    cfg = run["config"]
    assert cfg["logger"]["api_key"] == "***" and cfg["some_token"] == "***"
    assert cfg["data"]["note"] == "the token is ***" and cfg["lora"]["r"] == 8 and cfg["run_dir"] == str(run_dir)
    assert run["args"] == ["lora.r=4", "logger.api_key=***", "y=***"]
    s = run["summary"]
    assert s["train/loss"] == 3.5 and s["train/grad_norm"] == 0.7 and s["train/loss_avg"] == 3.4
    assert s["epoch/f1"] == 0.25 and s["eval/f1"] == 0.3 and s["baseline/f1"] == 0.1 and s["delta/f1"] == 0.2
    assert s["train/time_s"] == 2.0 and s["train/peak_memory_mb"] == 100.0 and s["status"] == "complete"
    assert "eval/note" not in s and s["predictions"]["nrows"] == 1
    assert {h.get("train/global_step") for h in run["history"] if "train/loss" in h} == {2}
    assert _files_with_secrets(wandb_env) == []


def test_failed_job_finishes_with_exit_code_1(compose, wandb_env):
    run_dir = wandb_env / "runs" / "job-f"
    tracker = tracking.start(_cfg(compose), run_dir, [])
    tracker.finish({"status": "failed", "error": "RuntimeError: boom"})
    run = read_offline_run(_offline_run(run_dir))
    assert run["exit_code"] == 1 and run["summary"]["status"] == "failed"
    assert run["summary"]["error"] == "RuntimeError: boom"


def test_resumed_job_continues_its_run(compose, wandb_env):
    """A requeued job (same directory) writes a second offline fragment of the same run id; `wandb sync` of
    both uploads them in start-time order into one run."""
    run_dir = wandb_env / "runs" / "job-r"
    first = tracking.start(_cfg(compose), run_dir, [])
    first.finish({"status": "interrupted", "error": "SystemExit: 0"})
    second = tracking.start(_cfg(compose), run_dir, [])
    second.finish({"status": "complete"})
    fragments = sorted((run_dir / "wandb").glob("offline-run-*"))
    runs = [read_offline_run(f) for f in fragments]
    assert len(runs) == 2 and {r["id"] for r in runs} == {tracking.run_id(run_dir)}
    assert sorted(r["exit_code"] for r in runs) == [0, 1]


def test_init_failure_is_one_clear_error(compose, wandb_env, monkeypatch, no_network):
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(wandb_env / "no-netrc"))
    with pytest.raises(MedsweepError, match=r"logger=wandb: wandb.init failed .*logger.mode=offline"):
        tracking.start(_cfg(compose, "logger.mode=online"), wandb_env / "runs" / "job-o", [])
    assert no_network == []  # refused for want of a key before any connection, so it cannot hang on one


@pytest.mark.slow
def test_sweep_logs_one_offline_run_per_job(tmp_path, embedded_dir):
    """A 2-job multirun with logger=wandb: one offline W&B run per job directory, distinct ids, the expected
    summary keys, no secret anywhere under the sweep directory, and the report over the sweep."""
    need_shared_data()
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": WANDB_KEY, "HF_TOKEN": HF_TOKEN,
           **{v: str(tmp_path / "wandb-home" / v.lower()) for v in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR",
                                                                    "WANDB_CONFIG_DIR")}}
    out = tmp_path / "results"
    proc = run_medsweep("experiment=smoke", "logger=wandb", "lora.r=4,8", "data=local", f"data.path={MEDQUAD_JSONL}",
                        f"output_root={out}", "sweep_name=wb", multirun=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = out / "sweeps" / "wb"
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 2

    ids = set()
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["status"] == "complete"
        run = read_offline_run(_offline_run(job))  # exactly one offline run per job
        assert run["id"] == tracking.run_id(job) and run["exit_code"] == 0
        assert run["group"] == "wb" and run["name"] == job.name
        assert SUMMARY_KEYS <= set(run["summary"]), SUMMARY_KEYS - set(run["summary"])
        assert run["summary"]["train/global_step"] == 6 and run["summary"]["status"] == "complete"
        assert run["summary"]["predictions"]["nrows"] == 8
        assert sum("train/loss" in h for h in run["history"]) == 6
        lora_r = run["config"]["lora"]["r"]
        assert f"lora.r={lora_r}" in run["tags"] and run["config"]["logger"]["mode"] == "offline"
        ids.add(run["id"])
    assert len(ids) == 2

    assert report.main([str(sweep)]) == 0
    assert (sweep / "report" / "report.md").is_file()
    assert _files_with_secrets(sweep) == []
