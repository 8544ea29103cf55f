"""Paired significance in the report: the sign-flip test, Holm's adjustment and the bootstrap interval against
textbook cases computed here independently of the code, the best/tied marks of the tables on constructed sweeps,
and ``medsweep-report --compare`` (offline, fast)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import re
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsweep import report
from medsweep.report import paired as paired_mod

N = 12  # items: 2^12 sign vectors <= N_RESAMPLES, so the code's p is exact and can be enumerated here


def enumerated_p(diffs) -> float:
    """Two-sided sign-flip p-value by listing every sign vector (the textbook definition)."""
    d = [float(x) for x in diffs]
    observed = abs(statistics.fmean(d))
    hits = sum(abs(statistics.fmean(s * x for s, x in zip(signs, d, strict=True))) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=len(d)))
    return hits / 2 ** len(d)


def binomial_two_sided(k: int, n: int) -> float:
    """P(|2K - n| >= |2k - n|) for K ~ Binomial(n, 1/2): the sign-flip p of k differences +1 and n - k of -1."""
    return sum(math.comb(n, j) for j in range(n + 1) if abs(2 * j - n) >= abs(2 * k - n)) / 2 ** n


# ------------------------------------------------------------------------- the sign-flip test

def test_sign_flip_p_is_the_enumerated_p():
    d = [0.31, -0.05, 0.12, 0.4, 0.07, -0.2, 0.33, 0.05]
    assert report.sign_flip_p([d])[0] == enumerated_p(d)  # exact: all 2^8 vectors, no randomness
    ties = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, -1.0, 0.0, 1.0]  # EM-like differences with zeros
    assert report.sign_flip_p([ties])[0] == enumerated_p(ties)


def test_sign_flip_on_plus_minus_one_is_the_binomial_test():
    # 8 of 10 items better, 2 worse: p = P(K >= 8) + P(K <= 2) = 2 * 56 / 1024
    assert report.sign_flip_p([[1.0] * 8 + [-1.0] * 2])[0] == 112 / 1024 == binomial_two_sided(8, 10)
    # 15 of 20: 2^20 > 10,000 sign vectors are sampled; within 3 standard errors of the exact 0.0414
    exact = binomial_two_sided(15, 20)
    sampled = report.sign_flip_p([[1.0] * 15 + [-1.0] * 5])[0]
    assert exact == pytest.approx(0.041389, abs=1e-6)
    assert abs(sampled - exact) < 3 * math.sqrt(exact * (1 - exact) / report.N_RESAMPLES)
    # enumerating all 2^20 (n_resamples raised) gives the exact value
    assert report.sign_flip_p([[1.0] * 15 + [-1.0] * 5], n_resamples=2 ** 20)[0] == exact


def test_sign_flip_agrees_with_scipy_permutation_test():
    from scipy.stats import permutation_test

    d = np.random.default_rng(3).normal(0.1, 0.3, 11)
    res = permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                           vectorized=True, n_resamples=report.N_RESAMPLES)
    assert report.sign_flip_p([d])[0] == pytest.approx(res.pvalue, abs=1e-12)  # both exact: 2^11 vectors


def test_sign_flip_is_deterministic_and_each_row_its_own_test():
    rng = np.random.default_rng(0)
    rows = [rng.normal(0.05, 0.3, 48), rng.normal(0, 0.3, 48), rng.normal(0.2, 0.3, 30)]
    together = report.sign_flip_p(rows)
    assert together.tolist() == report.sign_flip_p(rows).tolist()
    assert [report.sign_flip_p([r])[0] for r in rows] == together.tolist()  # the others change nothing
    assert report.sign_flip_p([rows[0]], seed=1)[0] != together[0]  # the seed is the only randomness


def test_sign_flip_edge_cases():
    p = report.sign_flip_p([[0.0, 0.0, 0.0], [], [0.5], [math.nan, 0.3, 0.3, math.nan]])
    assert p[0] == 1.0 and math.isnan(p[1]) and p[2] == 1.0  # no difference, no items, one item
    assert p[3] == enumerated_p([0.3, 0.3]) == 0.5  # NaN entries left out


# ------------------------------------------------------------------------- Holm

def test_holm_on_the_textbook_example():
    # Wikipedia's Holm–Bonferroni example: p = 0.01, 0.04, 0.03, 0.005 at alpha = 0.05 rejects H1 and H4:
    # 0.005 < 0.05/4, 0.01 < 0.05/3, then 0.03 >= 0.05/2 stops.
    adjusted = report.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert (adjusted < 0.05).tolist() == [True, False, False, True]


def step_down(pvalues, alpha) -> set[int]:
    """Holm's procedure as stated: reject in ascending order while p_(i) < alpha / (m - i)."""
    rejected: set[int] = set()
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    for i, k in enumerate(order):
        if pvalues[k] >= alpha / (len(pvalues) - i):
            break
        rejected.add(k)
    return rejected


