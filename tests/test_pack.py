"""Packed training (medsweep/pack.py, packrun.py): K LoRA runs of a sweep trained in one process on one base model
end with the adapters and metrics of their solo runs, each written to its own run directory as a solo run's."""

import json

import pytest
import torch
from safetensors.torch import load_file

from medsweep import metrics, packrun, run

SMOKE = ["experiment=smoke", "train.max_steps=4", "train.save_steps=100", "eval.num_examples=4",
         "train.batch_size=2"]
# what the members of one pack differ in (lora settings, lr; the random model's seed is shared)
MEMBERS = [["lora.r=4", "lora.alpha=8", "lora.dropout=0"],
           ["lora.r=8", "lora.alpha=32", "lora.dropout=0.1", "train.lr=5e-3"],
           ["lora.r=2", "lora.alpha=4", "lora.dropout=0.2", "lora.target_modules=[q_proj,v_proj]"]]


def _adapter(run_dir):
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def _quality(values):
    """The metrics that do not measure time."""
    return {k: v for k, v in values.items() if k not in metrics.LATENCY}


def _assert_same_adapter(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-4, msg=key)


@pytest.mark.parametrize("precision", ["auto", "fp32"])  # fp32 on the CPU: medsweep.kernels' fused LoRA path
def test_a_pack_ends_with_the_solo_adapters_and_metrics(compose, tmp_path, embedded_dir, precision):
    cfgs = [compose([*SMOKE, *m, f"profile.precision={precision}"]) for m in MEMBERS]
    solo = [run.train_eval(c, tmp_path / f"solo{k}") for k, c in enumerate(cfgs)]
    dirs = [tmp_path / f"pack{k}" for k in range(len(cfgs))]
    packed = packrun.run_pack(cfgs, dirs)
    for k, (s, p) in enumerate(zip(solo, packed, strict=True)):
        assert p["status"] == "complete", p.get("error")
        _assert_same_adapter(_adapter(tmp_path / f"solo{k}"), _adapter(dirs[k]))
        assert _quality(p["metrics"]) == pytest.approx(_quality(s["metrics"]), rel=1e-6, abs=1e-9)
        assert [h["loss"] for h in p["train"]["log_history"]] == pytest.approx(
            [h["loss"] for h in s["train"]["log_history"]], rel=1e-4)
        assert p["packed_with"] == [d.name for d in dirs if d != dirs[k]]
        assert "packed_with" not in s
        solo_files = {f.name for f in (tmp_path / f"solo{k}").iterdir()} - {"checkpoints"}
        pack_files = {f.name for f in dirs[k].iterdir()} - {"checkpoints", packrun.CHECKPOINTS}
        assert pack_files == solo_files
        assert ({f.name for f in (dirs[k] / "adapter").iterdir()}
                == {f.name for f in (tmp_path / f"solo{k}" / "adapter").iterdir()})
        assert json.loads((dirs[k] / "adapter" / "adapter_config.json").read_text())["r"] == cfgs[k].lora.r


def test_the_runs_of_a_pack_record_the_optional_metrics_as_their_solo_runs(compose, tmp_path, embedded_dir,
                                                                            endpoint):
    """eval.semantic (where wordllama is installed) and a judge: each run of a pack records the per-example scores,
    metric definitions, judge scores and deltas its solo run records (one recording of an evaluation,
    RunRecord.add_evaluation, and one judging step, judge.judge_trained_run, for both)."""
    from medsweep import semantic
    from tests.fake_openai import FakeOpenAI

    FakeOpenAI.reply = lambda body, auth: ('{"better": "A"}' if "ANSWER A:" in body["messages"][-1]["content"]
                                           else '{"correct": 3, "complete": 2, "safe": 5}')
    optional = [*(["eval.semantic=true"] if semantic.available() else []), "eval.baseline=true",
                "eval.cache_baseline=false", "judge=openai", f"judge.base_url={endpoint}", "judge.model=fake-judge"]
    cfgs = [compose([*SMOKE, *optional, *m]) for m in MEMBERS[:2]]
    solo = [run.train_eval(c, tmp_path / f"solo{k}") for k, c in enumerate(cfgs)]
    packed = packrun.run_pack(cfgs, [tmp_path / f"pack{k}" for k in range(2)])
    expected = {"f1", "judge_correct", *(["semantic"] if semantic.available() else [])}
    for s, p in zip(solo, packed, strict=True):
        assert p["status"] == "complete" and "error" not in (p["judge"] or {}), p.get("error") or p["judge"]
        assert p["per_example"].keys() == s["per_example"].keys() >= expected
        for key, scores in s["per_example"].items():
            assert p["per_example"][key] == pytest.approx(scores, rel=1e-6, abs=1e-9), key
        assert p["metric_definitions"] == s["metric_definitions"]
        assert _quality(p["metrics"]) == pytest.approx(_quality(s["metrics"]), rel=1e-6, abs=1e-9)
        assert p["delta"].keys() == s["delta"].keys() and p["metrics"]["judge_correct"] == 3.0
        assert p["judge"]["answers"] == s["judge"]["answers"] and p["judge"]["pairwise"] == s["judge"]["pairwise"]


