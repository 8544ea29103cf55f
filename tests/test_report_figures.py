"""The report's figures and its HTML file, checked for what they show: the series drawn, their values and intervals,
the axis ranges, the labels and annotations, the Pareto points, and the HTML's tables, embedded images and escaped
texts. Each figure is built from hand-made run records with known numbers."""

from __future__ import annotations

import base64
import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer

from medsweep import report
from medsweep.errors import MedsweepError
from medsweep.report import figures, pareto, style

T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824}  # two-sided 95% Student-t critical values, from a published table


def near(value: float):
    """Equal to a value computed with the table's rounded critical values."""
    return pytest.approx(value, rel=1e-4, abs=1e-4)


def t_ci(values) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    h = T975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - h, mean + h


def run(run_dir: Path, axes: dict, metrics: dict, items: list[dict] | None = None, **fields) -> Path:
    """A complete run with a hand-written record and, with ``items``, a predictions.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"status": "complete", "axes": axes, "metrics": metrics, **fields}
    (run_dir / "metrics.json").write_text(json.dumps(record))
    if items is not None:
        (run_dir / "predictions.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    return run_dir


def item(i: int, f1: float, question: str | None = None, generated: str | None = None) -> dict:
    return {"id": f"q{i}", "question": question or f"question {i}?", "reference": f"reference {i}",
            "generated": generated or f"answer {i}", "scores": {"f1": f1, "exact_match": 0.0}}


def collect(path: Path) -> pd.DataFrame:
    return report.collect([str(path)])


def span(ax) -> float:
    low, high = ax.get_ylim()
    return high - low


def yerr_segments(container: ErrorbarContainer) -> list[tuple[float, float, float]]:
    """(x, low, high) of each vertical error bar of an errorbar container."""
    _, _, bars = container.lines
    return [(float(s[0][0]), float(min(s[0][1], s[1][1])), float(max(s[0][1], s[1][1])))
            for s in bars[-1].get_segments()]


# ------------------------------------------------------------------------- style

def test_value_limits_never_zoom_onto_noise():
    low, high = style.value_limits([0.1618, 0.1638], "f1")
    assert low <= 0.1618 and high >= 0.1638 and high - low >= 0.1  # not the 0.002 window of the noise
    assert 0.0 <= low and high <= 1.0
    low, high = style.value_limits([0.01, 0.02], "f1")  # near the bound: shifted inside [0, 1], span kept
    assert low == 0.0 and high == pytest.approx(0.11)
    low, high = style.value_limits([0.97, 0.99], "rougeL")
    assert high == 1.0 and low == pytest.approx(0.89)
    low, high = style.value_limits([1.7, 1.8], "bleu")  # BLEU runs to 100: at least 10 points
    assert high - low >= 10 and low >= 0
    low, high = style.value_limits([1.0, 2.0], "exact_match")  # EM in percent, as the tables
    assert high - low == pytest.approx(11.0)
    low, high = style.value_limits([10.5, 10.8], "perplexity")  # no full range: a fifth of its size
    assert high - low >= 0.2 * 10.8 and low <= 10.5 and high >= 10.8
    assert style.value_limits([-0.4, 0.3, 1.6], "f1") == (0.0, 1.0)  # an interval past F1's range is cut there
    assert style.value_limits([-0.4, 0.3], "f1") == (0.0, pytest.approx(0.33))
    low, high = style.value_limits([0.2, 0.9], "f1")  # a wide spread is kept, with a margin
    assert low < 0.2 and high > 0.9 and high - low == pytest.approx(0.77)


def test_style_is_applied_to_every_figure_and_sized_for_a_paper(tmp_path: Path):
    import matplotlib

    for i, (r, f1) in enumerate([(4, 0.2), (16, 0.4)]):
        run(tmp_path / str(i), {"model": "m", "lora.r": r, "profile": "cpu"},
            {"f1": f1, "seconds_per_answer": 0.5 + i},
            epochs=[{"epoch": 1, "metrics": {"f1": f1 - 0.1}}, {"epoch": 2, "metrics": {"f1": f1}}])
    df = collect(tmp_path)
    with matplotlib.rc_context({"font.size": 20, "image.cmap": "gray"}):  # a user's matplotlibrc changes nothing
        drawn = [figures.plot_metric_vs_epoch(df), pareto.plot_quality_vs_cost(df),
                 figures.plot_latency_by_profile(df)]
    for fig in drawn:
        assert fig.get_size_inches()[0] in (style.COLUMN, style.PAGE)
        ax = fig.axes[0]
        assert ax.title.get_fontsize() == 9 and ax.xaxis.label.get_fontsize() == 8
        assert not ax.spines["top"].get_visible() and not ax.spines["right"].get_visible()
    assert drawn[0].axes[0].get_lines()[0].get_color() == style.PALETTE[0]
    png = style.png(drawn[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        assert image.info["dpi"] == pytest.approx((style.DPI, style.DPI), abs=0.1)
        assert image.size[0] <= style.COLUMN * style.DPI + 1  # cropped to the drawing, a column wide at most


# ------------------------------------------------------------------------- metric vs epoch

def epochs(values) -> list[dict]:
    return [{"epoch": e + 1, "metrics": {"f1": v}} for e, v in enumerate(values)]


def test_metric_vs_epoch_one_line_and_band_per_configuration(tmp_path: Path):
    seeds = {4: [[0.20, 0.30], [0.24, 0.36]], 16: [[0.40, 0.42], [0.44, 0.50]]}  # r -> seed -> per-epoch f1
    for r, per_seed in seeds.items():
        for seed, values in enumerate(per_seed):
            run(tmp_path / f"r{r}s{seed}", {"model": "m", "lora.r": r, "train.seed": seed}, {"f1": values[-1]},
                epochs=epochs(values))
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # mean 0.55, the last epoch's value
    run(tmp_path / "r8", {"model": "m", "lora.r": 8, "train.seed": 0}, {"f1": 0.55},
        epochs=epochs([0.5, 0.55]), per_example={"f1": scores})
    fig = figures.plot_metric_vs_epoch(collect(tmp_path))
    ax = fig.axes[0]
    lines = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()
             if not ln.get_label().startswith("_")}
    assert lines == {  # best first by the last epoch; model named only when several were run
        "lora.r=8": ([1.0, 2.0], pytest.approx([0.5, 0.55])),
        "lora.r=16": ([1.0, 2.0], pytest.approx([0.42, 0.46])),
        "lora.r=4": ([1.0, 2.0], pytest.approx([0.22, 0.33]))}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lora.r=8", "lora.r=16", "lora.r=4"]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # the two configurations with two seeds; the single run has none
    expected = {r: [t_ci([s[e] for s in per_seed]) for e in range(2)] for r, per_seed in seeds.items()}
    for band, r in zip(bands, (16, 4), strict=True):
        ys = band.get_paths()[0].vertices[:, 1]
        assert min(ys) == near(min(lo for _, lo, _ in expected[r]))
        assert max(ys) == near(max(hi for _, _, hi in expected[r]))
    # the single run: a bootstrap interval over its eval examples at the last epoch
    (boot,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    low, high = report.bootstrap_interval(scores)
    assert yerr_segments(boot) == [(2.0, pytest.approx(low), pytest.approx(high))]
    ylow, yhigh = ax.get_ylim()
    assert min(lo for v in expected.values() for _, lo, _ in v) < 0  # two seeds: a wide t interval
    assert ylow == 0 and yhigh >= max(hi for v in expected.values() for _, _, hi in v)  # F1 is never below 0
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("epoch", "F1", "F1 per epoch (per configuration)")
    assert list(ax.get_xticks()) == [1, 2]
    assert tuple(fig.get_size_inches()) == pytest.approx((style.COLUMN, 2.6))


def test_metric_vs_epoch_of_a_noisy_two_point_line_is_not_zoomed(tmp_path: Path):
    """The committed example's old figure: a two-point line on a 0.002-wide axis. One series: no legend."""
    run(tmp_path / "a", {"model": "m"}, {"f1": 0.1638}, epochs=epochs([0.1618, 0.1638]))
    ax = figures.plot_metric_vs_epoch(collect(tmp_path)).axes[0]
    assert span(ax) >= 0.1 and ax.get_ylim()[0] <= 0.1618 and ax.get_ylim()[1] >= 0.1638
    assert ax.get_legend() is None and [ln.get_label() for ln in ax.get_lines()] == ["m"]