def test_holm_adjusted_p_rejects_what_the_procedure_rejects():
    rng = random.Random(0)
    for _ in range(200):
        p = [rng.choice([rng.random() * 0.1, rng.random()]) for _ in range(rng.randint(1, 9))]
        adjusted = report.holm(p)
        assert all(a >= q and a <= min(1.0, len(p) * q) + 1e-15 for a, q in zip(adjusted, p, strict=True))
        for alpha in (0.01, 0.05, 0.1):
            assert {i for i, a in enumerate(adjusted) if a < alpha} == step_down(p, alpha)


def test_holm_leaves_untested_comparisons_out():
    adjusted = report.holm([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert report.holm([]).tolist() == [] and report.holm([0.6, 0.7]).tolist() == [1.0, 1.0]


# ------------------------------------------------------------------------- the bootstrap interval

def test_paired_interval_covers_the_true_difference():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, 300)
    b = a + 0.1 + rng.normal(0, 0.2, 300)  # the true mean difference is 0.1
    low, high = report.paired_interval(b - a)
    assert low < 0.1 < high and low > 0
    sd = float(np.std(b - a, ddof=1))
    assert high - low == pytest.approx(2 * 1.96 * sd / math.sqrt(300), rel=0.1)  # near the normal interval
    assert report.paired_interval(b - a) == (low, high)  # seeded


def test_paired_interval_coverage_on_skewed_differences():
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(200):
        d = rng.exponential(1.0, 40) - 0.9  # skewed, true mean 0.1
        low, high = report.paired_interval(d, n_resamples=2000)
        covered += low <= 0.1 <= high
    assert 0.88 <= covered / 200 <= 0.99  # nominal 95%; 200 data sets: a standard error of 1.5 points


def test_paired_result_and_degenerate_differences():
    assert report.paired_interval([0.25] * 5) == (0.25, 0.25)
    r = report.paired_test([0.2] * N, [0.5] * N)
    assert (r.diff, r.low, r.high, r.n, r.exact) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3),
                                                     N, True)
    assert r.p == 2 / 2 ** N  # only the identity and the all-flipped vectors are as extreme
    assert math.isnan(report.paired_test([], []).p)


# ------------------------------------------------------------------------- constructed sweeps

def prediction_rows(ids, scores, who: str) -> list[dict]:
    return [{"id": i, "question": f"question {i}?", "reference": f"reference {i}", "generated": f"{who} says {s}",
             "seconds": 0.1, "generated_tokens": 3,
             "scores": {"exact_match": float(s == 1.0), "f1": s, "bleu": 100 * s, "rouge1": s, "rouge2": s,
                        "rougeL": s}}
            for i, s in zip(ids, scores, strict=True)]


def means(scores) -> dict:
    f1 = statistics.fmean(scores)
    return {"exact_match": statistics.fmean(float(s == 1.0) for s in scores), "f1": f1, "bleu": 100 * f1,
            "rouge1": f1, "rouge2": f1, "rougeL": f1, "n_eval": len(scores)}


