"""Sweep planning without a cluster: the published 5 models x 9 VM profiles grid, fit arithmetic, and the end of a
sweep (medsweep/sweep.py: job statuses, the failure list, the end-of-multirun hook)."""

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medsweep import fit, launcher, sweep
from medsweep.errors import MedsweepError
from tests.conftest import run_medsweep

MODELS = ["distilgpt2", "llama2_7b", "llama3_8b", "mistral_7b", "gemma_1.1_7b"]
PROFILES = [f"{c}cpu_{n}{g}" for g in ("v100", "a100", "rtx8000") for c, n in ((1, 1), (2, 1), (4, 2))]


def test_fit_arithmetic_llama3_on_one_v100(compose):
    cfg = compose(["model=llama3_8b", "profile=1cpu_1v100"])
    est = fit.estimate(cfg)
    # Llama 3 8B (8.03e9 parameters, hidden 4096, 32 layers, 128,256 tokens, 8 KV heads x 128), fp16 on a V100:
    #   weights     8.03e9 x 2 B = 16.06e9 B                                                  = 14.957 GiB
    #   training    32 saved layer inputs 4x512x4096x2 B each (0.5 GiB) + one layer recomputed 4x512x4096x34 B
    #               (0.266 GiB) + the loss on 1024-row chunks of 128,256 logits x 6 B (0.734 GiB) =  1.4995 GiB
    #   evaluation  prefill of 32 prompts x 512 tokens: K/V 32 x 2 x 1024 x 2 B = 128 KiB per token (2 GiB) + one
    #               layer 32x512x4096x34 B (2.125 GiB); + last-position logits 32 x 128,256 x 6 B (0.023 GiB)
    #                                                                                         =  4.1479 GiB
    #   need        14.957 + 1.5 + 4.148                                                      = 20.605 GiB
    assert est.parts["evaluation"] == pytest.approx(4.147934, rel=1e-6)
    assert est.parts["training"] == pytest.approx(1.499512, rel=1e-6)
    assert est.parts["evaluation"] > est.parts["training"]  # the eval batch of 32 is the largest term after weights
    assert est.need_gib == pytest.approx(20.604975, rel=1e-6)
    assert est.have_gib == pytest.approx(16 * 0.95)
    assert not est.fits and "llama3_8b" in est.detail and "1cpu_1v100" in est.detail
    # 6 x 8.03e9 FLOPs x 1,900 examples x 307.2 tokens = 2.812e16 FLOPs at 125 TFLOPs x 0.3 = 750 s
    assert est.gpu_hours == pytest.approx(0.2083089, rel=1e-5)


def test_4bit_makes_a_7b_model_fit_one_v100(compose):
    est = fit.estimate(compose(["model=mistral_7b", "profile=1cpu_1v100", "model.load_in_4bit=true"]))
    assert est.fits and est.mode == "single" and est.need_gib < 16 * 0.95
    # 6 x 7.24e9 x 583,680 tokens / (125e12 x 0.3) / 3600 = 0.18782 h: 4-bit weights do not change the FLOPs
    assert est.gpu_hours == pytest.approx(0.1878153, rel=1e-5)


class _Loader:
    """Hydra's config loader for plan_jobs, for `model=<m> profile=<p>` jobs: the composed base config with the
    composed model and profile groups put in, and the sweep's run-dir keys, so 1 + 5 + 9 compositions make the 45 job
    configs (one Hydra composition per job is most of the subprocess plan's minute)."""

    def __init__(self, compose, root):
        self.compose = compose
        base = compose([f"output_root={root}"], return_hydra_config=True)
        self.base = OmegaConf.to_container(base, resolve=False)
        self.base["hydra"] = {"sweep": {"dir": str(base.hydra.sweep.dir), "subdir": "${run_id:}"}}
        self.groups: dict = {}

    def load_sweep_config(self, config, overrides):
        cfg = dict(self.base)
        for override in overrides:
            key, _, _ = override.partition("=")
            if override not in self.groups:
                self.groups[override] = OmegaConf.to_container(self.compose([override])[key], resolve=True)
            cfg[key] = self.groups[override]
        return OmegaConf.create(cfg)


