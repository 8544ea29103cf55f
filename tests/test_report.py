"""Tests for medsweep.report on hand-made run records with known numbers (offline, fast)."""

from __future__ import annotations

import json
import math
import statistics
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsweep import report
from medsweep.errors import MedsweepError

T_DF1 = 12.706  # two-sided 95% Student-t critical value, df = 1

# (model, lora.r) -> f1 for seeds 0 and 1
F1 = {
    ("smollm2_135m", 4): [0.30, 0.34],
    ("smollm2_135m", 16): [0.40, 0.46],  # best for smollm
    ("qwen2_0.5b", 4): [0.52, 0.56],  # best for qwen
    ("qwen2_0.5b", 16): [0.45, 0.47],
}
BASE_F1 = {"smollm2_135m": 0.20, "qwen2_0.5b": 0.30, "tiny": 0.10}
SPA = {"smollm2_135m": 0.40, "qwen2_0.5b": 0.80, "tiny": 0.10}  # seconds per answer
TINY_F1 = [0.1, 0.5, 0.9, 0.3, 0.2, 0.0, 1.0, 0.4, 0.6, 0.7,
           0.2, 0.3, 0.5, 0.1, 0.8, 0.4, 0.6, 0.2, 0.9, 0.3]


def metrics_for(f1: float, model: str, seed: int) -> dict:
    return {"exact_match": f1 / 4, "f1": f1, "bleu": f1 * 20, "rouge1": f1 + 0.05,
            "rouge2": f1 / 2, "rougeL": f1 + 0.01, "perplexity": 10 - 10 * f1,
            "latency_p50_s": SPA[model] - 0.05, "latency_p95_s": SPA[model] + 0.2,
            "seconds_per_answer": SPA[model] + 0.02 * seed,
            "generated_tokens_per_s": 100.0 / SPA[model], "n_eval": 20}