def write_run(run_dir: Path, axes: dict, f1, base=None, ids=None, shuffle: int | None = None) -> Path:
    """A complete run whose prediction files hold per-item F1 ``f1`` (and its base model's, ``base``)."""
    ids = ids or [f"q{i:02d}" for i in range(len(f1))]
    record = {"status": "complete", "run_name": run_dir.name, "axes": axes, "metrics": means(f1),
              "per_example": {"f1": list(f1)}}
    rows = prediction_rows(ids, f1, f"{run_dir.name}")
    if shuffle is not None:
        random.Random(shuffle).shuffle(rows)
    run_dir.mkdir(parents=True)
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if base is not None:
        record["baseline"] = means(base)
        record["delta"] = {k: v - record["baseline"][k] for k, v in record["metrics"].items()}
        (run_dir / "predictions_baseline.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in prediction_rows(ids, base, "base")))
    (run_dir / "metrics.json").write_text(json.dumps(record))
    return run_dir


def axes(model: str, r: int, seed: int = 0) -> dict:
    return {"model": model, "lora.r": r, "train.seed": seed}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """m1: r=8 best, r=16 within one item of it (tied), r=4 far behind; m2: r=8 clearly best. Base F1 0.1."""
    root = tmp_path / "sweep"
    r16 = [0.8] * (N - 1) + [0.7]
    for model, r, f1 in [("m1", 4, [0.2] * N), ("m1", 8, [0.8] * N), ("m1", 16, r16),
                         ("m2", 4, [0.1] * N), ("m2", 8, [0.5] * N)]:
        write_run(root / f"{model}-r{r}", axes(model, r), f1, base=[0.1] * N)
    return root


def by(table: pd.DataFrame, model: str, r: int) -> pd.Series:
    return table[(table["model"] == model) & (table["lora.r"] == r)].iloc[0]


def test_best_is_marked_only_where_it_is_the_best(sweep: Path):
    table = report.by_config(report.collect([str(sweep)]))
    marks = {(m, int(r)): k for m, r, k in zip(table["model"], table["lora.r"], table["mark"], strict=True)}
    assert marks == {("m1", 4): "", ("m1", 8): "*=", ("m1", 16): "†", ("m2", 4): "", ("m2", 8): "*"}
    # 8 comparisons in the family (3 against a best, 5 against a base model); six have raw p = 2/4096 (every item
    # moves the same way), two have p = 1 (r=16 vs r=8: only one item differs; m2 r=4 equals its base model).
    # Holm: the six smallest become max(8, 7, ..., 3) * 2/4096 = 16/4096; the p = 1 stay 1.
    assert by(table, "m1", 4)["p vs best"] == pytest.approx(16 / 4096)
    assert by(table, "m1", 16)["p vs best"] == 1.0 and math.isnan(by(table, "m1", 8)["p vs best"])
    assert by(table, "m2", 4)["p vs base"] == 1.0 and by(table, "m2", 8)["p vs base"] == pytest.approx(16 / 4096)
    best = report.by_model(report.collect([str(sweep)]))
    assert list(zip(best["model"], best["mark"], strict=True)) == [("m1", "*="), ("m2", "*")]
    assert "p vs best" not in best and "p vs base" in best


def test_marks_in_the_markdown_and_csv(sweep: Path, tmp_path: Path):
    report.write_tables(report.collect([str(sweep)]), tmp_path)
    out = tmp_path / "report"
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in (out / "by_config.md").read_text().splitlines()]
    header = rows[0]
    assert header[-3:] == ["p vs base", "p vs best", "best"] and "mark" not in header
    shown = {(r[0], r[1]): (r[-2], r[-1]) for r in rows[2:]}
    assert shown == {("m1", "4"): ("0.0039", ""), ("m1", "8"): ("", "*="), ("m1", "16"): ("1", "†"),
                     ("m2", "4"): ("0.0039", ""), ("m2", "8"): ("", "*")}
    tex = (out / "by_config.tex").read_text()
    assert r"\textdagger{}" in tex and "†" not in tex and r"*=" in tex
    csv = pd.read_csv(out / "by_config.csv")
    assert {"p vs best", "p vs base", "best", "mark"} <= set(csv.columns)
    text = (out / "report.md").read_text()
    assert report.SIGNIF_NOTE in text and "seed 0" in report.SIGNIF_NOTE and "Holm" in report.SIGNIF_NOTE


def test_p_vs_best_is_the_enumerated_p_of_the_seed_averaged_items(tmp_path: Path):
    rng = np.random.default_rng(5)
    best = rng.uniform(0.3, 0.9, N).round(3)
    seeds = [best - rng.normal(0.05, 0.1, N).round(3) for _ in range(2)]  # two seeds of the other configuration
    write_run(tmp_path / "best", axes("m", 8), best)
    for s, f1 in enumerate(seeds):
        write_run(tmp_path / f"other-s{s}", axes("m", 4, seed=s), f1)
    table = report.by_config(report.collect([str(tmp_path)]))
    averaged = (seeds[0] + seeds[1]) / 2 - best
    expected = enumerated_p(averaged)
    assert by(table, "m", 4)["p vs best"] == pytest.approx(expected, abs=1e-12)  # one comparison: Holm = raw
    assert by(table, "m", 8)["mark"] == ("*" if expected < 0.05 else "*=")


