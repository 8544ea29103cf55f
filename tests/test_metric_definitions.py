"""Pinned metric definitions (metrics.definitions, stored in every record) and what the report does with them: the
sacreBLEU signature is sacrebleu's own for the settings medsweep scores with, runs with different definitions get
one warning line per differing field and no significance marks, records without definitions still report; the
semantic similarity (eval.semantic, WordLlama) on constructed pairs; the metric agreement table (Spearman's rho
across configurations) against rho computed by hand. Offline, fast."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from medsweep import metrics, semantic
from medsweep.errors import ConfigError
from medsweep.report import agreement as agreement_mod
from tests.test_report_signif import N, axes, by, write_run

HYPS = ["The patient should take two tablets a day.", "Glaucoma damages the optic nerve.", "See a doctor."]
REFS = ["Take two tablets daily.", "Glaucoma is a disease that damages the eye's optic nerve.", "Consult a doctor."]


# ------------------------------------------------------------------------- the definitions

def test_bleu_signatures_are_sacrebleus_own_for_the_settings_medsweep_scores_with():
    import sacrebleu
    from sacrebleu.metrics import BLEU

    corpus = BLEU()  # sacrebleu.corpus_bleu's settings
    assert metrics.corpus_bleu(HYPS, REFS) == corpus.corpus_score(HYPS, [REFS]).score \
        == sacrebleu.corpus_bleu(HYPS, [REFS]).score
    sentence = BLEU(effective_order=True)  # sacrebleu.sentence_bleu's settings
    assert metrics.sentence_bleu(HYPS[0], REFS[0]) == sentence.sentence_score(HYPS[0], [REFS[0]]).score \
        == sacrebleu.sentence_bleu(HYPS[0], [REFS[0]]).score
    defined = metrics.definitions()
    assert defined.bleu == str(corpus.get_signature())
    assert defined.sentence_bleu == str(sentence.get_signature())
    assert defined.bleu == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    assert defined.packages["sacrebleu"] == sacrebleu.__version__


def test_rouge_em_f1_and_semantic_definitions():
    from importlib import metadata

    from rouge_score import rouge_scorer

    defined = metrics.definitions()
    tokenizer = type(rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)._tokenizer).__name__
    assert defined.rouge == ("rouge-score rouge1,rouge2,rougeL F-measure, use_stemmer=True (Porter), "
                             f"tokenizer={tokenizer}")
    assert "SQuAD v1.1" in defined.em_f1 and defined.em_f1.endswith(metrics.EM_F1_VERSION)
    assert defined.packages == {"sacrebleu": metadata.version("sacrebleu"),
                                "rouge-score": metadata.version("rouge-score")}
    assert defined.semantic is None and "semantic" not in defined.lines()
    assert metrics.MetricDefinitions.from_dict(defined.to_dict()) == defined
    assert metrics.MetricDefinitions.from_dict(json.loads(json.dumps(defined.to_dict()))) == defined
    for junk in (None, {}, "nrefs:1", {"bleu": "x"}, [1]):
        assert metrics.MetricDefinitions.from_dict(junk) is None


# ------------------------------------------------------------------------- the report

def _define(run_dir: Path, **changes) -> None:
    """Give a record the current definitions, with ``changes`` to some fields (or none: an old record)."""
    path = run_dir / "metrics.json"
    record = json.loads(path.read_text())
    record["metric_definitions"] = {**metrics.definitions().to_dict(), **changes}
    path.write_text(json.dumps(record))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """m: r=8 clearly best of three configurations, every item the same way (marks and p-values when comparable)."""
    for r, f1 in [(4, [0.2] * N), (8, [0.8] * N), (16, [0.5] * N)]:
        write_run(tmp_path / f"m-r{r}", axes("m", r), f1, base=[0.1] * N)
    return tmp_path


def test_same_definitions_keep_the_marks_and_print_them_once(sweep: Path, tmp_path: Path):
    for d in sweep.iterdir():
        _define(d)
    from medsweep import report

    table = report.by_config(report.collect([str(sweep)]))
    assert by(table, "m", 8)["mark"] == "*" and "p vs best" in table
    report.write_tables(report.collect([str(sweep)]), tmp_path / "out")
    text = (tmp_path / "out" / "report" / "report.md").read_text()
    section = text.split("## Metric definitions", 1)[1]
    assert text.count("## Metric definitions") == 1
    # one table row per field: the signature's | escaped, so that it stays one cell
    assert f"| BLEU (corpus) | {metrics.definitions().bleu.replace('|', chr(92) + '|')} |" in " ".join(section.split())
    assert " differs: " not in text and "different metric definitions" not in text
    assert "record no metric definitions" not in text


def test_different_definitions_are_said_field_by_field_and_not_tested(sweep: Path, tmp_path: Path, caplog):
    other = metrics.definitions().bleu.replace("tok:13a", "tok:intl")
    _define(sweep / "m-r4")
    _define(sweep / "m-r8")
    _define(sweep / "m-r16", bleu=other)
    from medsweep import report

    df = report.collect([str(sweep)])
    with caplog.at_level(logging.WARNING, logger="medsweep.report"):
        table = report.by_config(df)
    assert by(table, "m", 8)["mark"] == "*?" and by(table, "m", 4)["mark"] == by(table, "m", 16)["mark"] == ""
    assert "p vs best" not in table and "p vs base" not in table  # no test of one definition against another
    assert "different metric definitions" in caplog.text
    pivot = report.pivot(df, ["model", "lora.r"])
    assert pivot.loc[("m", 8), "mark"] == "*?" and "p vs best" not in pivot
    assert report.definitions_of(df).warnings() == [
        f"`bleu` differs: `{metrics.definitions().bleu}` in 2 runs (m-r4, m-r8); `{other}` in 1 run (m-r16)"]
    report.write_tables(df, tmp_path / "out")
    text = (tmp_path / "out" / "report" / "report.md").read_text()
    lines = [line for line in text.splitlines() if " differs: " in line]
    assert lines == [f"- `bleu` differs: `{metrics.definitions().bleu}` in 2 runs (m-r4, m-r8); `{other}` in 1 run "
                     "(m-r16)"]
    assert text.count("These runs use different metric definitions") == 3  # Table 4, all configurations, pivot
    section = text.split("## Metric definitions", 1)[1]
    assert metrics.definitions().rouge in section  # the fields they share, once


def test_old_records_without_definitions_are_unknown_not_a_crash(sweep: Path, tmp_path: Path):
    _define(sweep / "m-r8")  # the two others are old records
    record = json.loads((sweep / "m-r16" / "metrics.json").read_text())
    record["metric_definitions"] = "garbage"  # not a mapping: unknown as well, the record itself is fine
    (sweep / "m-r16" / "metrics.json").write_text(json.dumps(record))
    from medsweep import report

    df = report.collect([str(sweep)])
    assert set(df["status"]) == {"complete"}
    table = report.by_config(df)
    assert by(table, "m", 8)["mark"] == "*"  # unknown is not held against the others
    report.write_tables(df, tmp_path / "out")
    text = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "2 runs (m-r16, m-r4) record no metric definitions" in text
    assert " differs: " not in text and metrics.definitions().bleu.replace("|", "\\|") in text


def test_a_metric_one_run_did_not_compute_is_no_disagreement(sweep: Path):
    packages = metrics.definitions().packages
    _define(sweep / "m-r4")  # eval.semantic off
    _define(sweep / "m-r8", semantic="some embedder", packages={**packages, "wordllama": "0.4.0"})
    _define(sweep / "m-r16", semantic="some embedder", packages={**packages, "wordllama": "0.4.0"})
    from medsweep import report

    df = report.collect([str(sweep)])
    assert report.definitions_of(df).differing == []
    assert by(report.by_config(df), "m", 8)["mark"] == "*"
    _define(sweep / "m-r16", semantic="another embedder", packages={**packages, "wordllama": "0.5.0"})
    found = report.definitions_of(report.collect([str(sweep)]))
    assert found.differing == ["semantic", "packages.wordllama"]
    assert found.by_field["semantic"] == {"another embedder": ["m-r16"], "some embedder": ["m-r8"]}
    assert found.by_field["packages.sacrebleu"] == {packages["sacrebleu"]: ["m-r16", "m-r4", "m-r8"]}


# ------------------------------------------------------------------------- agreement

def _config_runs(root: Path, values: dict[int, dict[str, float]], seeds: int = 2) -> None:
    """One run per seed of each lora.r; each seed's metrics are the configuration's value -/+ 0.01 (mean: value)."""
    for r, scores in values.items():
        for seed in range(seeds):
            run = root / f"m-r{r}-s{seed}"
            run.mkdir(parents=True)
            shift = 0.01 * (1 if seed else -1) if seeds > 1 else 0.0
            record = {"status": "complete", "run_name": run.name, "axes": axes("m", r, seed),
                      "metrics": {k: v + shift for k, v in scores.items()}}
            (run / "metrics.json").write_text(json.dumps(record))


def test_agreement_is_spearmans_rho_across_configurations(tmp_path: Path):
    # configurations r=1..4: F1 ranks 1 2 3 4, BLEU 1 3 2 4 (rho = 1 - 6*2/(4*15) = 0.8), the judge reversed
    # (rho = -1); values far from linear in their ranks, so that a linear (Pearson) correlation would differ;
    # semantic in two configurations only: not enough to rank
    _config_runs(tmp_path, {
        1: {"f1": 0.1, "bleu": 1.0, "judge_correct": 9.0, "semantic": 0.5, "seconds_per_answer": 1.0},
        2: {"f1": 0.2, "bleu": 30.0, "judge_correct": 3.0, "seconds_per_answer": 2.0},
        3: {"f1": 0.3, "bleu": 2.0, "judge_correct": 2.5, "seconds_per_answer": 3.0},
        4: {"f1": 0.9, "bleu": 40.0, "judge_correct": 0.5, "semantic": 0.7, "seconds_per_answer": 4.0}})
    from medsweep import report

    df = report.collect([str(tmp_path)])
    assert agreement_mod.quality_columns(df) == ["f1", "bleu", "semantic", "judge_correct"]  # no latency
    table = report.metric_agreement(df)
    rho = {(a, b): (n, r) for a, b, n, r in zip(table["metric A"], table["metric B"], table["configs"],
                                                 table["Spearman ρ"], strict=True)}
    assert rho.keys() == {("F1", "BLEU"), ("F1", "Judge correct"), ("BLEU", "Judge correct")}
    assert rho[("F1", "BLEU")] == (4, pytest.approx(0.8))
    assert rho[("F1", "Judge correct")] == (4, pytest.approx(-1.0))
    assert rho[("BLEU", "Judge correct")] == (4, pytest.approx(-0.8))
    # exact permutation p-values over the 24 orderings of 4 configurations (two-sided): |rho| = 1 in 2 of them,
    # |rho| >= 0.8 in 8 (rho = 0.8: the 3 adjacent swaps, and the identity; their mirrors for -0.8 and -1)
    p = {(a, b): v for a, b, v in zip(table["metric A"], table["metric B"], table["p"], strict=True)}
    assert p[("F1", "Judge correct")] == pytest.approx(1 / 12) and p[("F1", "BLEU")] == pytest.approx(1 / 3)
    report.write_tables(df, tmp_path / "out")
    text = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "## Agreement between metrics" in text and "| F1 " in text.split("## Agreement between metrics")[1]


def test_spearman_permutation_p_values():
    # n = 5, rho = 0.9 (one adjacent swap): orderings with rho >= 0.9 are the identity and the 4 adjacent swaps,
    # 5 of 120, two-sided 10/120; a constant sample has no rho; 9 configurations: random orderings, seeded
    assert agreement_mod.spearman([1, 2, 3, 4, 5], [1, 3, 2, 4, 5]) == (pytest.approx(0.9), pytest.approx(1 / 12))
    assert all(math.isnan(v) for v in agreement_mod.spearman([1, 2, 3], [2, 2, 2]))
    x = list(range(9))
    rho, p = agreement_mod.spearman(x, x)
    assert rho == pytest.approx(1.0) and 0 < p <= 2 / 10_000 + 1e-12
    assert agreement_mod.spearman(x, [0, 2, 1, 3, 5, 4, 6, 8, 7]) == agreement_mod.spearman(x, [0, 2, 1, 3, 5, 4, 6,
                                                                                                  8, 7])


def test_agreement_needs_three_configurations(tmp_path: Path):
    _config_runs(tmp_path, {1: {"f1": 0.1, "bleu": 1.0}, 2: {"f1": 0.2, "bleu": 3.0}})
    from medsweep import report

    df = report.collect([str(tmp_path)])
    assert report.metric_agreement(df).empty  # 2 configurations (of 2 seeds each: 4 runs) are not 3
    report.write_tables(df, tmp_path / "out")
    assert "Agreement between metrics" not in (tmp_path / "out" / "report" / "report.md").read_text()


# ------------------------------------------------------------------------- semantic similarity

needs_embedder = pytest.mark.skipif(not semantic.available(), reason="wordllama not installed (medsweep[semantic])")


@needs_embedder
def test_semantic_similarity_on_constructed_pairs():
    same = "Glaucoma is a group of eye diseases that damage the optic nerve."
    paraphrase = "Glaucoma is an eye disease in which the optic nerve is damaged."
    unrelated = "The quarterly sales report is due on Friday afternoon."
    got = semantic.similarities([same, paraphrase, unrelated, "", ""], [same, same, same, same, ""])
    assert got[0] == pytest.approx(1.0, abs=1e-5)
    assert got[1] > got[2] + 0.3 and got[1] < 1.0
    assert got[3:] == [0.0, 1.0]  # an empty answer is unrelated; two empty texts are equal
    corpus, rows = metrics.score_corpus([same, unrelated], [same, same], semantic=True)
    assert corpus["semantic"] == pytest.approx((1.0 + got[2]) / 2, abs=1e-6)
    assert [r["semantic"] for r in rows] == pytest.approx([1.0, got[2]], abs=1e-6)
    defined = metrics.definitions(semantic=True)
    assert defined.semantic is not None and semantic.MODEL in defined.semantic
    assert defined.packages[semantic.PACKAGE] is not None


def test_semantic_off_leaves_no_trace():
    corpus, rows = metrics.score_corpus(HYPS, REFS)
    assert "semantic" not in corpus and all("semantic" not in r for r in rows)


def test_eval_semantic_without_the_package_is_one_config_error(monkeypatch):
    from medsweep.config import EvalConfig, TrainConfig

    monkeypatch.setattr(semantic, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"eval.semantic=True is invalid: needs the optional package wordllama"):
        EvalConfig(semantic=True).check(TrainConfig())
    EvalConfig(semantic=False).check(TrainConfig())


def test_semantic_is_tested_item_by_item_like_the_lexical_scores(tmp_path: Path):
    """per_example=True in the registry: the paired tests and the per-item reader know `semantic`."""
    from medsweep import report

    assert metrics.BY_NAME["semantic"].per_example and "semantic" in report.TESTABLE
    assert "semantic" in report.ITEM_METRICS
    for r, value in [(4, 0.2), (8, 0.9)]:
        run = tmp_path / f"m-r{r}"
        run.mkdir()
        rows = [{"id": f"q{i}", "question": f"q{i}", "reference": "x", "generated": "y",
                 "scores": {"f1": 0.5, "semantic": value}} for i in range(N)]
        (run / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        (run / "metrics.json").write_text(json.dumps({"status": "complete", "run_name": run.name,
                                                      "axes": axes("m", r), "metrics": {"semantic": value}}))
    table = report.by_config(report.collect([str(tmp_path)]), metric="semantic")
    assert by(table, "m", 8)["mark"] == "*" and by(table, "m", 4)["p vs best"] == pytest.approx(2 / 2 ** N)


def test_compare_says_when_the_two_sides_use_different_definitions(sweep: Path):
    from medsweep import report

    other = metrics.definitions().rouge.replace("use_stemmer=True", "use_stemmer=False")
    _define(sweep / "m-r4")
    _define(sweep / "m-r8", rouge=other)
    text, _ = report.run_compare([str(sweep)], "lora.r=4", "lora.r=8")
    lines = [line for line in text.splitlines() if " differs: " in line]
    assert lines == [f"- `rouge` differs: `{metrics.definitions().rouge}` in 1 run (m-r4); `{other}` in 1 run (m-r8)"]
    _define(sweep / "m-r8")
    text, _ = report.run_compare([str(sweep)], "lora.r=4", "lora.r=8")
    assert "different metric definitions" not in text and "| F1 " in text