def test_metric_vs_epoch_keeps_the_best_configurations_and_scales_em(tmp_path: Path):
    for r in range(10):
        run(tmp_path / str(r), {"model": "m", "lora.r": r}, {"exact_match": r / 100},
            epochs=[{"epoch": 1, "metrics": {"exact_match": r / 200}},
                    {"epoch": 2, "metrics": {"exact_match": r / 100}}])
    fig = figures.plot_metric_vs_epoch(collect(tmp_path), "exact_match")
    ax = fig.axes[0]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels == [f"lora.r={r}" for r in range(9, 1, -1)]  # the 8 best, best first
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([4.5, 9.0])  # EM in percent
    assert ax.get_title() == "EM % per epoch (best 8 of 10 configurations)" and ax.get_ylabel() == "EM %"
    assert ax.get_legend() is not None and fig.get_size_inches()[0] == style.PAGE


def test_metric_vs_epoch_lower_is_better_ranks_lowest_first(tmp_path: Path):
    for r, ppl in [(4, 9.0), (16, 7.0)]:
        run(tmp_path / str(r), {"model": "m", "lora.r": r}, {"perplexity": ppl},
            epochs=[{"epoch": 1, "metrics": {"perplexity": ppl + 1}}, {"epoch": 2, "metrics": {"perplexity": ppl}}])
    ax = figures.plot_metric_vs_epoch(collect(tmp_path), "perplexity").axes[0]
    assert [ln.get_label() for ln in ax.get_lines()] == ["lora.r=16", "lora.r=4"]
    assert ax.get_ylabel() == "Perplexity"