def test_equal_means_are_a_tie(tmp_path: Path):
    f1 = [0.2, 0.4, 0.6] * 4
    write_run(tmp_path / "a", axes("m", 4), f1)
    write_run(tmp_path / "b", axes("m", 8), f1[::-1])  # the same mean, other items
    table = report.by_config(report.collect([str(tmp_path)]))
    assert sorted(table["mark"]) == ["*=", "†"]


def test_different_items_are_refused_with_a_reason(tmp_path: Path, caplog):
    write_run(tmp_path / "a", axes("m", 4), [0.2] * N)
    write_run(tmp_path / "b", axes("m", 8), [0.9] * N, ids=[f"q{i:02d}" for i in range(1, N + 1)])
    with caplog.at_level(logging.WARNING, logger="medsweep.report"):
        table = report.by_config(report.collect([str(tmp_path)]))
    assert list(table["mark"]) == ["", "*?"] and "p vs best" not in table  # nothing tested: no p column
    assert "no paired test: model=m lora.r=8 and model=m lora.r=4 were evaluated on different items: " \
           "1 only in model=m lora.r=8 (e.g. 'q12'), 1 only in model=m lora.r=4 (e.g. 'q00')" in caplog.text


def test_seeds_with_different_items_are_refused(tmp_path: Path, caplog):
    write_run(tmp_path / "s0", axes("m", 4, 0), [0.2] * N)
    write_run(tmp_path / "s1", axes("m", 4, 1), [0.2] * N, ids=[f"x{i}" for i in range(N)])
    write_run(tmp_path / "b", axes("m", 8), [0.9] * N)
    with caplog.at_level(logging.WARNING, logger="medsweep.report"):
        table = report.by_config(report.collect([str(tmp_path)]))
    assert by(table, "m", 8)["mark"] == "*?"
    assert "s0 and s1 were evaluated on different items" in caplog.text


def test_items_are_matched_by_identity_not_position(tmp_path: Path):
    rng = np.random.default_rng(7)
    a, b = rng.uniform(0, 1, 20).round(3), rng.uniform(0.1, 1, 20).round(3)
    write_run(tmp_path / "x" / "a", axes("m", 4), a)
    write_run(tmp_path / "x" / "b", axes("m", 8), b)
    write_run(tmp_path / "y" / "a", axes("m", 4), a, shuffle=1)  # the same items, written in another order
    write_run(tmp_path / "y" / "b", axes("m", 8), b, shuffle=2)
    p = [report.by_config(report.collect([str(tmp_path / d)]))["p vs best"].dropna().iloc[0] for d in "xy"]
    assert p[0] == p[1]  # 20 items: sampled sign vectors meet the items in identity order either way


def test_items_by_question_without_ids_and_bad_files(tmp_path: Path):
    run = write_run(tmp_path / "a", axes("m", 4), [0.5, 0.25], ids=[None, ""])  # no ids: the question
    assert list(report.read_items(run).index) == ["question None?", "question ?"]
    (run / "predictions.jsonl").write_text('{"question": "q", "scores": {"f1": 1}}\n' * 2)
    with pytest.raises(report.NoItems, match="lists item 'q' more than once"):
        report.read_items(run)
    (run / "predictions.jsonl").write_text('{"question": "q", "scores": {"f1": 1}}\nnot json\n')
    with pytest.raises(report.NoItems, match="line 2 is not JSON"):
        report.read_items(run)
    (run / "predictions.jsonl").write_text('[1, 2]\n')
    with pytest.raises(report.NoItems, match="line 1 is not a prediction row"):
        report.read_items(run)
    (run / "predictions.jsonl").write_text("\n")
    with pytest.raises(report.NoPredictions, match="holds no predictions"):
        report.read_items(run)
    with pytest.raises(report.NoPredictions, match=r"predictions_baseline.jsonl does not exist \(eval.baseline"):
        report.read_items(run, baseline=True)


def test_decision_accuracy_per_item_from_the_labels(tmp_path: Path):
    run = tmp_path / "r"
    run.mkdir()
    rows = [{"id": str(i), "question": "q", "generated": g, "label": label, "scores": {"f1": 0.0}}
            for i, (g, label) in enumerate([("Yes, it does.", "yes"), ("maybe", "no"), ("No.", "no")])]
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert report.read_items(run)["decision_accuracy"].tolist() == [1.0, 0.0, 1.0]