def write_record(run_dir: Path, model: str, r: int, seed: int, f1: float | None,
                 status: str = "complete", error: str | None = None,
                 per_example: dict | None = None, epochs: list | None = None,
                 **overrides: float) -> Path:
    axes = {"model": model, "lora.r": r, "lora.alpha": 16, "lora.dropout": 0.05,
            "train.max_seq_length": 512, "data": "sample", "profile": "local_cpu",
            "train.seed": seed}
    metrics = {**metrics_for(f1, model, seed), **overrides} if f1 is not None else {}
    baseline = {**metrics_for(BASE_F1[model], model, seed)} if f1 is not None else None
    record = {
        "status": status, "run_name": f"{model}-r{r}-s{seed}", "run_dir": "/elsewhere",
        "axes": axes, "metrics": metrics, "baseline": baseline,
        "delta": {k: metrics[k] - baseline[k] for k in metrics} if baseline else None,
        "per_example": per_example or {},
        "train": {"train_time_s": 100.0 + r, "steps": 30, "train_loss_first": 3.0,
                  "train_loss_last": 2.0, "trainable_params": 1000 * r,
                  "total_params": 10**6, "peak_memory_mb": 500.0,
                  "log_history": [{"step": 1, "loss": 3.0}]},
        "epochs": epochs or [], "gpu_hours": 0.5, "error": error,
        "started_at": "2026-11-22T22:10:00Z", "finished_at": "2026-11-22T22:12:00Z",
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text("model: {}\n")
    (run_dir / "metrics.json").write_text(json.dumps(record))
    (run_dir / "predictions.jsonl").write_text("")
    return run_dir


def epochs_for(f1: float) -> list:
    return [{"epoch": 1, "metrics": {"f1": f1 - 0.1, "exact_match": 0.0}},
            {"epoch": 2, "metrics": {"f1": f1, "exact_match": 0.1}}]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 models × lora.r {4,16} × seeds {0,1}, one single-run model with per-example
    scores, a failed run, an unfinished run and a corrupt record, nested arbitrarily."""
    root = tmp_path / "sweep"
    i = 0
    for (model, r), values in F1.items():
        for seed, f1 in enumerate(values):
            with_epochs = seed == 0 and (model, r) in {("smollm2_135m", 16), ("qwen2_0.5b", 4)}
            parent = root / "multirun" / "2026-11-22" if i % 2 else root
            write_record(parent / str(i), model, r, seed, f1,
                         epochs=epochs_for(f1) if with_epochs else None)
            i += 1
    tiny_em = [float(v >= 0.5) for v in TINY_F1]
    write_record(root / "tiny" / "0", "tiny", 4, 0, statistics.fmean(TINY_F1),
                 per_example={"f1": TINY_F1, "exact_match": tiny_em,
                              "bleu": [20 * v + 1 for v in TINY_F1]},  # not corpus BLEU
                 exact_match=statistics.fmean(tiny_em))
    write_record(root / "failed", "smollm2_135m", 8, 0, None, status="failed",
                 error="ValueError: boom")
    unfinished = root / "multirun" / "unfinished" / ".hydra"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("model: {}\n")
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "metrics.json").write_text('{"status": "compl')
    return root


@pytest.fixture
def df(sweep: Path) -> pd.DataFrame:
    return report.collect([str(sweep)])


def half_width(values) -> float:
    return T_DF1 * statistics.stdev(values) / math.sqrt(len(values))


def row(table: pd.DataFrame, **where) -> pd.Series:
    mask = np.logical_and.reduce([table[k] == v for k, v in where.items()])
    assert mask.sum() == 1, (where, table)
    return table[mask].iloc[0]


# ------------------------------------------------------------------------- collect

def test_collect_rows_columns_and_statuses(df: pd.DataFrame, sweep: Path):
    assert len(df) == 8 + 1 + 3
    assert df["status"].value_counts().to_dict() == {
        "complete": 9, "failed": 1, "unfinished": 1, "corrupt": 1}
    for col in ["run_dir", "run_name", "status", "error", "model", "lora.r", "lora.alpha",
                "train.seed", "profile", "exact_match", "f1", "bleu", "rouge1", "rouge2",
                "rougeL", "perplexity", "latency_p50_s", "latency_p95_s",
                "seconds_per_answer", "generated_tokens_per_s", "baseline.f1", "delta.f1",
                "train_time_s", "peak_memory_mb", "trainable_params", "total_params", "steps",
                "train_loss_first", "train_loss_last", "gpu_hours"]:
        assert col in df.columns, col
    assert "decision_accuracy" not in df.columns  # only present for PubMedQA
    run = row(df, run_name="smollm2_135m-r16-s1")
    assert run["f1"] == pytest.approx(0.46)
    assert run["run_dir"] == str((sweep / "multirun" / "2026-11-22" / "3").absolute())
    assert int(run["lora.r"]) == 16 and str(df["lora.r"].dtype) == "Int64"
    unfinished = df[df["status"] == "unfinished"].iloc[0]
    assert unfinished["run_dir"].endswith("unfinished") and math.isnan(unfinished["f1"])


def test_collect_accepts_run_dir_glob_and_file(sweep: Path):
    one = report.collect([str(sweep / "tiny" / "0")])
    assert list(one["run_name"]) == ["tiny-r4-s0"]
    nested = report.collect([str(sweep / "multirun" / "*")])
    assert set(nested["status"]) == {"complete", "unfinished"} and len(nested) == 5
    assert len(report.collect([str(sweep / "0" / "metrics.json")])) == 1


def test_collect_raises_when_nothing_found(tmp_path: Path):
    with pytest.raises(MedsweepError, match=r"no run records.*no such path: .*missing\*"):
        report.collect([str(tmp_path), str(tmp_path / "missing*")])


def test_varying_axes(df: pd.DataFrame):
    assert report.varying_axes(df) == ["model", "lora.r", "train.seed"]
    assert report.config_axes(report.complete(df)) == ["model", "lora.r"]


# ------------------------------------------------------------------------- statistics

def test_t_critical_values():
    assert report.t_critical(1) == pytest.approx(12.706, abs=1e-3)
    assert report.t_critical(4) == pytest.approx(2.776, abs=1e-3)
    assert report.t_critical(30) == pytest.approx(2.042, abs=1e-3)
    assert report.t_critical(120) == pytest.approx(1.980, abs=1e-3)
    assert report.t_critical(10_000) == pytest.approx(1.960, abs=1e-3)


def test_bootstrap_interval_bounds_and_determinism():
    low, high = report.bootstrap_interval(TINY_F1)
    mean = statistics.fmean(TINY_F1)
    assert min(TINY_F1) <= low < mean < high <= max(TINY_F1)
    assert (low, high) == report.bootstrap_interval(TINY_F1)  # fixed seed 0
    sem = statistics.stdev(TINY_F1) / math.sqrt(len(TINY_F1))
    assert high - low == pytest.approx(2 * 1.96 * sem, rel=0.25)


# ------------------------------------------------------------------------- views

def test_by_model_table4_values(df: pd.DataFrame):
    table = report.by_model(df)
    assert list(table["model"]) == ["qwen2_0.5b", "smollm2_135m", "tiny"]
    for col in ["EM %", "BLEU", "ROUGE-1", "ROUGE-2", "ROUGE-L", "F1",
                "Inference s/answer", "Perplexity", "Δ F1", "Δ EM %"]:
        assert col in table.columns, col

    smol = row(table, model="smollm2_135m")
    f1s = F1[("smollm2_135m", 16)]
    assert smol["lora.r"] == 16  # best config by mean f1
    assert smol["F1"] == pytest.approx(statistics.fmean(f1s))
    assert smol["EM %"] == pytest.approx(100 * statistics.fmean(f / 4 for f in f1s))
    assert smol["BLEU"] == pytest.approx(statistics.fmean(f * 20 for f in f1s))
    assert smol["ROUGE-L"] == pytest.approx(statistics.fmean(f + 0.01 for f in f1s))
    assert smol["Perplexity"] == pytest.approx(statistics.fmean(10 - 10 * f for f in f1s))
    assert smol["Inference s/answer"] == pytest.approx(0.41)
    assert smol["Δ F1"] == pytest.approx(statistics.fmean(f1s) - BASE_F1["smollm2_135m"])
    assert smol["Δ EM %"] == pytest.approx(100 * (statistics.fmean(f1s) - 0.20) / 4)
    # t over seeds, computed independently
    h = half_width(f1s)
    assert smol["F1 lo"] == pytest.approx(statistics.fmean(f1s) - h, abs=1e-4)
    assert smol["F1 hi"] == pytest.approx(statistics.fmean(f1s) + h, abs=1e-4)
    h_em = half_width([100 * f / 4 for f in f1s])
    assert smol["EM % hi"] - smol["EM %"] == pytest.approx(h_em, rel=1e-4)
    assert smol["CI"] == "t over seeds (n=2)" and smol["n"] == 2

    qwen = row(table, model="qwen2_0.5b")
    assert qwen["lora.r"] == 4 and qwen["F1"] == pytest.approx(0.54)


def test_bootstrap_used_for_single_run_with_per_example(df: pd.DataFrame):
    tiny = row(report.by_model(df), model="tiny")
    mean = statistics.fmean(TINY_F1)
    assert tiny["CI"] == "bootstrap over examples (n=20)" and tiny["n"] == 1
    assert tiny["F1"] == pytest.approx(mean)
    assert min(TINY_F1) <= tiny["F1 lo"] <= mean <= tiny["F1 hi"] <= max(TINY_F1)
    assert (tiny["F1 lo"], tiny["F1 hi"]) == pytest.approx(report.bootstrap_interval(TINY_F1))
    em = [100 * float(v >= 0.5) for v in TINY_F1]
    assert tiny["EM %"] == pytest.approx(statistics.fmean(em))
    assert min(em) <= tiny["EM % lo"] <= statistics.fmean(em) <= tiny["EM % hi"] <= max(em)
    assert math.isnan(tiny["Perplexity lo"])  # no per-example perplexity: no interval
    assert math.isnan(tiny["BLEU lo"])  # per-example mean is not the reported BLEU


def test_by_config_marks_best_per_model(df: pd.DataFrame):
    table = report.by_config(df)
    assert len(table) == 5
    best = {(m, int(r)) for m, r in table.loc[table["best"], ["model", "lora.r"]].itertuples(
        index=False)}
    assert best == {("smollm2_135m", 16), ("qwen2_0.5b", 4), ("tiny", 4)}
    assert table["best"].dtype == bool


def test_pivot_over_one_and_two_axes(df: pd.DataFrame):
    by_r = report.pivot(df, by=["lora.r"])
    assert by_r.index.name == "lora.r" and list(by_r.index) == [4, 16]
    r4 = F1[("smollm2_135m", 4)] + F1[("qwen2_0.5b", 4)] + [statistics.fmean(TINY_F1)]
    r16 = F1[("smollm2_135m", 16)] + F1[("qwen2_0.5b", 16)]
    assert by_r.loc[4, "f1"] == pytest.approx(statistics.fmean(r4))
    assert by_r.loc[16, "f1"] == pytest.approx(statistics.fmean(r16))
    assert by_r.loc[16, "n"] == 4 and by_r.loc[16, "CI"] == "t over runs (n=4)"
    h = report.t_critical(3) * statistics.stdev(r16) / 2
    assert by_r.loc[16, "f1 hi"] == pytest.approx(statistics.fmean(r16) + h)

    both = report.pivot(df, by=["model", "lora.r"], metric="exact_match")
    assert both.index.names == ["model", "lora.r"]
    cell = both.loc[("qwen2_0.5b", 16)]
    assert cell["exact_match"] == pytest.approx(statistics.fmean([0.45 / 4, 0.47 / 4]))
    assert cell["CI"] == "t over seeds (n=2)" and not cell["best"]
    assert both.loc[("qwen2_0.5b", 4), "best"]
    # lower is better for perplexity: the best config is the one with the lowest mean
    ppl = report.pivot(df, by=["model", "lora.r"], metric="perplexity")
    assert ppl.loc[("smollm2_135m", 16), "best"] and not ppl.loc[("smollm2_135m", 4), "best"]


def test_axis_columns_survive_concat(df: pd.DataFrame):
    merged = pd.concat([df.iloc[:4], df.iloc[4:]])
    merged.attrs = {}
    assert report.axis_columns(merged) == report.axis_columns(df)
    assert report.varying_axes(merged) == ["model", "lora.r", "train.seed"]


def test_pivot_rejects_unknown_axis_and_metric(df: pd.DataFrame):
    with pytest.raises(MedsweepError, match="unknown axis"):
        report.pivot(df, by=["lora.rank"])
    with pytest.raises(MedsweepError, match="unknown metric"):
        report.pivot(df, by=["lora.r"], metric="accuracy")


def test_by_profile_latency(df: pd.DataFrame):
    table = report.by_profile(df)
    assert list(table.columns) == ["profile", "model", "n", "s/answer", "p50 s", "p95 s",
                                   "tokens/s"]
    smol = row(table, model="smollm2_135m")
    assert smol["profile"] == "local_cpu" and smol["n"] == 4
    assert smol["s/answer"] == pytest.approx(0.41)
    assert smol["p95 s"] == pytest.approx(0.60)
    assert smol["tokens/s"] == pytest.approx(250.0)


def test_failures_lists_failed_unfinished_corrupt(df: pd.DataFrame):
    table = report.failures(df)
    assert list(table.columns) == ["run_dir", "status", "error"]
    by_status = {s: e for s, e in zip(table["status"], table["error"])}
    assert set(by_status) == {"failed", "unfinished", "corrupt"}
    assert by_status["failed"] == "ValueError: boom"
    assert "unreadable" in by_status["corrupt"]


def test_missing_status_is_corrupt(tmp_path: Path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text('{"metrics": {"f1": 0.3}}')
    df = report.collect([str(tmp_path)])
    assert list(df["status"]) == ["corrupt"]
    assert report.by_model(df).empty


# ------------------------------------------------------------------------- writers

def test_write_tables_and_figures(df: pd.DataFrame, tmp_path: Path):
    figures = report.write_figures(df, tmp_path)
    names = {p.name for p in figures}
    assert names == {"metric_vs_epoch.png", "latency_by_profile.png",
                     "heatmap_f1_model_lora.r.png"}
    for png in figures:
        assert png.stat().st_size > 1000

    written = report.write_tables(df, tmp_path, figures=figures)
    out = tmp_path / "report"
    for stem in ["by_model", "by_config", "pivot_f1", "by_profile", "failures"]:
        for ext in ["md", "csv", "tex"]:
            path = out / f"{stem}.{ext}"
            assert path in written and path.stat().st_size > 0, path
    assert written[-1] == out / "report.md"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files

    text = (out / "report.md").read_text()
    assert "t over seeds" in text and "bootstrap" in text
    assert "## Best configuration per model (Table 4)" in text
    assert "## Failed, unfinished and corrupt runs" in text
    assert "ValueError: boom" in text and "![heatmap_f1_model_lora.r]" in text
    h = half_width(F1[("smollm2_135m", 16)])
    assert f"0.43 ± {h:.2g}" in (out / "by_model.md").read_text()
    cells = [[c.strip() for c in line.strip("|").split("|")]
             for line in (out / "by_config.md").read_text().splitlines()]
    assert {(c[0], c[1]) for c in cells if c[-1] == "*"} == {
        ("qwen2_0.5b", "4"), ("smollm2_135m", "16"), ("tiny", "4")}
    assert pd.read_csv(out / "by_config.csv")["best"].sum() == 3

    tex = (out / "by_model.tex").read_text()
    assert r"\toprule" in tex and r"$\pm$" in tex and r"EM \%" in tex
    csv = pd.read_csv(out / "by_model.csv")
    assert csv.loc[csv["model"] == "smollm2_135m", "EM %"].iloc[0] == pytest.approx(
        100 * statistics.fmean([0.40 / 4, 0.46 / 4]))
    pivot_csv = pd.read_csv(out / "pivot_f1.csv")
    assert list(pivot_csv.columns[:2]) == ["model", "lora.r"]
    assert len(pd.read_csv(out / "runs.csv")) == len(df)


def test_figures_skipped_without_epochs_or_two_axes(tmp_path: Path, caplog):
    write_record(tmp_path / "only", "smollm2_135m", 4, 0, 0.3)
    df = report.collect([str(tmp_path)])
    with caplog.at_level("INFO", logger="medsweep.report"):
        figures = report.write_figures(df, tmp_path)
    assert [p.name for p in figures] == ["latency_by_profile.png"]
    assert "skipping metric_vs_epoch.png" in caplog.text
    assert "skipping heatmap" in caplog.text


def test_report_with_no_complete_runs(tmp_path: Path):
    write_record(tmp_path / "bad", "smollm2_135m", 4, 0, None, status="failed",
                 error="RuntimeError: CUDA out of memory")
    df = report.collect([str(tmp_path)])
    assert report.write_figures(df, tmp_path) == []
    text = report.write_tables(df, tmp_path)[-1].read_text()
    assert "_(none)_" in text and "CUDA out of memory" in text


def test_report_sweep(sweep: Path):
    path = report.report_sweep(sweep)
    assert path == sweep / "report" / "report.md" and path.exists()
    assert (sweep / "report" / "latency_by_profile.png").exists()
    # the report dir does not become a run when the sweep is collected again
    assert len(report.collect([str(sweep)])) == 12


# ------------------------------------------------------------------------- CLI

def test_cli_empty_dir_returns_2_with_one_line(tmp_path: Path, capsys):
    assert report.main([str(tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medsweep-report: error: no run records")
    assert captured.out == ""


def test_cli_writes_report_and_prints_markdown(sweep: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert report.main([str(sweep), "--by", "model", "lora.r", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "# medsweep report" in stdout and "Table 4" in stdout
    assert (out / "report" / "report.md").exists()
    assert (out / "report" / "heatmap_f1_model_lora.r.png").exists()


def test_cli_default_out_is_first_dir_and_bad_metric(sweep: Path, capsys):
    assert report.main([str(sweep), "--metric", "rougeL"]) == 0
    assert (sweep / "report" / "pivot_rougeL.md").exists()
    capsys.readouterr()
    assert report.main([str(sweep), "--metric", "nope"]) == 2
    assert capsys.readouterr().err.startswith("medsweep-report: error: unknown metric 'nope'")
    assert report.main([str(sweep), "--by", "lora.rank", "model"]) == 2
    assert capsys.readouterr().err.startswith("medsweep-report: error: unknown axis lora.rank")


def test_cli_wandb_logs_tables(sweep: Path, tmp_path: Path, monkeypatch, capsys):
    calls = {}

    class FakeRun:
        def log(self, data):
            calls["log"] = data

        def finish(self):
            calls["finished"] = True

    fake = types.SimpleNamespace(
        init=lambda **kw: calls.setdefault("init", kw) and FakeRun(),
        Table=lambda dataframe: ("table", dataframe.shape))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    assert report.main([str(sweep), "--out", str(tmp_path), "--wandb"]) == 0
    assert calls["init"]["job_type"] == "report" and calls["finished"]
    expected = report.by_model(report.collect([str(sweep)])).shape
    assert calls["log"]["by_model"] == ("table", expected)
    assert calls["log"]["runs"][1][0] == 12
