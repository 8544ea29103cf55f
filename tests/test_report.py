"""Tests for medsweep.report on hand-made run records with known numbers (offline, fast)."""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsweep import report
from medsweep.errors import MedsweepError
from medsweep.report import figures, tables

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


# Two-sided 95% Student-t critical values from a published t table.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228}


def t_ci(values) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% t interval, computed by hand from the t table."""
    mean = statistics.fmean(values)
    h = T975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - h, mean + h


def md_rows(text: str) -> list[list[str]]:
    """The cells of a markdown table, header first (the separator line left out)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.strip().splitlines() if line.startswith("|")]
    return [rows[0], *rows[2:]]


@pytest.fixture
def drawn(monkeypatch) -> dict:
    """Figures by file name, captured instead of rendered (a placeholder file is written)."""
    figs: dict = {}

    def fake_save(fig, path):
        figs[Path(path).name] = fig
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"placeholder")
        return Path(path)

    monkeypatch.setattr(report.figures, "_save", fake_save)
    return figs


def lines_of(fig) -> dict:
    """label -> (x, y) of each line in the figure's plot axes."""
    ax = fig.axes[0]
    def values(data) -> list[float]:
        return np.ma.filled(np.ma.asarray(data, dtype=float), np.nan).tolist()

    return {ln.get_label(): (values(ln.get_xdata()), values(ln.get_ydata())) for ln in ax.get_lines()}


def bars_of(fig) -> dict:
    """label -> bar heights of each bar group in the figure's plot axes."""
    return {c.get_label(): [p.get_height() for p in c] for c in fig.axes[0].containers}


def ticks(labels) -> list[str]:
    return [t.get_text() for t in labels]


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


AXES = ["model", "lora.r", "lora.alpha", "lora.dropout", "train.max_seq_length", "data", "profile",
        "train.seed"]


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
    assert report.axis_columns(merged) == report.axis_columns(df) == AXES
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
    by_status = {s: e for s, e in zip(table["status"], table["error"], strict=True)}
    assert set(by_status) == {"failed", "unfinished", "corrupt"}
    assert by_status["failed"] == "ValueError: boom"
    assert "unreadable" in by_status["corrupt"]