def test_a_48_item_8_configuration_table_is_fast(tmp_path: Path):
    rng = np.random.default_rng(0)
    for r in range(8):
        write_run(tmp_path / f"r{r}", axes("m", 2 ** r), rng.uniform(0, 1, 48).round(3),
                  base=rng.uniform(0, 1, 48).round(3))
    df = report.collect([str(tmp_path)])
    report.by_config(df)  # the prediction files read once
    start = time.process_time()  # this process's CPU time: the machine may be busy with others
    table = report.by_config(df)
    assert time.process_time() - start < 2.0  # 15 sampled tests of 10,000 sign vectors, numpy-vectorised
    assert table["p vs best"].notna().sum() == 7 and table["p vs base"].notna().sum() == 8


def test_blocks_of_sign_vectors_change_nothing(monkeypatch):
    d = [0.3, -0.1, 0.2, 0.25, 0.05, -0.3, 0.4]
    sampled = report.sign_flip_p([d * 3], n_resamples=50)[0]
    monkeypatch.setattr(paired_mod, "_BLOCK", 7 * 3)  # blocks of 3 sign vectors of 7 items, 1 of 21 items
    assert report.sign_flip_p([d])[0] == enumerated_p(d)
    assert report.sign_flip_p([d * 3], n_resamples=50)[0] == sampled


# ------------------------------------------------------------------------- medsweep-report --compare

@pytest.fixture
def varied(tmp_path: Path) -> Path:
    """One model, r=4 (two seeds) and r=8 (one run) with varied per-item F1, and a base model."""
    rng = np.random.default_rng(11)
    root = tmp_path / "varied"
    base = rng.uniform(0, 0.5, N).round(3)
    r4 = [rng.uniform(0.2, 0.8, N).round(3) for _ in range(2)]
    r8 = (r4[0] + np.linspace(-0.1, 0.45, N)).round(3)  # item q11 gains most, then q10, ...
    for seed, f1 in enumerate(r4):
        write_run(root / f"r4-s{seed}", axes("m", 4, seed), f1, base=base)
    write_run(root / "r8-s0", axes("m", 8, 0), r8, base=base)
    return root


