"""Sweep planning without a cluster: the published 5 models x 9 VM profiles grid, fit arithmetic."""

import re

import pytest

from medsweep import fit
from tests.conftest import run_medsweep

MODELS = ["distilgpt2", "llama2_7b", "llama3_8b", "mistral_7b", "gemma_1.1_7b"]
PROFILES = [f"{c}cpu_{n}{g}" for g in ("v100", "a100", "rtx8000") for c, n in ((1, 1), (2, 1), (4, 2))]


def test_fit_arithmetic_llama3_on_one_v100(compose):
    cfg = compose(["model=llama3_8b", "profile=1cpu_1v100"])
    est = fit.estimate(cfg)
    gib = 2**30
    weights = 8.03e9 * 2 / gib  # fp16 on a V100
    # training, batch 4 x 512 with gradient checkpointing: each layer's fp16 input (2 bytes) + one layer recomputed
    # (Korthikanti et al. 2022: 34 bytes per token x hidden), the loss on 1024-row chunks of logits (6 bytes each)
    training = (4 * 512 * 4096 * 32 * 2 + 4 * 512 * 4096 * 34 + 1024 * 128256 * 6) / gib
    # evaluation, 32 prompts of 512 tokens + 64 new: the fp16 K/V cache of 32 layers x 8 KV heads x 128, or at the
    # prompt the prompts' cache + one layer's activations; last-position logits + their fp32 copy
    kv = 32 * 576 * 32 * 2 * 1024 * 2
    evaluation = (max(kv, kv * 512 / 576 + 32 * 512 * 4096 * 34) + 32 * 128256 * 6) / gib
    assert evaluation > training  # the eval KV cache of batch 32 is the largest term after the weights
    assert est.need_gib == pytest.approx(weights + 1.5 + evaluation, rel=1e-3)
    assert est.have_gib == pytest.approx(16 * 0.95)
    assert not est.fits and "llama3_8b" in est.detail and "1cpu_1v100" in est.detail


def test_4bit_makes_a_7b_model_fit_one_v100(compose):
    assert fit.estimate(compose(["model=mistral_7b", "profile=1cpu_1v100", "model.load_in_4bit=true"])).fits


@pytest.mark.slow
def test_plan_of_the_published_grid_refuses_exactly_what_does_not_fit(tmp_path):
    proc = run_medsweep(f"model={','.join(MODELS)}", f"profile={','.join(PROFILES)}", f"output_root={tmp_path}",
                        "--plan", multirun=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in proc.stdout.splitlines() if re.match(r"\|\s+\d+ \|", r)]
    assert len(rows) == 45
    status = {tuple(re.search(r"model=(\S+) profile=(\S+)", r).groups()): r.split("|")[3].strip() for r in rows}
    refused = {k for k, v in status.items() if v == "refused"}
    # fp16 7-8B models need 19-27 GiB (weights + the evaluation KV cache of batch 32): more than one 16 GB V100;
    # the 2-V100 profile splits them across both (30.4 GiB usable), the others fit one GPU
    assert refused == {(m, p) for m in MODELS[1:] for p in ("1cpu_1v100", "2cpu_1v100")}
    assert {v for k, v in status.items() if k not in refused} == {"submit"}
    assert "45 jobs: 37 to run, 0 complete (skipped), 8 refused" in proc.stdout
    assert not list(tmp_path.rglob(".submitit")) and not list(tmp_path.rglob("metrics.json"))  # nothing submitted


def test_sweep_with_a_refused_job_submits_nothing(tmp_path):
    proc = run_medsweep("model=distilgpt2,llama3_8b", "profile=1cpu_1v100", f"output_root={tmp_path}",
                        multirun=True, timeout=300)
    assert proc.returncode == 2
    assert "refused before submission, nothing submitted" in proc.stderr and "llama3_8b" in proc.stderr
    assert not list(tmp_path.rglob(".submitit"))


def test_a_sweep_may_supply_a_key_the_fixed_overrides_require(tmp_path):
    """data=local needs data.path; here the sweep over data.path supplies it, and each value is checked."""
    good = tmp_path / "a.jsonl"
    good.write_text('{"question": "q?", "answer": "a."}\n')
    proc = run_medsweep("experiment=smoke", "data=local", f"data.path={good},{tmp_path / 'b.jsonl'}",
                        f"output_root={tmp_path / 'out'}", "--plan", multirun=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 jobs: 2 to run" in proc.stdout and "b.jsonl" in proc.stdout
    bad = run_medsweep("experiment=smoke", "data=local", "data.path=a.jsonl,b.jsonl", "lora.r=4,0",
                       f"output_root={tmp_path / 'out'}", "--plan", multirun=True, timeout=300)
    assert bad.returncode == 2 and "lora.r=0" in bad.stderr