def test_a_pack_scores_its_baseline_once_through_the_cache(compose, tmp_path, embedded_dir):
    from medsweep import models

    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / models.EMBEDDED_CACHE_NAME).symlink_to(embedded_dir)  # no second dequantization of the GGUF
    common = [*SMOKE, "eval.max_new_tokens=4", "eval.baseline=true", f"model.cache_dir={cache_dir}"]
    dirs = [tmp_path / "pack0", tmp_path / "pack1"]
    packed = packrun.run_pack([compose([*common, *m]) for m in MEMBERS[:2]], dirs)
    sources = [p["baseline_source"] for p in packed]
    assert sources[0] == sources[1] and not sources[0]["reused"] and sources[0]["computed_by"] == str(dirs[0])
    assert sources[0]["entry"] and (cache_dir / "baseline").is_dir()  # stored for later jobs and packs
    assert packed[0]["baseline"] == packed[1]["baseline"]
    later = run.train_eval(compose([*common, "lora.r=16"]), tmp_path / "solo")  # a later job of the sweep
    assert later["baseline_source"]["reused"] and later["baseline_source"]["entry"] == sources[0]["entry"]
    assert later["baseline"] == packed[0]["baseline"]
    assert (tmp_path / "solo" / "predictions_baseline.jsonl").read_text() == (
        dirs[1] / "predictions_baseline.jsonl").read_text()