def test_metric_vs_epoch_skipped_without_epochs(tmp_path: Path, caplog):
    run(tmp_path / "a", {"model": "m"}, {"f1": 0.3})
    with caplog.at_level("INFO", logger="medsweep.report"):
        assert figures.plot_metric_vs_epoch(collect(tmp_path)) is None
    assert caplog.messages == ["skipping metric_vs_epoch.png: no run has per-epoch f1 (eval.every_epoch)"]


# ------------------------------------------------------------------------- heatmap

def heat_sweep(root: Path) -> Path:
    """model a: r4 beats r16 on every item (marks *, none); model b: r4 and r16 tied (marks *=, †)."""
    noise = [0.008 if i % 2 else -0.01 for i in range(12)]  # r16 below r4 by 0.001 on average, not significantly
    b4 = [0.3 + 0.05 * (i % 4) for i in range(12)]
    per_item = {("a", 4): [0.9] * 12, ("a", 16): [0.1] * 12, ("b", 4): b4,
                ("b", 16): [v + n for v, n in zip(b4, noise, strict=True)]}
    for (model, r), scores in per_item.items():
        run(root / f"{model}{r}", {"model": model, "lora.r": r}, {"f1": statistics.fmean(scores)},
            items=[item(i, s) for i, s in enumerate(scores)])
    return root


def test_heatmap_cells_show_value_and_significance(tmp_path: Path):
    df = collect(heat_sweep(tmp_path))
    means, marks = figures.heatmap_cells(df, "f1", "model", "lora.r")
    assert marks.values.tolist() == [["*", ""], ["*=", "†"]]
    fig = figures.plot_heatmap(df, "f1", "model", "lora.r")
    ax = fig.axes[0]
    image = np.ma.filled(ax.images[0].get_array(), np.nan)
    b4 = statistics.fmean(0.3 + 0.05 * (i % 4) for i in range(12))
    assert image.ravel().tolist() == pytest.approx([0.9, 0.1, b4, b4 - 0.001])
    texts = {t.get_position(): t.get_text() for t in ax.texts}
    assert texts == {(0, 0): "0.9 *", (1, 0): "0.1", (0, 1): f"{b4:.3g} *=", (1, 1): f"{b4 - 0.001:.3g} †"}
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours["0.9 *"] == "black" and colours["0.1"] == "white"  # readable on viridis' yellow and purple
    assert ax.images[0].get_cmap().name.startswith("viridis")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "16"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("lora.r", "model", "F1 by model and lora.r")
    colorbar = ax.images[0].colorbar
    assert colorbar is not None and colorbar.ax.get_ylabel() == "mean F1"
    assert colorbar.ax.get_ylim() == pytest.approx((0.1, 0.9))