def compare_rows(text: str) -> dict[str, list[str]]:
    """metric -> its cells in the comparison table."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def test_compare_two_configurations(varied: Path, capsys):
    assert report.main([str(varied), "--compare", "lora.r=4", "lora.r=8", "--top", "3"]) == 0
    out, err = capsys.readouterr()
    a = np.mean([[r["scores"]["f1"] for r in map(json.loads, (varied / f"r4-s{s}" / "predictions.jsonl")
                                                 .read_text().splitlines())] for s in (0, 1)], axis=0)
    b = np.array([json.loads(line)["scores"]["f1"] for line in (varied / "r8-s0" / "predictions.jsonl")
                  .read_text().splitlines()])
    f1 = compare_rows(out)["F1"]  # A, B, B − A, 95% CI, p, p (Holm), items, differ
    assert [float(x) for x in f1[:3]] == pytest.approx([a.mean(), b.mean(), (b - a).mean()], abs=5e-4)
    low, high = (float(x) for x in f1[3].strip("[]").split(","))
    assert low < (b - a).mean() < high
    assert float(f1[4]) == pytest.approx(enumerated_p(b - a), rel=0.05)  # printed with 2 significant digits
    assert f1[6:] == [str(N), str(int((a != b).sum()))]
    assert set(compare_rows(out)) == {"EM %", "F1", "sentence BLEU", "ROUGE-1", "ROUGE-2", "ROUGE-L"}
    assert "A: lora.r=4: 2 runs (r4-s0, r4-s1)" in out and "B: lora.r=8: 1 run (r8-s0)" in out
    assert "seed 0" in out and "sign-flip" in out and "Holm" in out
    # the items where they differ most, largest first, with both seeds' answers of A and the reference
    gap = np.abs(b - a)
    top = [f"q{i:02d}" for i in np.argsort(-gap, kind="stable")[:3]]
    assert re.findall(r"^### \d\. (q\d\d) ", out, flags=re.M) == top
    assert "- question: question q11?\n- reference: reference q11\n- A, seed 0 (F1 " in out
    assert "- A, seed 1 (F1 " in out and "- B (F1 " in out and "r8-s0 says" in out
    written = varied / "report" / "compare_lora.r=4_vs_lora.r=8.md"
    assert out == written.read_text() + "\n" and err.endswith(f"medsweep-report: wrote {written}\n")


def test_compare_against_the_base_model_and_run_dirs(varied: Path, capsys):
    assert report.main([str(varied), "--compare", "base", "lora.r=8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# base (lora.r=8) vs lora.r=8\n\nA: base (lora.r=8): the base model of 1 run (r8-s0)")
    record = json.loads((varied / "r8-s0" / "metrics.json").read_text())
    assert float(compare_rows(out)["F1"][0]) == pytest.approx(record["baseline"]["f1"], abs=5e-4)
    assert float(compare_rows(out)["F1"][2]) == pytest.approx(record["delta"]["f1"], abs=5e-4)
    # run dirs need no PATH, and nothing is written without one
    assert report.main(["--compare", str(varied / "r4-s0"), str(varied / "r8-s0")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"# {varied / 'r4-s0'} vs {varied / 'r8-s0'}\n") and "wrote" not in err
    assert not (varied / "r4-s0" / "report").exists()


def test_compare_p_is_exact_on_identical_shifts(sweep: Path, capsys):
    assert report.main([str(sweep), "--compare", "model=m2,lora.r=4", "model=m2,lora.r=8", "--top", "1"]) == 0
    out = capsys.readouterr().out
    f1 = compare_rows(out)["F1"]
    assert f1[:4] == ["0.1", "0.5", "0.4", "[0.4, 0.4]"] and f1[4] == f"{2 / 2 ** N:.2g}"
    assert "\n## The item where they differ most in F1\n\n### 1. q00 (F1: A 0.1, B 0.5)\n" in out
    (sweep / "m2-r8" / "predictions.jsonl").write_text("".join(
        json.dumps({**row, "generated": " \n"}) + "\n" for row in prediction_rows(
            [f"q{i:02d}" for i in range(N)], [0.5] * N, "")))
    assert report.main([str(sweep), "--compare", "model=m2,lora.r=4", "model=m2,lora.r=8", "--top", "1"]) == 0
    assert "- B (F1 0.5): _(empty)_\n" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--compare", "nope", "lora.r=4"], "unknown run or selection 'nope': give a run dir, axis=value[,axis=value] "
                                        "or base"),
    (["--compare", "lora.r=4", "lora.r=5"], "lora.r=5 matches no complete run; values in these runs: lora.r: 4, 8"),
    (["--compare", "model=m", "lora.r=8"], "model=m matches 3 runs of more than one configuration (lora.r: 4, 8); "
                                           "narrow it with axis=value"),
    (["--compare", "rank=4", "lora.r=8"], "rank=4: unknown axis rank; axes in these runs: model, lora.r, train.seed"),
    (["--compare", "base", "base"], "--compare base base: one side must be runs"),
    (["--compare", "lora.r=4", "lora.r=8", "--metric", "nope"], "unknown metric 'nope'; per-item metrics: "),
])
def test_compare_errors_are_one_line_and_exit_2(varied: Path, capsys, argv, message):
    assert report.main([str(varied), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"medsweep-report: error: {message}") and err.count("\n") == 1


def test_compare_refuses_different_items_and_missing_baselines(tmp_path: Path, capsys):
    write_run(tmp_path / "a", axes("m", 4), [0.2] * N)
    write_run(tmp_path / "b", axes("m", 8), [0.9] * N, ids=[f"q{i:02d}" for i in range(1, N + 1)])
    assert report.main([str(tmp_path), "--compare", "lora.r=4", "lora.r=8"]) == 2
    assert capsys.readouterr().err == ("medsweep-report: error: lora.r=4 and lora.r=8 were evaluated on different "
                                       "items: 1 only in lora.r=4 (e.g. 'q00'), 1 only in lora.r=8 (e.g. 'q12')\n")
    assert report.main(["--compare", "base", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == (f"medsweep-report: error: {tmp_path / 'a' / 'predictions_baseline.jsonl'} "
                                       "does not exist (eval.baseline=false?)\n")
    assert report.main(["--compare", "lora.r=4", "lora.r=8"]) == 2
    assert capsys.readouterr().err == ("medsweep-report: error: lora.r=4 selects by axis values: give the sweep "
                                       "dir(s) it selects from\n")


def test_compare_needs_a_positive_top_and_a_path_without_compare(varied: Path, capsys):
    for argv in ([str(varied), "--compare", "lora.r=4", "lora.r=8", "--top", "0"], ["--stages"]):
        with pytest.raises(SystemExit) as exit_:
            report.main(argv)
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--top must be at least 1, got 0" in err and "the following arguments are required: PATH" in err