@pytest.mark.slow
def test_plan_of_the_published_grid_refuses_exactly_what_does_not_fit(compose, tmp_path):
    """The planning step of `medsweep -m model=... profile=... --plan` on the published grid, in-process (the launcher
    composes each job, checks its fit and plans its layout; the CLI's --plan is covered end to end below)."""
    grid = [[f"model={m}", f"profile={p}"] for m in MODELS for p in PROFILES]
    loader = type("Launcher", (), {"config": None, "hydra_context": type("Ctx", (), {"config_loader": None})()})()
    loader.hydra_context.config_loader = _Loader(compose, tmp_path)
    jobs = launcher.plan_jobs(loader, grid, 0, "slurm")
    assert len(jobs) == 45
    status = {(j.overrides[0][6:], j.overrides[1][8:]): j for j in jobs}
    refused = {k for k, j in status.items() if j.status == "refused"}
    # fp16 7-8B models need 19-27 GiB (weights + the evaluation KV cache of batch 32): more than one 16 GB V100;
    # the 2-V100 profile splits them across both (30.4 GiB usable), the others fit one GPU
    assert refused == {(m, p) for m in MODELS[1:] for p in ("1cpu_1v100", "2cpu_1v100")}
    assert {j.status for k, j in status.items() if k not in refused} == {"submit"}
    for (model, profile), job in status.items():
        assert job.reason.startswith(f"does not fit: {model} (") == ((model, profile) in refused)
        if profile.startswith("4cpu_2"):
            # distilgpt2 data parallel on every 2-GPU profile, the 7-8B models on 2 x A100 and 2 x RTX 8000 too, and
            # split across the two 16 GB V100s
            split = model != "distilgpt2" and profile == "4cpu_2v100"
            assert (job.mode, job.processes) == (("model_split", 1) if split else ("data_parallel", 2)), job
        else:
            assert (job.mode, job.processes) == ("single", 1)
        assert job.gpu_hours > 0 and job.resources["slurm_gres"] == f"gpu:{profile.split('_')[1][1:]}:{profile[5]}"
    summary = launcher.plan_table(jobs).splitlines()[-1]
    assert summary.startswith("45 jobs: 37 to run, 0 complete (skipped), 8 refused (do not fit), 0 invalid")
    assert not list(tmp_path.rglob("*"))  # nothing written


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
    assert not (tmp_path / "out" / "sweeps" / "sweep" / "sweep_jobs.json").exists()  # --plan: nothing launched
    bad = run_medsweep("experiment=smoke", "data=local", "data.path=a.jsonl,b.jsonl", "lora.r=4,0",
                       f"output_root={tmp_path / 'out'}", "--plan", multirun=True, timeout=300)
    assert bad.returncode == 2 and "lora.r=0" in bad.stderr


# --- the end of a sweep: medsweep/sweep.py -----------------------------------------------------------------------

def _sweep(tmp_path, records: dict) -> Path:
    """A sweep directory: sweep_jobs.json with one job per entry, and each run's metrics.json (text, or absent)."""
    jobs = []
    for idx, (name, (outcome, error, text)) in enumerate(records.items()):
        run_dir = tmp_path / name
        run_dir.mkdir()
        if text is not None:
            (run_dir / "metrics.json").write_text(text)
        jobs.append({"idx": idx, "overrides": [f"lora.r={idx + 4}", "train.seed=0"], "run_dir": str(run_dir),
                     "status": "submit", "outcome": outcome, "error": error})
    (tmp_path / launcher.JOBS_FILE).write_text(json.dumps(jobs))
    return tmp_path


RECORDS = {
    "done": ("completed", "", json.dumps({"status": "complete"})),
    "crashed": ("failed", "RuntimeError: job 12 failed", json.dumps({"status": "failed", "error": "OSError: x"})),
    "lost": ("completed", "", None),
    "torn": ("completed", "", '{"status": "comp'),
    "nostatus": ("completed", "", json.dumps({"metrics": {}})),
    "bad": ("", "", json.dumps({"status": "failed", "error": "DataError: missing.jsonl not found"})),
}


def test_job_statuses_read_each_runs_record(tmp_path):
    jobs = sweep.job_statuses(_sweep(tmp_path, RECORDS))
    assert [(j["idx"], j["record"], j["error"]) for j in jobs] == [
        (0, "complete", ""),
        (1, "failed", "RuntimeError: job 12 failed"),  # the launcher's error first
        (2, "missing", ""),
        (3, "corrupt", ""),
        (4, "corrupt", ""),  # a record without a status
        (5, "failed", "DataError: missing.jsonl not found"),  # else the record's
    ]
    assert sweep.job_statuses(tmp_path / "elsewhere") == []