def test_heatmap_lower_is_better_reverses_the_scale_and_leaves_empty_cells_blank(tmp_path: Path):
    for i, (model, r, ppl) in enumerate([("a", 4, 8.0), ("a", 16, 12.0), ("b", 4, 10.0)]):
        run(tmp_path / str(i), {"model": model, "lora.r": r}, {"perplexity": ppl})
    ax = figures.plot_heatmap(collect(tmp_path), "perplexity", "model", "lora.r").axes[0]
    assert ax.images[0].get_cmap().name.startswith("viridis_r")
    texts = {t.get_position(): t.get_text() for t in ax.texts}
    # perplexity has no per-item scores: the best of a model with rivals is untested
    assert texts == {(0, 0): "8 *?", (1, 0): "12", (0, 1): "10 *"}
    assert {t.get_text(): t.get_color() for t in ax.texts}["8 *?"] == "black"  # the best is the bright end


def test_heatmap_pairs_of_varying_axes(tmp_path: Path):
    for i, (model, r, dropout, seed) in enumerate([("a", 4, 0.0, 0), ("a", 16, 0.1, 1), ("b", 4, 0.1, 0),
                                                   ("b", 16, 0.0, 1)]):
        run(tmp_path / str(i), {"model": model, "lora.r": r, "lora.dropout": dropout, "train.seed": seed},
            {"f1": 0.1 * (i + 1)})
    df = collect(tmp_path)
    assert figures.heatmap_pairs(df) == [("model", "lora.r"), ("model", "lora.dropout"), ("lora.r", "lora.dropout")]
    assert figures.heatmap_pairs(df, ["lora.dropout", "model", "lora.r"]) == [("lora.dropout", "model")]
    written = report.write_figures(df, tmp_path, "f1")
    names = {p.name for p in written}
    assert {"heatmap_f1_model_lora.r.png", "heatmap_f1_model_lora.dropout.png",
            "heatmap_f1_lora.r_lora.dropout.png"} <= names


# ------------------------------------------------------------------------- quality vs cost

def test_pareto_front_on_a_constructed_set():
    #        H    A    B    C    D    E    F    G
    cost = [0.5, 1.0, 2.0, 2.0, 3.0, 1.0, 4.0, math.nan]
    f1 = [0.2, 0.5, 0.7, 0.6, 0.7, 0.5, 0.9, 1.0]
    # C is beaten by B (same cost), D by B (same quality, dearer); A and E are equal: both stay; G has no cost
    assert pareto.pareto_front(cost, f1) == [0, 1, 5, 2, 6]
    # lower is better (perplexity): H is cheapest and best; I is cheaper still, and worse
    assert pareto.pareto_front([*cost, 0.3], [*f1, 0.8], higher_is_better=False) == [8, 0]
    assert pareto.pareto_front([1.0, 1.0], [0.5, 0.5]) == [0, 1]
    assert pareto.pareto_front([], []) == []


def cost_sweep(root: Path, gpu_hours: dict[int, float]) -> Path:
    # r -> (seconds per answer, f1) per seed
    values = {4: [(1.0, 0.30), (1.2, 0.34)], 8: [(2.0, 0.40), (2.2, 0.42)], 16: [(3.0, 0.36), (3.4, 0.38)]}
    for r, per_seed in values.items():
        for seed, (spa, f1) in enumerate(per_seed):
            run(root / f"{r}-{seed}", {"model": "m", "lora.r": r, "train.seed": seed},
                {"f1": f1, "seconds_per_answer": spa}, gpu_hours=gpu_hours[r])
    return root