def test_each_member_of_a_stacked_batch_has_its_solo_batch():
    from torch.utils.data import BatchSampler

    from medsweep.pack import PackSampler
    from medsweep.train import EpochSampler

    lengths = [3, 9, 4, 7, 1, 8, 2, 6, 5, 10, 11]
    solo = [EpochSampler(len(lengths), seed, lengths, megabatch=4) for seed in (0, 1, 2)]
    stacked = list(BatchSampler(PackSampler(solo, batch=2), 3 * 2, drop_last=False))
    for k, sampler in enumerate(solo):
        alone = list(BatchSampler(sampler, 2, drop_last=False))
        rows = [b[k * len(b) // 3:(k + 1) * len(b) // 3] for b in stacked]
        assert rows == alone, k


def test_a_diverging_run_fails_alone(compose, tmp_path, embedded_dir):
    cfgs = [compose([*SMOKE, "lora.r=4"]), compose([*SMOKE, "lora.r=8", "train.lr=1e30"]),
            compose([*SMOKE, "lora.r=2"])]
    dirs = [tmp_path / f"pack{k}" for k in range(3)]
    packed = packrun.run_pack(cfgs, dirs)
    assert [p["status"] for p in packed] == ["complete", "failed", "complete"]
    assert packed[1]["error"].startswith("TrainingDiverged: training diverged")
    assert not (dirs[1] / "predictions.jsonl").exists() and (dirs[0] / "predictions.jsonl").is_file()
    assert packed[0]["train"]["steps"] == packed[2]["train"]["steps"] == 4
    alone = run.train_eval(cfgs[2], tmp_path / "solo2")  # the others trained as they would have without it
    _assert_same_adapter(_adapter(tmp_path / "solo2"), _adapter(dirs[2]))
    assert _quality(packed[2]["metrics"]) == pytest.approx(_quality(alone["metrics"]), rel=1e-6, abs=1e-9)


def test_an_interrupted_pack_resumes_to_the_uninterrupted_adapters(compose, tmp_path, monkeypatch, embedded_dir):
    import os
    import signal

    from medsweep import train

    cfgs = [compose([*SMOKE, "train.max_steps=6", "lora.dropout=0.1"]),
            compose([*SMOKE, "train.max_steps=6", "lora.r=4", "lora.dropout=0.2", "train.lr=5e-3"])]
    whole = [tmp_path / f"a{k}" for k in range(2)]
    packrun.run_pack(cfgs, whole)

    class Requeued(SystemExit):
        pass

    def requeue(signum, frame):
        raise Requeued(-1)

    previous = signal.signal(signal.SIGUSR2, requeue)  # submitit's handler stands in
    original = train.StepTimer.on_step_end

    def signal_at_step_3(self, args, state, control, **kwargs):
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGUSR2)
        return original(self, args, state, control, **kwargs)

    dirs = [tmp_path / f"b{k}" for k in range(2)]
    try:
        monkeypatch.setattr(train.StepTimer, "on_step_end", signal_at_step_3)
        with pytest.raises(Requeued):
            packrun.run_pack(cfgs, dirs)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert [json.loads((d / "metrics.json").read_text())["status"] for d in dirs] == ["interrupted"] * 2
    assert (dirs[0] / packrun.CHECKPOINTS / "checkpoint-3").is_dir()
    monkeypatch.setattr(train.StepTimer, "on_step_end", original)
    resumed = packrun.run_pack(cfgs, dirs)
    assert all(r["status"] == "complete" and r["train"]["resumed_from"].endswith("checkpoint-3") for r in resumed)
    for a, b in zip(whole, dirs, strict=True):
        _assert_same_adapter(_adapter(a), _adapter(b), atol=0)
    # a re-run skips what is complete
    assert [r["finished_at"] for r in packrun.run_pack(cfgs, dirs)] == [r["finished_at"] for r in resumed]


def test_runs_that_differ_in_more_than_lora_lr_seed_are_refused(compose, tmp_path):
    from medsweep.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot share a pack"):
        packrun.run_pack([compose(SMOKE), compose([*SMOKE, "train.max_seq_length=64"])],
                         [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ConfigError, match="cannot share a pack"):  # a random model's weights come from the seed
        packrun.run_pack([compose(SMOKE), compose([*SMOKE, "train.seed=1"])], [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_a_packed_local_sweep_writes_normal_runs(tmp_path, embedded_dir):
    from tests.conftest import run_medsweep

    proc = run_medsweep("experiment=smoke", "lora.r=4,8", "lora.alpha=8,16", "pack=2", "train.max_steps=2",
                        "eval.num_examples=2", f"output_root={tmp_path}", "sweep_name=p", multirun=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| #0+#1  |" in proc.stdout and "| #2+#3  |" in proc.stdout  # the plan shows the packs
    jobs = json.loads((tmp_path / "sweeps" / "p" / "sweep_jobs.json").read_text())
    assert [j["outcome"] for j in jobs] == ["completed"] * 4
    assert jobs[0]["job_id"] == jobs[1]["job_id"] != jobs[2]["job_id"] == jobs[3]["job_id"]
    for j in jobs:
        rec = json.loads((tmp_path / "sweeps" / "p" / j["run_dir"] / "metrics.json").read_text())
        assert rec["status"] == "complete" and len(rec["packed_with"]) == 1
        assert (tmp_path / "sweeps" / "p" / j["run_dir"] / ".hydra" / "config.yaml").is_file()
    report = (tmp_path / "sweeps" / "p" / "report" / "report.md").read_text()
    assert "4 runs (4 complete)" in report
    table = report.split("## All configurations")[1].split("\n## ")[0]
    assert len([line for line in table.splitlines() if line.startswith("| tiny_random |")]) == 4


@pytest.mark.slow
def test_a_smollm2_pack_ends_with_the_solo_adapters(compose, tmp_path, embedded_dir):
    # fp32: bf16's sums differ with the batch's shape (one run's rows, or a pack's stacked rows). One thread: on a
    # machine whose few cores other jobs share, two threads spend most of a step waiting for each other
    common = ["experiment=demo", "train.max_steps=2", "train.batch_size=2", "eval.num_examples=2",
              "eval.max_new_tokens=4", "eval.baseline=false", "train.save_steps=100", "profile.precision=fp32",
              "profile.cpus=1"]
    cfgs = [compose([*common, "lora.r=4", "lora.alpha=8", "lora.dropout=0"]),
            compose([*common, "lora.r=16", "lora.alpha=32", "lora.dropout=0.1", "train.lr=1e-4", "train.seed=1"])]
    solo = [run.train_eval(c, tmp_path / f"solo{k}") for k, c in enumerate(cfgs)]
    dirs = [tmp_path / f"pack{k}" for k in range(2)]
    packed = packrun.run_pack(cfgs, dirs)
    for k in range(2):
        assert packed[k]["status"] == "complete", packed[k].get("error")
        _assert_same_adapter(_adapter(tmp_path / f"solo{k}"), _adapter(dirs[k]))
        assert _quality(packed[k]["metrics"]) == pytest.approx(_quality(solo[k]["metrics"]), rel=1e-5, abs=1e-7)