def test_finish_prints_every_job_and_returns_the_failed(tmp_path, monkeypatch, capsys):
    import medsweep.report

    reported = []
    monkeypatch.setattr(medsweep.report, "report_sweep", lambda d: reported.append(d) or Path(d) / "report.md")
    failed = sweep.finish(_sweep(tmp_path, RECORDS))
    assert [j["idx"] for j in failed] == [1, 3, 4, 5]  # failed outcome, corrupt records, a failed record
    assert reported == [tmp_path]
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "  #0   completed  record=complete  lora.r=4 train.seed=0  ",
        "  #1   failed     record=failed    lora.r=5 train.seed=0  RuntimeError: job 12 failed",
        "  #2   completed  record=missing   lora.r=6 train.seed=0  ",
        "  #3   completed  record=corrupt   lora.r=7 train.seed=0  ",
        "  #4   completed  record=corrupt   lora.r=8 train.seed=0  ",
        "  #5   submit     record=failed    lora.r=9 train.seed=0  DataError: missing.jsonl not found",
        f"report: {tmp_path / 'report.md'}",
    ]


def test_finish_without_a_report_still_names_the_failures(tmp_path, monkeypatch, capsys, caplog):
    import medsweep.report

    def no_report(sweep_dir):
        raise MedsweepError("no run records under the sweep")

    monkeypatch.setattr(medsweep.report, "report_sweep", no_report)
    long = "E" * 300
    with caplog.at_level(logging.WARNING, logger="medsweep.sweep"):
        failed = sweep.finish(_sweep(tmp_path, {"a": ("failed", long, None)}))
    assert [j["idx"] for j in failed] == [0]
    assert capsys.readouterr().out == f"  #0   failed     record=missing   lora.r=4 train.seed=0  {'E' * 200}\n"
    assert [r.getMessage() for r in caplog.records] == ["no report: no run records under the sweep"]


def test_failure_message_names_each_failed_job():
    failed = [{"idx": 1, "overrides": ["lora.r=8", "data.path=b.jsonl"], "error": "DataError: b.jsonl not found"},
              {"idx": 3, "overrides": ["lora.r=16"], "error": "x" * 250},
              {"idx": 4, "overrides": []}]
    assert sweep.failure_message(failed, 5) == (
        "3 of 5 job(s) failed: #1 (lora.r=8 data.path=b.jsonl): DataError: b.jsonl not found; "
        f"#3 (lora.r=16): {'x' * 200}; #4 (): ")


def test_the_end_of_multirun_hook(tmp_path, monkeypatch, caplog, capsys):
    import medsweep.report

    monkeypatch.setattr(medsweep.report, "report_sweep", lambda d: Path(d) / "report.md")
    _sweep(tmp_path, {"ok": ("completed", "", json.dumps({"status": "complete"})),
                      "bad": ("failed", "ValueError: boom", None)})
    config = OmegaConf.create({"plan": False, "hydra": {"sweep": {"dir": str(tmp_path)}}})
    with caplog.at_level(logging.ERROR, logger="medsweep.sweep"):
        sweep.SweepReport().on_multirun_end(config)
    assert [r.getMessage() for r in caplog.records] == ["1 of 2 job(s) failed: #1 (lora.r=5 train.seed=0): "
                                                        "ValueError: boom"]
    assert f"report: {tmp_path / 'report.md'}" in capsys.readouterr().out
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="medsweep.sweep"):
        sweep.SweepReport().on_multirun_end(OmegaConf.create({"plan": True, "hydra": {"sweep": {"dir": "/nowhere"}}}))
    assert caplog.records == [] and capsys.readouterr().out == ""  # a plan ran nothing: nothing to report
    good = tmp_path / "good"
    good.mkdir()
    _sweep(good, {"ok": ("completed", "", json.dumps({"status": "complete"}))})
    with caplog.at_level(logging.ERROR, logger="medsweep.sweep"):
        sweep.SweepReport().on_multirun_end(OmegaConf.create({"plan": False, "hydra": {"sweep": {"dir": str(good)}}}))
    assert caplog.records == [] and f"report: {good / 'report.md'}" in capsys.readouterr().out