def test_quality_vs_cost_marks_and_names_the_front(tmp_path: Path):
    fig = pareto.plot_quality_vs_cost(collect(cost_sweep(tmp_path, {4: 0.2, 8: 0.1, 16: 0.3})))
    assert len(fig.axes) == 2 and tuple(fig.get_size_inches()) == pytest.approx((2 * style.COLUMN, 2.6))
    seconds, gpu = fig.axes
    (front,) = [ln for ln in seconds.get_lines() if ln.get_label() == pareto.FRONT]
    assert front.get_xydata().ravel().tolist() == pytest.approx([1.1, 0.32, 2.1, 0.41])  # r=16: dearer, worse
    assert [t.get_text() for t in seconds.texts] == ["lora.r=4", "lora.r=8"]
    assert front.get_drawstyle() == "steps-post"
    (front,) = [ln for ln in gpu.get_lines() if ln.get_label() == pareto.FRONT]
    assert front.get_xydata().ravel().tolist() == pytest.approx([0.1, 0.41])  # r=8 is cheapest and best
    assert [t.get_text() for t in gpu.texts] == ["lora.r=8"]
    (points,) = [c for c in seconds.containers if isinstance(c, ErrorbarContainer)]
    high = t_ci([0.30, 0.34])[2]  # the widest interval: r=4's
    assert max(hi for _, _, hi in yerr_segments(points)) == near(high)
    for ax in fig.axes:
        assert ax.get_xlim()[0] == 0 and ax.get_ylabel() == "F1"
        assert ax.get_xlim()[1] > max(x for x, _ in ax.get_lines()[-1].get_xydata())
    assert seconds.get_ylim()[0] <= t_ci([0.30, 0.34])[1] and seconds.get_ylim()[1] >= high
    assert (seconds.get_xlabel(), gpu.get_xlabel()) == ("seconds per answer (lower is cheaper)",
                                                        "GPU-hours (lower is cheaper)")


def test_quality_vs_cost_without_gpu_hours_has_one_panel(tmp_path: Path, caplog):
    fig = pareto.plot_quality_vs_cost(collect(cost_sweep(tmp_path / "a", {4: 0.0, 8: 0.0, 16: 0.0})))
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "F1 vs seconds per answer"
    run(tmp_path / "b" / "0", {"model": "m"}, {"f1": 0.3})
    with caplog.at_level("INFO", logger="medsweep.report"):
        assert pareto.plot_quality_vs_cost(collect(tmp_path / "b")) is None
    assert "no cost measured" in caplog.text


# ------------------------------------------------------------------------- latency