def test_missing_status_is_corrupt(tmp_path: Path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text('{"metrics": {"f1": 0.3}}')
    df = report.collect([str(tmp_path)])
    assert list(df["status"]) == ["corrupt"]
    assert list(df["error"]) == ["metrics.json has no 'status'"]
    assert report.by_model(df).empty


# ------------------------------------------------------------------------- writers

def test_write_tables_and_figures(df: pd.DataFrame, tmp_path: Path):
    figures = report.write_figures(df, tmp_path)
    names = {p.name for p in figures}
    assert names == {"metric_vs_epoch.png", "latency_by_profile.png", "quality_vs_cost_f1.png",
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
    # no per-item predictions in the fixture: the best of a model with rivals is untested (*?); tiny has none
    assert {(c[0], c[1], c[-1]) for c in cells if c[-1].startswith("*")} == {
        ("qwen2_0.5b", "4", "*?"), ("smollm2_135m", "16", "*?"), ("tiny", "4", "*")}
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
    assert [p.name for p in figures] == ["quality_vs_cost_f1.png", "latency_by_profile.png"]
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


# ------------------------------------------------------------------------- more collecting

def raw_run(run_dir: Path, axes: dict | None = None, metrics: dict | None = None, **fields) -> Path:
    """A run dir with a hand-written metrics.json (status complete unless given)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"status": "complete", "axes": axes or {}, "metrics": metrics or {"f1": 0.5}, **fields}
    (run_dir / "metrics.json").write_text(json.dumps(record))
    return run_dir


def test_read_run_fields(tmp_path: Path):
    raw_run(tmp_path / "a", axes={"model": "m", "lora.target_modules": ["q_proj", "v_proj"]},
            metrics={"f1": 0.5}, run_name="named", error="warn",
            baseline={"f1": 0.25}, delta={"f1": 0.3}, gpu_hours=1.5,
            train={"steps": 7, "train_time_s": 2.5, "log_history": [{"loss": 1.0}]})
    raw_run(tmp_path / "b", metrics={"f1": 0.1}, run_name="", status="failed")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.json").write_text("[1, 2]")
    df = report.collect([str(tmp_path)])
    a = row(df, run_name="named")
    assert a["status"] == "complete" and a["error"] == "warn"
    assert a["lora.target_modules"] == '["q_proj", "v_proj"]'
    assert a["f1"] == 0.5 and a["baseline.f1"] == 0.25 and a["delta.f1"] == 0.3
    assert a["steps"] == 7 and a["train_time_s"] == 2.5 and a["gpu_hours"] == 1.5
    assert "log_history" not in df and "peak_memory_mb" not in df
    assert a["_epochs"] == [] and a["_per_example"] == {}
    assert df.attrs["axes"] == ["model", "lora.target_modules"]
    b = row(df, run_name="b")  # empty run_name: the directory's name
    assert b["status"] == "failed" and b["run_dir"] == str((tmp_path / "b").absolute())
    c = row(df, run_name="c")
    assert c["status"] == "corrupt" and c["error"] == "metrics.json has no 'status'"


@pytest.mark.parametrize("fields, problem", [
    ({"metrics": {"f1": "0.5"}}, "metrics.json metrics.f1 is not a number ('0.5')"),
    ({"metrics": {"f1": 0.5, "scores": {"x": 1}}}, "metrics.json metrics.scores is not a number"),
    ({"metrics": [0.5]}, "metrics.json 'metrics' is not a mapping"),
    ({"metrics": {}}, "metrics.json says complete but has no metrics"),
    ({"baseline": {"f1": True}}, "metrics.json baseline.f1 is not a number ('True')"),
    ({"axes": ["model"]}, "metrics.json 'axes' is not a mapping"),
    ({"epochs": {"not": "a list"}}, "metrics.json 'epochs' is not a list"),
    ({"per_example": ["not", "a", "dict"]}, "metrics.json 'per_example' is not a mapping"),
    ({"status": "done"}, "metrics.json has an unknown status 'done'"),
    ({"status": ["complete"]}, "metrics.json has an unknown status"),
    ({"status": "s" * 60}, f"metrics.json has an unknown status {'s' * 40!r}"),  # cut to 40 characters
    ({"baseline": [0.2]}, "metrics.json 'baseline' is not a mapping"),
    ({"delta": "0.1"}, "metrics.json 'delta' is not a mapping"),
    ({"train": [1, 2]}, "metrics.json 'train' is not a mapping"),
    ({"delta": {"f1": "x"}}, "metrics.json delta.f1 is not a number ('x')"),
    ({"metrics": {"f1": "v" * 60}}, f"metrics.json metrics.f1 is not a number ({'v' * 40!r})"),  # cut to 40
])
def test_malformed_records_are_corrupt_never_fatal_never_counted(tmp_path: Path, capsys, fields, problem):
    raw_run(tmp_path / "good", axes={"model": "m"}, metrics={"f1": 0.25})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text(json.dumps({"status": "complete", "axes": {"model": "m"},
                                                  "metrics": {"f1": 0.75}, **fields}))
    df = report.collect([str(tmp_path)])
    b = row(df, run_name="bad")
    assert b["status"] == "corrupt" and b["error"].startswith(problem), b["error"]
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / "report"
    by_model = pd.read_csv(out / "by_model.csv")
    assert by_model["n"].tolist() == [1] and by_model["F1"].tolist() == [0.25]  # only the good run counts
    assert "corrupt" in (out / "failures.md").read_text() and problem[:30] in (out / "failures.md").read_text()


def test_corrupt_record_error_names_the_parse_error(df: pd.DataFrame):
    corrupt = row(df, status="corrupt")
    assert corrupt["error"].startswith("metrics.json unreadable: Unterminated string")
    assert corrupt["run_name"] == "corrupt" and pd.isna(corrupt["f1"])
    unfinished = row(df, status="unfinished")
    assert pd.isna(unfinished["error"]) and unfinished["run_name"] == "unfinished"


def test_collect_without_nested_columns_and_dtypes(tmp_path: Path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text('{"metrics": {"f1": 0.3}}')
    df = report.collect([str(tmp_path)])
    assert df["_per_example"].tolist() == [{}] and df["_epochs"].tolist() == [[]]
    assert df.attrs["axes"] == []


def test_collect_axis_dtypes(df: pd.DataFrame):
    # whole numbers with gaps (unfinished/corrupt rows) become Int64, fractions stay float
    assert {c: str(df[c].dtype) for c in ["lora.r", "lora.alpha", "train.seed", "lora.dropout"]} == {
        "lora.r": "Int64", "lora.alpha": "Int64", "train.seed": "Int64", "lora.dropout": "float64"}
    assert str(df["f1"].dtype) == "float64"  # metrics are not axes: never converted


def test_collect_keeps_all_missing_axis_float(tmp_path: Path):
    raw_run(tmp_path / "a", axes={"model": "m", "x": None})
    (tmp_path / "b" / ".hydra").mkdir(parents=True)
    (tmp_path / "b" / ".hydra" / "config.yaml").write_text("{}")
    df = report.collect([str(tmp_path)])
    assert df["x"].isna().all() and str(df["x"].dtype) != "Int64"


def test_collect_warns_about_missing_paths(sweep: Path, tmp_path: Path, caplog):
    with caplog.at_level("WARNING", logger="medsweep.report"):
        df = report.collect([str(sweep / "tiny"), str(tmp_path / "nope")])
    assert len(df) == 1
    assert [r.getMessage() for r in caplog.records] == [f"no such path: {tmp_path / 'nope'}"]
    with pytest.raises(MedsweepError) as err:
        report.collect([str(tmp_path / "empty*"), str(sweep / "tiny" / "nothing")])
    assert str(err.value) == (f"no run records (metrics.json or .hydra/config.yaml) found under: "
                              f"{tmp_path / 'empty*'} {sweep / 'tiny' / 'nothing'} (no such path: "
                              f"{tmp_path / 'empty*'} {sweep / 'tiny' / 'nothing'})")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsweepError) as err:
        report.collect([str(tmp_path / "empty")])
    assert str(err.value) == ("no run records (metrics.json or .hydra/config.yaml) found under: "
                              f"{tmp_path / 'empty'}")


def test_collect_expands_home_and_recursive_globs(sweep: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(report.collect(["~/sweep/tiny"])) == 1
    deep = report.collect([str(tmp_path / "**" / "tiny")])  # ** spans any depth, the sweep dir included
    assert list(deep["run_name"]) == ["tiny-r4-s0"]
    hydra = report.collect([str(sweep / "0" / ".hydra" / "config.yaml")])
    assert list(hydra["run_dir"]) == [str((sweep / "0").absolute())]


def test_find_run_dirs_plain_config_yaml(tmp_path: Path):
    raw_run(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text("{}")  # the run's own config: same dir
    (tmp_path / "run" / "sub").mkdir()
    (tmp_path / "run" / "sub" / "config.yaml").write_text("{}")  # inside a run
    (tmp_path / "config.yaml").write_text("{}")  # above a run
    for hidden in ["wandb/run-1/files", ".cache/x"]:
        (tmp_path / "pending" / hidden).mkdir(parents=True)
        (tmp_path / "pending" / hidden / "config.yaml").write_text("{}")
    (tmp_path / "pending" / "config.yaml").write_text("{}")  # an unfinished run (plain config.yaml)
    (tmp_path / "pending" / "inner").mkdir()
    (tmp_path / "pending" / "inner" / "config.yaml").write_text("{}")  # inside that one
    (tmp_path / "other" / "wandb" / "run-2").mkdir(parents=True)
    (tmp_path / "other" / "wandb" / "run-2" / "config.yaml").write_text("{}")  # only wandb: no run
    assert report.find_run_dirs([str(tmp_path)]) == [(tmp_path / "pending").absolute(),
                                                     (tmp_path / "run").absolute()]
    # searched from inside the hidden folder itself, its config counts
    assert report.find_run_dirs([str(tmp_path / "other" / "wandb" / "run-2")]) == [
        (tmp_path / "other" / "wandb" / "run-2").absolute()]
    df = report.collect([str(tmp_path)])
    assert list(df["status"]) == ["unfinished", "complete"]


# ------------------------------------------------------------------------- more statistics

def test_t_critical_table_and_expansion():
    for df_, value in T975.items():
        assert report.t_critical(df_) == pytest.approx(value, abs=6e-4), df_
    # published quantiles, to the precision the table gives them
    for df_, value, tol in [(11, 2.200985160, 6e-6), (12, 2.178812830, 4e-6), (15, 2.131449546, 2e-6),
                            (20, 2.085963447, 3e-7), (30, 2.042272456, 4e-8), (60, 2.000297822, 2e-9)]:
        assert report.t_critical(df_) == pytest.approx(value, abs=tol), df_
    with pytest.raises(ValueError, match=r"^t_critical needs df >= 1, got 0$"):
        report.t_critical(0)


def test_t_interval_by_hand():
    assert report.t_interval([1.0, 3.0]) == pytest.approx((2.0, 2.0 - 12.706, 2.0 + 12.706), abs=1e-3)
    mean, _, high = report.t_interval([1, 2, 3, 4, 5])
    assert (mean, high - mean) == pytest.approx((3.0, 2.776 * math.sqrt(2.5) / math.sqrt(5)), abs=1e-3)


def bootstrap_by_hand(scores, n_boot=1000, seed=0):
    """The documented percentile bootstrap: n_boot resamples with numpy's default_rng(seed)."""
    x = np.array([s for s in scores if not math.isnan(s)])
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    means = sorted(x[i].mean() for i in idx)
    return np.percentile(means, 2.5), np.percentile(means, 97.5)


def test_bootstrap_interval_matches_the_documented_procedure():
    assert report.bootstrap_interval(TINY_F1) == pytest.approx(bootstrap_by_hand(TINY_F1))
    assert report.bootstrap_interval(TINY_F1, n_boot=50, seed=3) == pytest.approx(
        bootstrap_by_hand(TINY_F1, 50, 3))
    assert report.bootstrap_interval([1.0, float("nan"), 1.0]) == (1.0, 1.0)  # NaN scores left out


# ------------------------------------------------------------------------- more views

def test_by_config_ci_labels_single_runs_and_duplicates(tmp_path: Path):
    raw_run(tmp_path / "a", {"model": "m", "lora.r": 4}, {"f1": 0.3})
    raw_run(tmp_path / "b", {"model": "m", "lora.r": 16}, {"f1": 0.2})
    raw_run(tmp_path / "c", {"model": "m", "lora.r": 16}, {"f1": 0.6})  # same axes: one replicate
    raw_run(tmp_path / "d", {"model": "n", "lora.r": 4}, {"f1": 0.4, "rougeL": 0.1},
            per_example={"f1": [0.4]})  # one score: no bootstrap
    table = report.by_config(report.collect([str(tmp_path)]))
    assert list(zip(table["model"], table["lora.r"], table["n"], table["CI"], strict=True)) == [
        ("m", 4, 1, "single run"), ("m", 16, 1, "single run"), ("n", 4, 1, "single run")]
    assert list(table["F1"]) == pytest.approx([0.3, 0.4, 0.4])
    assert list(table["best"]) == [False, True, True]
    assert "F1 lo" not in table and "Δ F1" not in table  # no interval, no baseline anywhere
    assert list(table["ROUGE-L"].isna()) == [True, True, False]


def test_replicates_with_a_missing_axis_value_are_kept(tmp_path: Path):
    raw_run(tmp_path / "a", {"model": "m", "train.seed": 0, "note": "x"}, {"f1": 0.2})
    raw_run(tmp_path / "b", {"model": "m", "train.seed": 1}, {"f1": 0.4})
    table = report.by_model(report.collect([str(tmp_path)]))
    assert table.loc[0, "n"] == 2 and table.loc[0, "F1"] == pytest.approx(0.3)
    assert table.loc[0, "CI"] == "t over runs (n=2)"  # the runs differ in more than the seed


def test_by_config_without_model_axis_marks_one_best(tmp_path: Path):
    for i, (r, f1) in enumerate([(4, 0.3), (16, 0.5), (8, 0.4)]):
        raw_run(tmp_path / str(i), {"lora.r": r}, {"f1": f1, "perplexity": 5 - f1})
    df = report.collect([str(tmp_path)])
    assert report.config_axes(df) == ["lora.r"]
    table = report.by_config(df)
    assert list(table["lora.r"]) == [4, 8, 16] and list(table["best"]) == [False, False, True]
    ppl = report.by_config(df, "perplexity")
    assert list(ppl["best"]) == [False, False, True]  # lowest perplexity
    assert report.by_model(df, "perplexity")["lora.r"].tolist() == [16]
    piv = report.pivot(df)
    assert list(piv.index) == [4, 8, 16] and "best" not in piv


def test_config_axes_always_include_model(tmp_path: Path):
    raw_run(tmp_path / "a", {"model": "m", "lora.r": 4, "train.seed": 0}, {"f1": 0.2})
    raw_run(tmp_path / "b", {"model": "m", "lora.r": 16, "train.seed": 1}, {"f1": 0.4})
    df = report.collect([str(tmp_path)])
    assert report.varying_axes(df) == ["lora.r", "train.seed"]
    assert report.config_axes(df) == ["model", "lora.r"]
    only = report.collect([str(tmp_path / "a")])
    assert report.config_axes(only) == ["model"] and report.varying_axes(only) == []


def test_by_model_picks_the_best_config_by_the_given_metric(tmp_path: Path):
    """Best configuration per model by rougeL (higher) or latency (lower), not by F1."""
    for i, (r, f1, rouge, p50) in enumerate([(4, 0.5, 0.1, 0.3), (16, 0.3, 0.4, 0.9), (32, 0.4, 0.2, 0.2)]):
        raw_run(tmp_path / str(i), {"model": "m", "lora.r": r},
                {"f1": f1, "rougeL": rouge, "latency_p50_s": p50})
    df = report.collect([str(tmp_path)])
    assert report.by_model(df)["lora.r"].tolist() == [4]
    assert report.by_model(df, "rougeL")["lora.r"].tolist() == [16]
    table = report.by_model(df, "latency_p50_s")
    assert table["lora.r"].tolist() == [32] and table["latency_p50_s"].tolist() == [0.2]
    assert list(table.index) == [0] and "best" not in table
    assert report.pivot(df, by=["model", "lora.r"], metric="rougeL")["best"].tolist() == [False, True, False]
    assert report.pivot(df, by=["model", "lora.r"], metric="latency_p50_s")["best"].tolist() == [
        False, False, True]
    report.write_tables(df, tmp_path / "out", metric="rougeL")
    assert pd.read_csv(tmp_path / "out" / "report" / "by_model.csv")["lora.r"].tolist() == [16]
    assert pd.read_csv(tmp_path / "out" / "report" / "by_config.csv")["best"].tolist() == [False, True, False]
    report.write_tables(df, tmp_path / "out", metric="latency_p50_s")
    by_config = pd.read_csv(tmp_path / "out" / "report" / "by_config.csv")
    assert by_config["best"].tolist() == [False, False, True] and "latency_p50_s" in by_config


def test_known_metric_not_measured_gives_no_best(df: pd.DataFrame):
    table = report.by_config(df, "decision_accuracy")
    assert len(table) == 5 and not table["best"].any()
    assert "decision_accuracy" not in table and set(table["CI"]) == {""} and set(table["n"]) == {0}
    assert report.by_model(df, "decision_accuracy").empty
    piv = report.pivot(df, by=["model"], metric="decision_accuracy")
    assert not piv["best"].any() and list(piv.columns) == ["n", "CI", "best", "mark"]
    assert set(piv["mark"]) == {""}


def test_delta_from_delta_section_or_baseline(tmp_path: Path):
    raw_run(tmp_path / "a", {"model": "a"}, {"f1": 0.5, "exact_match": 0.2},
            baseline={"f1": 0.4, "exact_match": 0.1}, delta={"f1": 0.25})  # recorded delta wins
    raw_run(tmp_path / "b", {"model": "b"}, {"f1": 0.5, "exact_match": 0.2},
            baseline={"f1": 0.1, "exact_match": 0.05})  # no delta: finetuned - baseline
    table = report.by_model(report.collect([str(tmp_path)]))
    assert list(table["Δ F1"]) == pytest.approx([0.25, 0.4])
    assert list(table["Δ EM %"]) == pytest.approx([10.0, 15.0])


def test_per_example_only_when_it_averages_to_the_reported_value(tmp_path: Path, caplog):
    close = [0.2, 0.4, 0.6]  # mean 0.4
    raw_run(tmp_path / "a", {"model": "a"}, {"f1": 0.4 * (1 + 5e-4), "bleu": 0.4 + 5e-5, "rouge1": 0.41},
            per_example={"f1": close, "bleu": close, "rouge1": close})
    with caplog.at_level("DEBUG", logger="medsweep.report"):
        table = report.by_model(report.collect([str(tmp_path)]))
    assert table.loc[0, "CI"] == "bootstrap over examples (n=3)"
    assert (table.loc[0, "F1 lo"], table.loc[0, "F1 hi"]) == pytest.approx(bootstrap_by_hand(close))
    assert (table.loc[0, "BLEU lo"], table.loc[0, "BLEU hi"]) == pytest.approx(bootstrap_by_hand(close))
    assert "ROUGE-1 lo" not in table  # 0.4 is not 0.41
    assert "per-example rouge1 mean 0.4 != reported 0.41: no bootstrap" in caplog.messages


def test_bootstrap_uses_the_run_that_has_the_metric(tmp_path: Path):
    raw_run(tmp_path / "a", {"model": "m", "x": 1}, {"rougeL": 0.3}, per_example={"f1": [0.0, 1.0]})
    raw_run(tmp_path / "b", {"model": "m", "x": 1, "extra": 2}, {"f1": 0.5}, per_example={"f1": [0.0, 1.0]})
    table = report.pivot(report.collect([str(tmp_path)]), by=["model"])
    assert table.loc["m", "CI"] == "bootstrap over examples (n=2)"


def test_pivot_without_axes_is_one_row(tmp_path: Path):
    raw_run(tmp_path / "a", metrics={"f1": 0.3})
    df = report.collect([str(tmp_path)])
    table = report.pivot(df)
    assert list(table.index) == [0] and table.loc[0, "f1"] == 0.3 and table.loc[0, "CI"] == "single run"
    assert report.views(df)["pivot_f1"][0] == "f1 by "


def test_pivot_empty_without_complete_runs(tmp_path: Path):
    raw_run(tmp_path / "a", {"model": "m"}, {"f1": 0.3}, status="failed")
    df = report.collect([str(tmp_path)])
    assert report.pivot(df).empty and report.by_config(df).empty and report.by_model(df).empty
    assert list(report.by_profile(df).columns) == ["model", "n"]


def test_by_profile_groups_and_empty_columns(tmp_path: Path):
    raw_run(tmp_path / "a", {"model": "m", "profile": "gpu"}, {"seconds_per_answer": 0.2})
    raw_run(tmp_path / "b", {"model": "m", "profile": "gpu"}, {"seconds_per_answer": 0.4})
    raw_run(tmp_path / "c", {"model": "m", "profile": "cpu"}, {"seconds_per_answer": 1.0, "latency_p50_s": 0.9})
    table = report.by_profile(report.collect([str(tmp_path)]))
    assert list(table.columns) == ["profile", "model", "n", "s/answer", "p50 s"]
    assert table.values.tolist()[0][:4] == ["cpu", "m", 1, 1.0]
    assert table.values.tolist()[1][:4] == ["gpu", "m", 2, pytest.approx(0.3)]
    none = report.collect([str(tmp_path / "a")]).drop(columns=["seconds_per_answer"])
    assert list(report.by_profile(none).columns) == ["profile", "model", "n"]
    no_keys = report.collect([str(raw_run(tmp_path / "z" / "d", {}, {"seconds_per_answer": 1.0}))])
    assert list(report.by_profile(no_keys).columns) == ["n", "s/answer"]  # nothing to group by


def test_failures_and_runs_table(df: pd.DataFrame):
    fails = report.failures(df)
    assert list(fails.index) == [0, 1, 2]
    assert sorted(fails["run_dir"].map(lambda d: Path(d).name)) == ["corrupt", "failed", "unfinished"]
    runs = report.runs_table(df)
    assert len(runs) == 12 and "_per_example" not in runs and "_epochs" not in runs
    assert list(runs.columns) == [c for c in df.columns if c not in ("_per_example", "_epochs", "_definitions")]


def test_check_axes_with_no_axes(tmp_path: Path):
    raw_run(tmp_path / "a", metrics={"f1": 0.3})
    df = report.collect([str(tmp_path)])
    with pytest.raises(MedsweepError, match=r"^unknown axis model; axes in these runs: none$"):
        report.pivot(df, by=["model"])
    with pytest.raises(MedsweepError, match=r"^unknown metric 'x'; metrics in these runs: f1$"):
        report.pivot(df, metric="x")
    (tmp_path / "a" / "metrics.json").write_text('{"status": "failed"}')
    with pytest.raises(MedsweepError, match=r"^unknown metric 'x'; metrics in these runs: none$"):
        report.by_config(report.collect([str(tmp_path)]), "x")
    assert report.by_config(report.collect([str(tmp_path)]), "seconds_per_answer").empty  # known name


# ------------------------------------------------------------------------- formatting

def test_num_and_cell_formatting():
    assert [tables._num(x) for x in [None, pd.NA, math.nan, True, np.bool_(False), 3, np.int64(4), 2.0,
                                     0.123456, np.float32(0.5), "abc"]] == [
        "", "", "", "True", "False", "3", "4", "2", "0.1235", "0.5", "abc"]
    assert tables._cell(0.5, 0.4, 0.7, "t over seeds (n=2)") == "0.5 ± 0.15"
    assert tables._cell(0.5, 0.4, 0.7, "bootstrap over examples (n=9)") == "0.5 [0.4, 0.7]"
    assert tables._cell(0.5, math.nan, 0.7, "t") == tables._cell(0.5, 0.4, None, "t") == "0.5"


def test_display_markdown_and_latex(df: pd.DataFrame):
    piv = report.pivot(df, by=["model", "lora.r"])
    shown = report.display(piv)
    assert list(shown.columns) == ["model", "lora.r", "n", "CI", "f1", "Δ f1", "best"]
    assert list(shown["best"]) == ["*?", "", "", "*?", "*"]  # untested: the fixture keeps no predictions
    assert shown.loc[4, "f1"] == "0.45 [0.325, 0.585]" and shown.loc[4, "lora.r"] == "4"
    assert shown.loc[0, "f1"] == f"0.54 ± {half_width(F1[('qwen2_0.5b', 4)]):.2g}"
    rows = md_rows(report.to_markdown(piv))
    assert rows[0] == ["model", "lora.r", "n", "CI", "f1", "Δ f1", "best"]
    assert rows[1] == ["qwen2_0.5b", "4", "2", "t over seeds (n=2)", "0.54 ± 0.25", "0.24", "*?"]
    assert report.to_markdown(pd.DataFrame()) == "_(none)_"
    assert report.display(pd.DataFrame(columns=["a"])).columns.tolist() == ["a"]
    tex = report.to_latex(report.by_model(df))
    assert r"0.43 $\pm$ 0.38" in tex and r"$\Delta$ F1" in tex and r"EM \%" in tex and "±" not in tex
    no_ci = report.display(pd.DataFrame({"x": [1.0], "x lo": [0.5], "x hi": [1.5]}))
    assert no_ci.values.tolist() == [["1 [0.5, 1.5]"]]


def test_display_without_ci_column_and_latex_layout():
    view = pd.DataFrame({"x": [1.0, 2.5], "x lo": [0.5, 2.0], "x hi": [1.5, 3.0], "y": [1, 2], "y lo": [0, 1]},
                        index=[5, 7])
    shown = report.display(view)
    assert list(shown.columns) == ["x", "y", "y lo"]  # y has no hi: left as it is
    assert shown.values.tolist() == [["1 [0.5, 1.5]", "1", "0"], ["2.5 [2, 3]", "2", "1"]]
    assert report.to_latex(pd.DataFrame({"a": [1.5], "Δ b": ["±"]})) == (
        "\\begin{tabular}{ll}\n\\toprule\na & $\\Delta$ b \\\\\n\\midrule\n1.5 & $\\pm$ \\\\\n"
        "\\bottomrule\n\\end{tabular}\n")


def test_summary_line_and_report_layout(df: pd.DataFrame, tmp_path: Path):
    written = report.write_tables(df, tmp_path / "new" / "dir", figures=[tmp_path / "a.png", "x/b.png"])
    out = tmp_path / "new" / "dir" / "report"
    assert written == [out / f"{stem}.{ext}" for stem in
                       ["by_model", "by_config", "pivot_f1", "by_profile", "failures"]
                       for ext in ["md", "csv", "tex"]] + [out / "agreement.csv", out / "runs.csv", out / "report.md"]
    text = (out / "report.md").read_text()
    sections = [line for line in text.splitlines() if line.startswith("#")]
    assert sections == ["# medsweep report", "## Best configuration per model (Table 4)",
                        "## All configurations", "## f1 by model, lora.r", "## Latency by profile and model",
                        "## Failed, unfinished and corrupt runs", "## Agreement between metrics",
                        "## Metric definitions", "## Figures"]
    assert text.startswith(
        "# medsweep report\n\n12 runs (9 complete, 1 corrupt, 1 failed, 1 unfinished); 5.00 GPU hours in total."
        "\n\n95% confidence intervals: `mean ± half-width` is a Student-t interval over seeds (t over seeds, "
        "df = n − 1) for configurations with ≥ 2 seeds; `mean [low, high]` is a percentile bootstrap over eval "
        "examples (1000 resamples, seed 0) for configurations with a single run and per-example scores; a bare "
        "number is a single run without an interval. The `CI` column says which was used.\n\n"
        + report.SIGNIF_NOTE + "\n\n## Best configuration per model (Table 4)\n\n| model ")
    assert text.endswith("## Figures\n\n![a](a.png)\n\n![b](b.png)\n\nFull run table: `runs.csv`.\n")
    by_model = (out / "by_model.md").read_text()
    assert by_model.endswith("|\n") and f"## Best configuration per model (Table 4)\n\n{by_model}\n" in text
    assert (out / "pivot_f1.csv").read_text().startswith("model,lora.r,n,CI,f1,")
    assert (out / "by_config.csv").read_text().startswith("model,lora.r,n,CI,EM %,")
    assert (out / "by_model.tex").read_text().startswith("\\begin{tabular}")
    assert (out / "runs.csv").read_text().startswith("run_dir,run_name,status,error,model,lora.r,")  # no index
    assert (out / "failures.csv").read_text().startswith("run_dir,status,error\n")
    # rewritten in place; no figures: no Figures section
    again = report.write_tables(df, tmp_path / "new" / "dir")
    assert again[-1].read_text().endswith("\n\nFull run table: `runs.csv`.\n") and "## Figures" not in again[
        -1].read_text()


def test_summary_line_without_gpu_hours(tmp_path: Path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    text = report.write_tables(report.collect([str(tmp_path)]), tmp_path)[-1].read_text()
    assert "\n1 runs (1 corrupt); 0.00 GPU hours in total.\n" in text


# ------------------------------------------------------------------------- figures (test_report_figures.py)

def test_report_sweep_uses_the_metric(sweep: Path, drawn):
    path = report.report_sweep(sweep, metric="rougeL")
    assert path == sweep / "report" / "report.md"
    assert (sweep / "report" / "pivot_rougeL.csv").exists() and "heatmap_rougeL_model_lora.r.png" in drawn
    assert "![heatmap_rougeL_model_lora.r](heatmap_rougeL_model_lora.r.png)" in path.read_text()
    assert "![latency_by_profile](latency_by_profile.png)" in path.read_text()
    # each figure's caption in italics under it, the same text as under the HTML report's figure
    assert f"![latency_by_profile](latency_by_profile.png)\n\n*{report.caption('latency_by_profile.png')}*\n" \
        in path.read_text()
    assert report.caption("latency_by_profile.png").startswith("Mean seconds per answer")


# ------------------------------------------------------------------------- stages

def stage_run(path: Path, metrics: dict, baseline: dict | None = None, init: str | None = None,
              questions=("What is gout?", "What is anemia?"), baseline_questions=None, data="medquad") -> Path:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(
        {"status": "complete", "axes": {"model": "smollm2_135m", "data": data}, "metrics": metrics,
         "baseline": baseline}))
    if init is not None:
        (path / "config.yaml").write_text(f"train:\n  init_adapter: {json.dumps(init)}\n")
    for name, qs in [("predictions.jsonl", questions), ("predictions_baseline.jsonl", baseline_questions)]:
        if qs is not None:
            (path / name).write_text("".join(json.dumps({"question": q, "generated": "x"}, ensure_ascii=False)
                                             + "\n" for q in qs))
    return path


def short_hash(questions) -> str:
    import hashlib

    return hashlib.sha256("\n".join(questions).encode()).hexdigest()[:8]


def test_stages_chain_table(tmp_path: Path, monkeypatch):
    runs = tmp_path / "runs"
    qs = ["What is gout?", "What is a\u2028line separator?"]
    stage_run(runs / "s1", {"f1": 0.2, "exact_match": 0.1, "rougeL": 0.15, "decision_accuracy": 0.5},
              baseline={"f1": 0.1, "exact_match": 0.05, "rougeL": 0.1}, questions=qs,
              baseline_questions=qs[:1])
    stage_run(runs / "s2", {"f1": 0.3, "exact_match": 0.5, "rougeL": 0.25}, baseline={"f1": 9.0},
              init=str(runs / "s1" / "adapter"), questions=None, data="synth")
    stage_run(runs / "s3", {"f1": 0.4, "exact_match": 0.25}, init="results/runs/s2", questions=qs, data="x")
    monkeypatch.chdir(tmp_path)  # results/runs/s2 does not resolve from here: found next to s3
    assert report.stage_chain(runs / "s3") == [runs / "s1", runs / "s2", runs / "s3"]
    table = report.stages(runs / "s3")
    assert list(table.columns) == ["stage", "model", "data", "run", "eval set", "EM %", "ROUGE-L", "F1"]
    assert list(table["stage"]) == ["base", "stage 1", "stage 2", "stage 3"]
    assert list(table["model"]) == ["smollm2_135m"] * 4
    assert list(table["data"]) == ["", "medquad", "synth", "x"] and list(table["run"]) == ["", "s1", "s2", "s3"]
    assert list(table["eval set"].fillna("-")) == [short_hash(qs[:1]), short_hash(qs), "-", short_hash(qs)]
    assert list(table["F1"]) == [0.1, 0.2, 0.3, 0.4]
    assert list(table["EM %"]) == pytest.approx([5.0, 10.0, 50.0, 25.0])
    assert table["ROUGE-L"].tolist()[:3] == [0.1, 0.15, 0.25] and pd.isna(table["ROUGE-L"].iloc[3])
    only_f1 = report.stages(runs / "s3", metrics={"f1": "F1", "exact_match": "EM"})
    assert list(only_f1.columns) == ["stage", "model", "data", "run", "eval set", "F1", "EM"]
    assert list(only_f1["EM"]) == pytest.approx([5.0, 10.0, 50.0, 25.0])  # exact_match in percent


def test_stage_chain_forms(tmp_path: Path):
    a = stage_run(tmp_path / "a", {"f1": 0.1})
    b = stage_run(tmp_path / "b", {"f1": 0.2}, init=str(a))  # the run dir itself
    assert report.stage_chain(b) == [a, b]
    assert report.stage_chain(a) == [a]
    table = report.stages(a)  # no baseline: no base row
    assert list(table["stage"]) == ["stage 1"]
    (a / "config.yaml").write_text(f"train:\n  init_adapter: {json.dumps(str(b))}\n")  # a loop ends
    assert report.stage_chain(b) == [a, b]
    (a / "config.yaml").write_text("")
    assert report.stage_chain(b) == [a, b]
    (a / "config.yaml").write_text("train: {}\n")
    assert report.stage_chain(b) == [a, b]
    c = stage_run(tmp_path / "c", {"f1": 0.3}, init=str(tmp_path / "gone" / "adapter"))
    with pytest.raises(MedsweepError) as err:
        report.stage_chain(c)
    assert str(err.value) == f"{tmp_path / 'gone'}: no metrics.json (not a finished medsweep run)"


def test_stage_chain_follows_absolute_paths_elsewhere(tmp_path: Path):
    a = stage_run(tmp_path / "first" / "a", {"f1": 0.1, "exact_match": "n/a"})
    b = stage_run(tmp_path / "later" / "b", {"f1": 0.2, "exact_match": 0.5}, init=str(a / "adapter"))
    c = stage_run(tmp_path / "later" / "c", {"f1": 0.3}, init=str(b))
    assert report.stage_chain(c) == [a, b, c]
    table = report.stages(c)
    assert list(table["run"]) == ["a", "b", "c"]
    assert table["EM %"].tolist()[1] == 50.0 and table["EM %"].isna().tolist() == [True, False, True]


def test_cli_stages_prints_and_writes(tmp_path: Path, capsys):
    s1 = stage_run(tmp_path / "s1", {"f1": 0.2}, baseline={"f1": 0.1})
    s2 = stage_run(tmp_path / "s2", {"f1": 0.3}, init=str(s1))
    assert report.main([str(s2), "--stages", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    rows = md_rows(out)
    assert [r[0] for r in rows] == ["stage", "base", "stage 1", "stage 2"] and rows[0][-1] == "F1"
    assert [r[-1] for r in rows[1:]] == ["0.1", "0.2", "0.3"]
    assert (tmp_path / "out" / "stages.md").read_text() == out
    assert report.main([str(s2), "--stages"]) == 0
    assert not (tmp_path / "report").exists()
    assert report.main([str(tmp_path / "nothing"), "--stages"]) == 2
    assert capsys.readouterr().err.startswith("medsweep-report: error: ")


# ------------------------------------------------------------------------- CLI

METRICS_IN_RUNS = ("exact_match, f1, bleu, rouge1, rouge2, rougeL, perplexity, latency_p50_s, latency_p95_s, "
                   "seconds_per_answer, generated_tokens_per_s")


def config_means(shift: float = 0.0) -> dict:
    """(model, lora.r) -> mean over seeds of f1 + shift (rougeL is f1 + 0.01 in the fixture)."""
    means = {key: statistics.fmean(f + shift for f in values) for key, values in F1.items()}
    return {**means, ("tiny", 4): statistics.fmean(TINY_F1) + shift}


def check_pivot_csv(path: Path, metric: str, shift: float, tiny_ci: str) -> None:
    """pivot_<metric>.csv over model × lora.r holds the fixture's means and t intervals."""
    table = pd.read_csv(path)
    assert list(table.columns) == ["model", "lora.r", "n", "CI", metric, f"{metric} lo", f"{metric} hi",
                                   f"Δ {metric}", "best", "mark"]
    expected = config_means(shift)
    assert [(m, r) for m, r in zip(table["model"], table["lora.r"], strict=True)] == sorted(expected)
    for (model, r), mean in expected.items():
        cell = row(table, model=model, **{"lora.r": r})
        assert cell[metric] == pytest.approx(mean)
        assert cell[f"Δ {metric}"] == pytest.approx(mean - shift - BASE_F1[model])
        if model != "tiny":
            _, low, high = t_ci([f + shift for f in F1[(model, r)]])
            assert (cell[f"{metric} lo"], cell[f"{metric} hi"]) == pytest.approx((low, high), abs=1e-3)
            assert cell["CI"] == "t over seeds (n=2)" and cell["n"] == 2
        else:
            assert cell["CI"] == tiny_ci and cell["n"] == 1
    best = {(m, r) for m, r, b in zip(table["model"], table["lora.r"], table["best"], strict=True) if b}
    assert best == {("smollm2_135m", 16), ("qwen2_0.5b", 4), ("tiny", 4)}


def test_cli_empty_dir_returns_2_with_one_line(tmp_path: Path, capsys):
    assert report.main([str(tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medsweep-report: error: no run records")
    assert captured.out == ""


def test_cli_writes_report_and_prints_markdown(sweep: Path, tmp_path: Path, capsys, drawn):
    out = tmp_path / "out"
    assert report.main([str(sweep), "--by", "model", "lora.r", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    stdout = captured.out
    assert "# medsweep report" in stdout and "Table 4" in stdout
    assert (out / "report" / "report.md").exists()
    assert (out / "report" / "heatmap_f1_model_lora.r.png").exists()
    assert stdout == (out / "report" / "report.md").read_text() + "\n"
    assert captured.err.splitlines()[-1] == f"medsweep-report: wrote {out / 'report' / 'report.md'}"
    check_pivot_csv(out / "report" / "pivot_f1.csv", "f1", 0.0, "bootstrap over examples (n=20)")
    assert "## f1 by model, lora.r\n" in stdout
    heat = drawn["heatmap_f1_model_lora.r.png"].axes[0]
    assert (heat.get_ylabel(), heat.get_xlabel()) == ("model", "lora.r")
    assert not (sweep / "report").exists()  # --out, not the sweep dir


def test_cli_by_sets_pivot_and_heatmap_axes(sweep: Path, tmp_path: Path, capsys, drawn):
    """--by lora.r model: the pivot and the heatmap follow the given axes and their order."""
    assert report.main([str(sweep), "--by", "lora.r", "model", "--out", str(tmp_path)]) == 0
    out = tmp_path / "report"
    table = pd.read_csv(out / "pivot_f1.csv")
    assert list(table.columns[:2]) == ["lora.r", "model"]
    assert list(zip(table["lora.r"], table["model"], strict=True)) == [
        (4, "qwen2_0.5b"), (4, "smollm2_135m"), (4, "tiny"), (16, "qwen2_0.5b"), (16, "smollm2_135m")]
    means = config_means()
    assert list(table["f1"]) == pytest.approx(
        [means[m, r] for r, m in zip(table["lora.r"], table["model"], strict=True)])
    assert "## f1 by lora.r, model\n" in (out / "report.md").read_text()
    assert set(drawn) == {"metric_vs_epoch.png", "quality_vs_cost_f1.png", "latency_by_profile.png",
                          "heatmap_f1_lora.r_model.png"}
    heat = drawn["heatmap_f1_lora.r_model.png"].axes[0]
    assert (heat.get_ylabel(), heat.get_xlabel()) == ("lora.r", "model")
    assert ticks(heat.get_yticklabels()) == ["4", "16"]

    # one axis: the pivot over lora.r alone; the heatmap falls back to the varying axes
    drawn.clear()
    assert report.main([str(sweep), "--by", "lora.r", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(out / "pivot_f1.csv")
    r4 = F1[("smollm2_135m", 4)] + F1[("qwen2_0.5b", 4)] + [statistics.fmean(TINY_F1)]
    r16 = F1[("smollm2_135m", 16)] + F1[("qwen2_0.5b", 16)]
    assert list(table["lora.r"]) == [4, 16] and "model" not in table and "best" not in table
    assert list(table["f1"]) == pytest.approx([statistics.fmean(r4), statistics.fmean(r16)])
    assert list(table["n"]) == [5, 4]
    assert list(table["CI"]) == ["t over runs (n=5)", "t over runs (n=4)"]
    assert list(table["f1 hi"]) == pytest.approx([t_ci(r4)[2], t_ci(r16)[2]], abs=1e-3)
    assert "## f1 by lora.r\n" in (out / "report.md").read_text()
    assert "heatmap_f1_model_lora.r.png" in drawn


def test_cli_default_out_is_first_dir_and_bad_metric(sweep: Path, capsys, drawn):
    assert report.main([str(sweep), "--metric", "rougeL"]) == 0
    assert (sweep / "report" / "pivot_rougeL.md").exists()
    check_pivot_csv(sweep / "report" / "pivot_rougeL.csv", "rougeL", 0.01, "single run")
    text = (sweep / "report" / "report.md").read_text()
    assert "## rougeL by model, lora.r\n" in text
    assert "![heatmap_rougeL_model_lora.r](heatmap_rougeL_model_lora.r.png)" in text
    assert "metric_vs_epoch" not in text  # the epochs hold no rougeL
    image = drawn["heatmap_rougeL_model_lora.r.png"].axes[0].images[0].get_array()
    means = config_means(0.01)
    assert np.ma.filled(image, np.nan).ravel().tolist() == pytest.approx(
        [means["qwen2_0.5b", 4], means["qwen2_0.5b", 16], means["smollm2_135m", 4], means["smollm2_135m", 16],
         means["tiny", 4], np.nan], nan_ok=True)
    best = pd.read_csv(sweep / "report" / "by_model.csv")
    assert list(best["ROUGE-L"]) == pytest.approx([means["qwen2_0.5b", 4], means["smollm2_135m", 16],
                                                  means["tiny", 4]])
    capsys.readouterr()
    assert report.main([str(sweep), "--metric", "nope"]) == 2
    assert capsys.readouterr().err.startswith("medsweep-report: error: unknown metric 'nope'")
    assert report.main([str(sweep), "--by", "lora.rank", "model"]) == 2
    assert capsys.readouterr().err.startswith("medsweep-report: error: unknown axis lora.rank")


def test_cli_error_messages_name_what_exists(sweep: Path, capsys):
    assert report.main([str(sweep), "--metric", "nope"]) == 2
    assert capsys.readouterr().err == (f"medsweep-report: error: unknown metric 'nope'; metrics in these runs: "
                                       f"{METRICS_IN_RUNS}\n")
    assert report.main([str(sweep), "--by", "lora.rank", "model", "seed"]) == 2
    assert capsys.readouterr().err == ("medsweep-report: error: unknown axis lora.rank, seed; axes in these runs: "
                                       f"{', '.join(AXES)}\n")


def test_cli_default_out_is_cwd_for_a_file_path(sweep: Path, tmp_path: Path, monkeypatch, capsys, drawn):
    monkeypatch.chdir(tmp_path)
    assert report.main([str(sweep / "0" / "metrics.json")]) == 0
    assert (tmp_path / "report" / "report.md").is_file()
    assert pd.read_csv(tmp_path / "report" / "runs.csv")["run_name"].tolist() == ["smollm2_135m-r4-s0"]
    assert not (sweep / "0" / "report").exists()


def test_cli_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        report.main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: medsweep-report ")
    for phrase in ["[PATH ...]", "Tables and figures for medsweep run records.",
                   "sweep dirs, run dirs or globs (searched recursively)", "--by AXIS [AXIS ...]",
                   "axes of the pivot table/heatmap", "--metric METRIC", "metric for pivot, best config, figures",
                   "--out OUT", "output dir (report/ is created in it); default: the first PATH if it is a directory",
                   "--wandb", "also log tables to W&B", "--stages",
                   ("PATH is the last run of a continued fine-tuning chain (train.init_adapter): print base -> "
                    "stage 1 -> stage 2 on the same held-out questions"),
                   "--compare A B", "axis=value[,axis=value] selecting one configuration among the PATH runs",
                   "'base': the base model of the other side's runs.", "--top N",
                   "medsweep-report results/sweeps/s --compare lora.r=4 lora.r=16;"]:
        assert re.search(rf"(^|\s){re.escape(phrase)}(\s|$)", text), phrase  # the whole phrase, as written
    with pytest.raises(SystemExit) as exit_:
        report.main([])  # PATH is required
    assert exit_.value.code == 2


def test_cli_logs_through_its_own_handler(sweep: Path, tmp_path: Path, monkeypatch, capsys, drawn):
    """Without logging set up, main() logs INFO lines prefixed with the program name to stderr."""
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    only = tmp_path / "only"
    write_record(only / "0", "smollm2_135m", 4, 0, 0.3)
    assert report.main([str(only), "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert ("medsweep-report: skipping metric_vs_epoch.png: no run has per-epoch f1 (eval.every_epoch)\n"
            in err)
    assert "medsweep-report: skipping heatmap: fewer than two hyperparameter axes vary\n" in err
    assert root.level == logging.INFO


def test_cli_prints_rich_markdown_on_a_terminal(sweep: Path, tmp_path: Path, monkeypatch, capsys, drawn):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert report.main([str(sweep), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "medsweep report" in out and "# medsweep report" not in out  # rendered, not the source
    # without rich: the plain markdown
    monkeypatch.setitem(sys.modules, "rich.console", None)
    assert report.main([str(sweep), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("# medsweep report\n")


def test_cli_wandb_logs_tables(sweep: Path, tmp_path: Path, monkeypatch, capsys, drawn):
    calls = {}
    frames = {}

    class FakeRun:
        def log(self, data):
            calls["log"] = data

        def finish(self):
            calls["finished"] = True

    def table(dataframe):
        frames[len(frames)] = dataframe
        return ("table", dataframe.shape)

    fake = types.SimpleNamespace(
        init=lambda **kw: calls.setdefault("init", kw) and FakeRun(), Table=table)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    assert report.main([str(sweep), "--out", str(tmp_path), "--wandb"]) == 0
    assert calls["init"]["job_type"] == "report" and calls["finished"]
    assert calls["init"] == {"job_type": "report", "project": "medsweep"}
    assert calls["log"]["by_model"] == ("table", (3, 37))  # 3 models; 4 + 8 metrics × (value, lo, hi, Δ) + mark
    assert calls["log"]["runs"][1][0] == 12
    by_model, runs = frames[0], frames[1]
    assert list(by_model["model"]) == ["qwen2_0.5b", "smollm2_135m", "tiny"]
    assert list(by_model["F1"]) == pytest.approx([0.54, 0.43, statistics.fmean(TINY_F1)])
    assert by_model.loc[2, "BLEU lo"] is None  # NaN becomes None (W&B tables reject NaN)
    assert not any(c.startswith("_") for c in runs.columns) and "run_dir" in runs.columns

    monkeypatch.setenv("WANDB_PROJECT", "other")
    calls.clear()
    other = tmp_path / "other"
    for i, (r, f1, rouge) in enumerate([(4, 0.5, 0.1), (16, 0.3, 0.4)]):
        raw_run(other / str(i), {"model": "m", "lora.r": r}, {"f1": f1, "rougeL": rouge})
    assert report.main([str(other), "--wandb", "--metric", "rougeL"]) == 0
    assert calls["init"]["project"] == "other"
    assert list(frames[2]["lora.r"]) == [16]  # the best configuration by rougeL, not by f1


def test_cli_returns_the_error_exit_code(sweep: Path, monkeypatch, capsys):
    error = MedsweepError("disk full")
    error.exit_code = 5

    def fail(paths):
        raise error

    monkeypatch.setattr(report.cli, "collect", fail)
    assert report.main([str(sweep)]) == 5
    assert capsys.readouterr().err == "medsweep-report: error: disk full\n"


def test_cli_wandb_errors(sweep: Path, tmp_path: Path, monkeypatch, capsys, drawn):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    assert report.main([str(sweep), "--out", str(tmp_path), "--wandb"]) == 2
    assert capsys.readouterr().err == ("medsweep-report: error: --wandb needs the wandb package "
                                       "(pip install wandb)\n")

    def init(**kw):
        raise RuntimeError("no API key")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, Table=None))
    assert report.main([str(sweep), "--out", str(tmp_path), "--wandb"]) == 2
    assert capsys.readouterr().err == ("medsweep-report: error: wandb.init failed (set WANDB_MODE=offline?): "
                                       "no API key\n")


def test_log_wandb_default_metric_is_f1(df: pd.DataFrame, monkeypatch):
    logged = {}
    run = types.SimpleNamespace(log=logged.update, finish=lambda: None)
    fake = types.SimpleNamespace(init=lambda **kw: run, Table=lambda dataframe: dataframe)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    report.log_wandb(df)
    assert list(logged["by_model"]["lora.r"]) == [4, 16, 4] and "F1" in logged["by_model"]


def test_log_wandb_indexed_view_keeps_its_index(df: pd.DataFrame, monkeypatch):
    frames = []
    run = types.SimpleNamespace(log=lambda data: None, finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(
        init=lambda **kw: run, Table=lambda dataframe: frames.append(dataframe)))
    monkeypatch.setattr(report.wandb_upload, "by_model",
                        lambda df, metric: report.pivot(df, by=["model"], metric=metric))
    report.log_wandb(df, "f1")
    assert list(frames[0]["model"]) == ["qwen2_0.5b", "smollm2_135m", "tiny"]


def test_saved_figure_is_png_whatever_the_matplotlib_savefig_format(tmp_path: Path):
    """A user's matplotlibrc may make SVG the default format; the report's .png files stay PNG."""
    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [0, 1])
    with matplotlib.rc_context({"savefig.format": "svg"}):
        path = figures._save(fig, tmp_path / "x.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_display_formats_every_number_compactly():
    view = pd.DataFrame({"model": ["a", "b"], "f1": [0.123456, 0.5], "steps": [2.0, 30.0], "ppl": [math.nan, 12.25]})
    assert report.display(view).to_dict("list") == {
        "model": ["a", "b"], "f1": ["0.1235", "0.5"], "steps": ["2", "30"], "ppl": ["", "12.25"]}


def test_bootstrap_leaves_out_scores_written_as_null():
    """A per-example score stored as JSON null (a NaN written by another tool) is left out, as NaN is."""
    scores = [0.2, 0.9, 0.4, 0.6, 0.1]
    assert report.bootstrap_interval([0.2, None, 0.9, 0.4, None, 0.6, 0.1]) == report.bootstrap_interval(scores)


@pytest.mark.parametrize("attrs_lost", [False, True])
def test_axis_columns_are_the_records_axes_even_when_the_frame_lost_its_attrs(tmp_path: Path, attrs_lost):
    """After pd.concat (attrs lost) the axes are found from the columns: every metric the registry names, counts
    and decision scores included, is never mistaken for an axis."""
    for i, (model, r) in enumerate([("a", 4), ("b", 8)]):
        raw_run(tmp_path / str(i), {"model": model, "lora.r": r},
                {"f1": 0.5, "rouge1": 0.3, "perplexity": 3.0, "mean_generated_tokens": 12.0 + i, "n_eval": 20,
                 "decision_accuracy": 0.5 + i / 10, "generated_tokens_per_s": 9.0 + i})
    df = report.collect([str(tmp_path)])
    if attrs_lost:
        df.attrs.clear()
    assert report.axis_columns(df) == ["model", "lora.r"]


def test_heatmap_of_the_first_two_of_three_varying_axes(tmp_path: Path, drawn):
    for i, (model, r, dropout) in enumerate([("a", 4, 0.0), ("a", 16, 0.1), ("b", 4, 0.1), ("b", 16, 0.0)]):
        raw_run(tmp_path / str(i), {"model": model, "lora.r": r, "lora.dropout": dropout}, {"f1": 0.1 * (i + 1)})
    written = report.write_figures(report.collect([str(tmp_path)]), tmp_path)
    assert tmp_path / "report" / "heatmap_f1_model_lora.r.png" in written


def test_single_run_intervals_from_per_example_scores_with_nulls_and_rounding(tmp_path: Path):
    """One run: the bootstrap over its per-example scores. A score stored as null is left out; a reported value
    rounded away from the scores' mean by less than 1e-4 still matches it."""
    raw_run(tmp_path / "a", {"model": "a"}, {"f1": 0.4}, per_example={"f1": [0.2, None, 0.6, 0.4]})
    raw_run(tmp_path / "b", {"model": "b"}, {"f1": 0.00004}, per_example={"f1": [0.0, 0.0, 0.0, 0.0]})
    table = report.summarize(report.collect([str(tmp_path)]), ["model"], {"f1": "F1"})
    a, b = row(table, model="a"), row(table, model="b")
    assert a["CI"] == "bootstrap over examples (n=4)"
    assert (a["F1 lo"], a["F1 hi"]) == pytest.approx(report.bootstrap_interval([0.2, 0.6, 0.4]))
    assert b["CI"] == "bootstrap over examples (n=4)" and (b["F1 lo"], b["F1 hi"]) == (0.0, 0.0)


def test_summarize_ranks_by_f1_by_default_and_scales_intervals(df: pd.DataFrame):
    """primary defaults to f1 (n and CI describe it); a scaled metric's interval is scaled with its mean; a group
    without the primary metric has n 0 and no CI label."""
    table = report.summarize(df, ["model", "lora.r"], {"exact_match": "EM %"}, scale={"exact_match": 100})
    plain = report.summarize(df, ["model", "lora.r"], {"exact_match": "EM"}, primary="f1")
    smol = row(table, model="smollm2_135m", **{"lora.r": 16})
    smol_plain = row(plain, model="smollm2_135m", **{"lora.r": 16})
    assert smol["n"] == 2 and smol["CI"] == "t over seeds (n=2)"
    for column in ("", " lo", " hi"):
        assert smol[f"EM %{column}"] == pytest.approx(100 * smol_plain[f"EM{column}"])
    no_f1 = df.assign(f1=np.where(df["model"] == "tiny", np.nan, df["f1"]))
    tiny = row(report.summarize(no_f1, ["model"], {"rougeL": "ROUGE-L"}), model="tiny")
    assert tiny["n"] == 0 and tiny["CI"] == ""


def test_a_run_missing_an_axis_is_its_own_configuration(tmp_path: Path):
    """A record without a value for an axis the others have (an older run, a hand-made one) stays in the tables
    as its own group: it is neither dropped nor merged into another."""
    raw_run(tmp_path / "0", {"model": "m", "profile": "cpu", "lora.r": 4}, {"f1": 0.2, "seconds_per_answer": 0.5})
    raw_run(tmp_path / "1", {"model": "m", "profile": "cpu", "lora.r": 8}, {"f1": 0.6, "seconds_per_answer": 0.7})
    raw_run(tmp_path / "2", {"profile": "gpu", "lora.r": 8}, {"f1": 0.9, "seconds_per_answer": 0.1})
    df = report.collect([str(tmp_path)])
    configs = report.by_config(df)
    assert len(configs) == 3
    assert configs["best"].tolist().count(True) == 2  # the best of model m, and the run without a model
    latency = report.by_profile(df)
    assert len(latency) == 2 and latency["s/answer"].tolist() == pytest.approx([0.6, 0.1])
    summary = report.summarize(df, ["model"], {"f1": "F1"})
    assert len(summary) == 2 and sorted(summary["F1"].tolist()) == pytest.approx([0.4, 0.9])


def test_mark_best_takes_the_highest_unless_told_lower():
    table = pd.DataFrame({"model": ["a", "a", "b"], "f1": [0.2, 0.5, 0.1]})
    assert tables._mark_best(table.copy(), "f1")["best"].tolist() == [False, True, True]
    assert tables._mark_best(table.copy(), "f1", lower=True)["best"].tolist() == [True, False, True]


def test_num_writes_large_whole_numbers_in_full():
    assert [tables._num(x) for x in (123456.0, 1e20, np.float64(250000.0), 1234.5678)] == [
        "123456", "100000000000000000000", "250000", "1235"]


def test_an_epoch_entry_with_metrics_of_the_wrong_type_is_left_out(tmp_path: Path, drawn):
    """A hand-edited epochs list (metrics not a mapping) costs that entry, not the figure."""
    epochs = [{"epoch": 1, "metrics": [0.5]}, {"epoch": 2, "metrics": {"f1": 0.6}}, {"epoch": 3, "metrics": None}]
    write_record(tmp_path / "a", "smollm2_135m", 4, 0, 0.6, epochs=epochs)
    report.write_figures(report.collect([str(tmp_path)]), tmp_path)
    assert lines_of(drawn["metric_vs_epoch.png"]) == {"smollm2_135m": ([2.0], pytest.approx([0.6]))}


def test_find_run_dirs_expands_recursive_globs_and_skips_hidden_folders(tmp_path: Path):
    """`**` in a path spans any depth; a plain config.yaml in a hidden folder (a cache, submitit's) is no run."""
    raw_run(tmp_path / "sweeps" / "s1" / "run1")
    raw_run(tmp_path / "sweeps" / "s2" / "deep" / "run1")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("model: {}\n")
    (tmp_path / ".cache" / "x").mkdir(parents=True)
    (tmp_path / ".cache" / "x" / "config.yaml").write_text("model: {}\n")
    assert report.find_run_dirs([f"{tmp_path}/**/run1"]) == [
        (tmp_path / "sweeps" / "s1" / "run1").absolute(), (tmp_path / "sweeps" / "s2" / "deep" / "run1").absolute()]
    assert report.find_run_dirs([str(tmp_path)]) == [
        (tmp_path / "sweeps" / "s1" / "run1").absolute(), (tmp_path / "sweeps" / "s2" / "deep" / "run1").absolute(),
        (tmp_path / "unfinished").absolute()]