def test_latency_bars_with_intervals_over_runs(tmp_path: Path):
    spa = {("p1", "m"): [1.0, 1.4], ("p1", "n"): [2.0], ("p2", "m"): [0.5, 0.6, 0.7], ("p2", "n"): [0.1, 1.9]}
    for (profile, model), values in spa.items():
        for i, v in enumerate(values):
            run(tmp_path / f"{profile}{model}{i}", {"model": model, "profile": profile, "train.seed": i},
                {"seconds_per_answer": v})
    fig = figures.plot_latency_by_profile(collect(tmp_path))
    ax = fig.axes[0]
    bars = [c for c in ax.containers if hasattr(c, "patches")]
    assert [c.get_label() for c in bars] == ["m", "n"]
    assert [[p.get_height() for p in c] for c in bars] == [
        pytest.approx([1.2, 0.6]), pytest.approx([2.0, 1.0])]
    expected = {"m": [t_ci([1.0, 1.4]), t_ci([0.5, 0.6, 0.7])], "n": [(2.0, 2.0, 2.0), t_ci([0.1, 1.9])]}
    for c in bars:
        extents = [(lo, hi) for _, lo, hi in yerr_segments(c.errorbar)]
        # a single run has no interval: a bar without extent; the interval is cut at 0 (no negative seconds)
        assert extents == [(near(max(lo, 0.0)), near(hi)) for _, lo, hi in expected[c.get_label()]]
    assert yerr_segments(bars[1].errorbar)[1][1] == 0.0
    dots = [ln for ln in ax.get_lines() if ln.get_label() == "_runs"]
    assert sorted(y for ln in dots for y in ln.get_ydata()) == sorted(v for vs in spa.values() for v in vs)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["p1", "p2"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["m", "n"]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= t_ci([0.1, 1.9])[2]
    assert ax.get_title() == "Inference latency per profile and model"


def test_latency_of_one_model_has_no_legend(tmp_path: Path):
    for i, v in enumerate([0.7, 0.5]):
        run(tmp_path / str(i), {"model": "smol", "profile": "cpu", "train.seed": i}, {"seconds_per_answer": v})
    ax = figures.plot_latency_by_profile(collect(tmp_path)).axes[0]
    assert ax.get_legend() is None and ax.get_title() == "Inference latency per profile: smol"
    (bars,) = [c for c in ax.containers if hasattr(c, "patches")]
    assert [p.get_height() for p in bars] == pytest.approx([0.6])


# ------------------------------------------------------------------------- writing and the HTML report

HOSTILE = "<script>alert('x')</script> & <b>bold</b>"


def html_sweep(root: Path) -> Path:
    for r, shift in [(4, 0.0), (16, 0.2)]:
        for seed in (0, 1):
            scores = [0.1 * i + shift / 2 + 0.01 * seed for i in range(6)]
            items = [item(i, s, question=f"{HOSTILE} q{i}" if i == 5 else None,
                          generated=f"{HOSTILE} a{i}" if i == 5 else None) for i, s in enumerate(scores)]
            run(root / f"r{r}s{seed}", {"model": "m", "lora.r": r, "train.seed": seed, "profile": "cpu"},
                {"f1": statistics.fmean(scores), "seconds_per_answer": 1.0 + r / 16 + seed},
                items=items, epochs=epochs([0.1, statistics.fmean(scores)]))
    return root


def test_report_html_is_self_contained_and_escaped(tmp_path: Path):
    sweep = html_sweep(tmp_path / "sweep")
    run(sweep / "failed", {"model": "m", "lora.r": 8}, {}, status="failed", error=f"ValueError: {HOSTILE}")
    assert report.main([str(sweep)]) == 0
    out = sweep / "report"
    text = (out / "report.html").read_text(encoding="utf-8")
    for heading in ["Best configuration per model (Table 4)", "All configurations", "f1 by model, lora.r",
                    "Latency by profile and model", "Failed, unfinished and corrupt runs"]:
        assert f">{heading}</h2>" in text
    assert text.count("<table") == 5 + 2  # the 5 views, the best and worst answers by F1 (no other scores)
    pngs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["latency_by_profile.png", "metric_vs_epoch.png", "quality_vs_cost_f1.png"]
    assert len(pngs) == len(written)
    assert sorted(base64.b64decode(p) for p in pngs) == sorted((out / n).read_bytes() for n in written)
    assert "<script" not in text and "&lt;script&gt;alert(" in text and "&lt;/script&gt; &amp; &lt;b&gt;" in text
    assert "ValueError: &lt;script&gt;" in text  # the failures table
    assert "<b>" not in text
    assert not re.search(r'(src|href)="(?!data:)', text) and "<link" not in text and "http" not in text
    # the best configuration's (r=16) answers of its first seed, its highest and lowest F1 first
    section = text[text.index("Best and worst answers"):]
    assert "F1: model=m, lora.r=16" in section and "r16s0" in section
    highest = section[section.index("Highest F1"):section.index("Lowest F1")]
    assert re.findall(r"<td>(q\d)</td>", highest) == ["q5", "q4", "q3"]
    lowest = section[section.index("Lowest F1"):]
    assert re.findall(r"<td>(q\d)</td>", lowest)[:3] == ["q0", "q1", "q2"]
    assert f"<td>{0.5 + 0.1:.4g}</td>" in highest  # r=16 seed 0: 0.1 * 5 + 0.1
    assert "answer 0" in lowest and "reference 0" in lowest


def test_answers_pick_the_best_configuration_per_metric(tmp_path: Path):
    df = collect(html_sweep(tmp_path))
    (found,) = report.extremes(df, n=2)  # only F1 has per-item scores that differ
    assert (found.metric, found.configuration, found.run) == ("f1", "model=m, lora.r=16", "r16s0")
    assert [a.item for a in found.best] == ["q5", "q4"] and [a.item for a in found.worst] == ["q0", "q1"]
    assert found.best[0].question == f"{HOSTILE} q5" and found.best[0].score == pytest.approx(0.6)
    assert found.worst[0].reference == "reference 0" and found.worst[0].answer == "answer 0"


def test_write_figures_names_and_captions(tmp_path: Path):
    df = collect(heat_sweep(tmp_path / "h"))
    written = report.write_figures(df, tmp_path)
    assert [p.name for p in written] == ["heatmap_f1_model_lora.r.png"]
    assert "†" in report.caption(written[0]) and report.caption(tmp_path / "other.png") == ""
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latency_bars_without_model_or_profile(tmp_path: Path):
    run(tmp_path / "a" / "0", {"profile": "gpu"}, {"seconds_per_answer": 0.2})
    run(tmp_path / "a" / "1", {"profile": "cpu"}, {"seconds_per_answer": 0.6})
    ax = figures.plot_latency_by_profile(collect(tmp_path / "a")).axes[0]
    (bars,) = [c for c in ax.containers if hasattr(c, "patches")]
    assert [p.get_height() for p in bars] == pytest.approx([0.6, 0.2]) and ax.get_legend() is None
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cpu", "gpu"]
    run(tmp_path / "b" / "0", {"model": "m"}, {"seconds_per_answer": 0.2})
    run(tmp_path / "b" / "1", {"model": "n"}, {"seconds_per_answer": 0.4})
    ax = figures.plot_latency_by_profile(collect(tmp_path / "b")).axes[0]
    assert [[p.get_height() for p in c] for c in ax.containers if hasattr(c, "patches")] == [[0.2], [0.4]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["all"]


def test_each_skipped_figure_is_logged(tmp_path: Path, caplog):
    run(tmp_path / "0", {"model": "m", "profile": "gpu"}, {"f1": 0.2, "latency_p50_s": 0.3})
    with caplog.at_level("INFO", logger="medsweep.report"):
        assert report.write_figures(collect(tmp_path), tmp_path) == []
    assert caplog.messages == [
        "skipping metric_vs_epoch.png: no run has per-epoch f1 (eval.every_epoch)",
        "skipping quality_vs_cost_f1.png: no cost measured (seconds per answer, GPU-hours)",
        "skipping latency_by_profile.png: no latency measured",
        "skipping heatmap: fewer than two hyperparameter axes vary"]


def test_heatmap_of_the_callers_axes_and_only_of_a_measured_metric(tmp_path: Path):
    for i, (model, r, em) in enumerate([("a", 4, 0.1), ("a", 16, 0.2), ("b", 4, 0.3), ("b", 16, 0.4)]):
        run(tmp_path / str(i), {"model": model, "lora.r": r, "profile": "cpu"}, {"exact_match": em, "f1": 0.5})
    df = collect(tmp_path)
    written = {p.name for p in report.write_figures(df, tmp_path, "exact_match", heat_axes=["lora.r", "model"])}
    assert written == {"heatmap_exact_match_lora.r_model.png"}
    ax = figures.plot_heatmap(df, "exact_match", "lora.r", "model").axes[0]
    assert np.ma.filled(ax.images[0].get_array(), np.nan).ravel().tolist() == pytest.approx([10, 30, 20, 40])
    assert ax.images[0].colorbar.ax.get_ylabel() == "mean EM %"
    with pytest.raises(MedsweepError, match="unknown axis nope"):
        report.write_figures(df, tmp_path, heat_axes=["nope", "model"])
    assert report.write_figures(df, tmp_path, "decision_accuracy") == []
