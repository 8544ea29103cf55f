"""Tests for medsweep.loaders: real data in ../shared/data plus small tmp_path fixtures."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsweep.errors import ConfigError, DataError
from medsweep.loaders import (
    LOADERS,
    load_local,
    load_medal,
    load_medchat,
    load_medquad,
    load_mix,
    load_mixture,
    load_pubmedqa,
    load_sample,
    load_wikidoc,
    read_table,
    sample_path,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MEDQUAD_XML = DATA / "medquad" / "xml"
MEDQUAD_JSONL = DATA / "medquad" / "medquad_2000.jsonl"
PUBMEDQA_DIR = DATA / "pubmedqa"
PUBMEDQA_ORI = PUBMEDQA_DIR / "ori_pqal.json"
PUBMEDQA_TEST = PUBMEDQA_DIR / "test_ground_truth.json"
PUBMEDQA_JSONL = PUBMEDQA_DIR / "pubmedqa_pqal.jsonl"

needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"shared real data folder {DATA} is absent (only on dev/CI machines)"
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return path


def skipped(stats: dict) -> int:
    return sum(v for k, v in stats.items() if k.startswith("skipped_"))


def assert_valid_records(records: list[dict]) -> None:
    for r in records:
        assert isinstance(r["id"], str) and r["id"]
        assert isinstance(r["question"], str) and r["question"] == r["question"].strip() != ""
        assert isinstance(r["answer"], str) and r["answer"] == r["answer"].strip() != ""
        assert set(r) <= {"id", "question", "answer", "context", "source", "label"}


# --------------------------------------------------------------------------- MedQuAD


def _count_answers_by_regex(root: Path) -> tuple[int, Counter]:
    """Count over the raw XML text: (answers with text, empty answers per collection)."""
    kept, empty = 0, Counter()
    for file in root.rglob("*.xml"):
        raw = file.read_text(encoding="utf-8")
        for match in re.finditer(r"<Answer\s*/>|<Answer>(.*?)</Answer>", raw, re.S):
            if (match.group(1) or "").strip():
                kept += 1
            else:
                empty[file.parent.name] += 1
    return kept, empty


@needs_data
def test_medquad_xml_tree_counts():
    records, stats = load_medquad(str(MEDQUAD_XML))
    expected_kept, expected_empty = _count_answers_by_regex(MEDQUAD_XML)
    assert expected_kept > 0 and sum(expected_empty.values()) > 0
    assert set(expected_empty) <= {"10_MPlus_ADAM_QA", "12_MPlusHerbsSupplements_QA"}
    assert len(records) == stats["kept"] == expected_kept
    assert stats["skipped_empty_answer"] == sum(expected_empty.values())
    assert stats["skipped_empty_question"] == 0
    assert stats["read"] == stats["kept"] + skipped(stats)
    assert stats["files"] == 44
    assert_valid_records(records)
    collections = {d.name for d in MEDQUAD_XML.iterdir() if d.is_dir()}
    sources = {r["source"] for r in records}
    assert sources <= collections
    assert sources == collections - {"10_MPlus_ADAM_QA", "12_MPlusHerbsSupplements_QA"}
    assert len({r["id"] for r in records}) == len(records)  # ids unique across collections
    assert all(r["id"].startswith(r["source"] + "/") for r in records)


@needs_data
def test_medquad_single_xml_file():
    file = MEDQUAD_XML / "10_MPlus_ADAM_QA" / "0000001.xml"
    records, stats = load_medquad(str(file))
    assert records == [] and stats["read"] == stats["skipped_empty_answer"] > 0


@needs_data
def test_medquad_flattened_jsonl():
    records, stats = load_medquad(str(MEDQUAD_JSONL))
    assert len(records) == 2000 and stats["read"] == 2000 and skipped(stats) == 0
    assert_valid_records(records)
    assert len({r["id"] for r in records}) == 2000
    assert all(r["source"].startswith("MedQuAD/") for r in records)


def test_medquad_rejects_non_medquad_xml(tmp_path):
    (tmp_path / "c").mkdir()
    bad = tmp_path / "c" / "doc.xml"
    bad.write_text('<?xml version="1.0"?><rss><channel/></rss>', encoding="utf-8")
    with pytest.raises(DataError, match=r"doc\.xml.*not a MedQuAD document"):
        load_medquad(str(tmp_path))
    bad.write_text("this is not xml at all", encoding="utf-8")
    with pytest.raises(DataError, match=r"doc\.xml.*not a MedQuAD document"):
        load_medquad(str(tmp_path))


def test_medquad_rejects_entity_declarations(tmp_path):
    doc = tmp_path / "evil.xml"
    doc.write_text(
        '<?xml version="1.0"?><!DOCTYPE Document [<!ENTITY a "aaaaaaaa">]>'
        '<Document id="1"><QAPairs><QAPair pid="1"><Question qid="1-1">q &a;</Question>'
        "<Answer>x</Answer></QAPair></QAPairs></Document>",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"evil\.xml"):
        load_medquad(str(doc))


def test_medquad_xml_fixture_ids_and_fallback(tmp_path):
    folder = tmp_path / "1_Test_QA"
    folder.mkdir()
    (folder / "0001.xml").write_text(
        '<Document id="0001" source="T"><Focus>F</Focus><QAPairs>'
        '<QAPair pid="1"><Question qid="0001-1" qtype="x">What is F?</Question>'
        "<Answer>F is <b>bold</b> text.</Answer></QAPair>"
        '<QAPair pid="2"><Question>No qid?</Question><Answer> yes </Answer></QAPair>'
        '<QAPair pid="3"><Question qid="0001-3"> </Question><Answer>a</Answer></QAPair>'
        '<QAPair pid="4"><Question qid="0001-4">Empty?</Question><Answer/></QAPair>'
        "</QAPairs></Document>",
        encoding="utf-8",
    )
    records, stats = load_medquad(str(tmp_path))
    assert [r["id"] for r in records] == ["1_Test_QA/0001-1", "1_Test_QA/0001_2"]
    assert records[0]["answer"] == "F is bold text."
    assert records[1]["answer"] == "yes"
    assert stats == {"read": 4, "kept": 2, "skipped_empty_question": 1,
                     "skipped_empty_answer": 1, "files": 1}


def test_medquad_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no \\*.xml files"):
        load_medquad(str(tmp_path))


# --------------------------------------------------------------------------- PubMedQA


@needs_data
def test_pubmedqa_original_all():
    records, stats = load_pubmedqa(str(PUBMEDQA_ORI))
    assert len(records) == 1000 and stats["read"] == 1000
    assert Counter(r["label"] for r in records) == {"yes": 552, "no": 338, "maybe": 110}
    assert_valid_records(records)
    assert all(r["context"] and r["id"].isdigit() for r in records)
    raw = json.loads(PUBMEDQA_ORI.read_text(encoding="utf-8"))
    first = records[0]
    assert first["context"] == " ".join(c.strip() for c in raw[first["id"]]["CONTEXTS"])


@needs_data
def test_pubmedqa_original_splits():
    truth = json.loads(PUBMEDQA_TEST.read_text(encoding="utf-8"))
    test, test_stats = load_pubmedqa(str(PUBMEDQA_ORI), split="test")
    train, _ = load_pubmedqa(str(PUBMEDQA_ORI), split="train")
    assert len(test) == 500 and {r["id"] for r in test} == set(truth)
    assert test_stats["skipped_other_split"] == 500 and test_stats["kept"] == 500
    assert len(train) == 500 and not {r["id"] for r in train} & set(truth)
    assert all(truth[r["id"]] == r["label"] for r in test)
    # an explicit test_ids_path gives the same split
    again, _ = load_pubmedqa(str(PUBMEDQA_ORI), split="test", test_ids_path=str(PUBMEDQA_TEST))
    assert again == test


@needs_data
def test_pubmedqa_flattened_matches_original():
    original, _ = load_pubmedqa(str(PUBMEDQA_ORI))
    flat, stats = load_pubmedqa(str(PUBMEDQA_JSONL))
    assert stats["read"] == 1000 and len(flat) == 1000
    assert {r["id"]: r["label"] for r in flat} == {r["id"]: r["label"] for r in original}
    # the flattened copy has non-breaking spaces turned into plain spaces (9 fields differ)
    by_id = {r["id"]: r for r in original}
    for field in ("question", "answer"):
        assert all(r[field].split() == by_id[r["id"]][field].split() for r in flat)
    truth = json.loads(PUBMEDQA_TEST.read_text(encoding="utf-8"))
    flat_test, _ = load_pubmedqa(str(PUBMEDQA_JSONL), split="test")
    flat_train, _ = load_pubmedqa(str(PUBMEDQA_JSONL), split="train")
    assert {r["id"] for r in flat_test} == set(truth)
    assert len(flat_train) == 500 and not {r["id"] for r in flat_train} & set(truth)


def test_pubmedqa_bad_split_and_missing_ground_truth(tmp_path):
    ori = tmp_path / "ori.json"
    ori.write_text(json.dumps({"1": {"QUESTION": "q?", "CONTEXTS": ["a", "b"],
                                     "LONG_ANSWER": "la", "final_decision": "yes"}}))
    records, _ = load_pubmedqa(str(ori))
    assert records == [
        {"id": "1", "question": "q?", "context": "a b", "answer": "la", "label": "yes"}
    ]
    with pytest.raises(ConfigError, match="split"):
        load_pubmedqa(str(ori), split="dev")
    with pytest.raises(DataError, match="test_ground_truth.json"):
        load_pubmedqa(str(ori), split="test")
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(["1"]))
    assert load_pubmedqa(str(ori), split="test", test_ids_path=str(ids))[0] == records
    assert load_pubmedqa(str(ori), split="train", test_ids_path=str(ids))[0] == []


# --------------------------------------------------------------------------- read_table


ROWS = [
    {"qid": "a", "question": " What is NA? ", "answer": "NA", "ctx": "c1", "lab": "yes"},
    {"qid": "b", "question": "Q2", "answer": "", "ctx": "c2", "lab": "no"},
    {"qid": "c", "question": "", "answer": "A3", "ctx": "c3", "lab": "maybe"},
    {"qid": "d", "question": "Q4", "answer": "A4\nsecond line", "ctx": "", "lab": "yes"},
]
EXPECTED = [
    {"id": "a", "question": "What is NA?", "answer": "NA", "context": "c1", "label": "yes",
     "source": "s"},
    {"id": "d", "question": "Q4", "answer": "A4\nsecond line", "context": "", "label": "yes",
     "source": "s"},
]


def _write(fmt: str, path: Path, rows: list[dict]) -> Path:
    df = pd.DataFrame(rows)
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif fmt == "parquet":
        df.to_parquet(path, index=False)
    elif fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif fmt == "json-data":
        path.write_text(json.dumps({"data": rows}), encoding="utf-8")
    else:
        write_jsonl(path, rows)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "json", "json-data", "jsonl"])
def test_read_table_round_trip(tmp_path, fmt):
    suffix = "json" if fmt == "json-data" else fmt
    path = _write(fmt, tmp_path / f"rows.{suffix}", ROWS)
    records, stats = read_table(path, id_col="qid", context_col="ctx", label_col="lab", source="s")
    assert records == EXPECTED
    assert stats == {"read": 4, "kept": 2, "skipped_empty_question": 1, "skipped_empty_answer": 1}


def test_read_table_default_ids_and_none_values(tmp_path):
    path = write_jsonl(tmp_path / "my data.jsonl", [
        {"question": "q0", "answer": "a0"},
        {"question": "q1", "answer": None},
        {"question": 7, "answer": 3.5},
        {"question": "q3"},
    ])
    records, stats = read_table(path)
    assert records == [
        {"id": "my data-0", "question": "q0", "answer": "a0"},
        {"id": "my data-2", "question": "7", "answer": "3.5"},
    ]
    assert stats["skipped_empty_answer"] == 2


def test_read_table_parquet_nulls(tmp_path):
    path = tmp_path / "n.parquet"
    pd.DataFrame({"question": ["q", None, "q3"], "answer": ["a", "a2", None]}).to_parquet(path)
    records, stats = read_table(path)
    assert [r["id"] for r in records] == ["n-0"]
    assert stats["skipped_empty_question"] == 1 and stats["skipped_empty_answer"] == 1


def test_read_table_bad_jsonl_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n\n{"question": "q2", oops}\n')
    with pytest.raises(DataError, match=r"broken\.jsonl:3: not valid JSON") as err:
        read_table(path)
    assert "\n" not in str(err.value)
    path.write_text('{"question": "q", "answer": "a"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl:2: expected a JSON object"):
        read_table(path)


def test_read_table_missing_column(tmp_path):
    path = write_jsonl(tmp_path / "cols.jsonl", [{"prompt": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"cols\.jsonl: missing column\(s\) question;") as err:
        read_table(path)
    assert "available columns: prompt, answer" in str(err.value)
    with pytest.raises(DataError, match=r"missing column\(s\) ques, ans;"):
        read_table(path, question_col="ques", answer_col="ans")
    with pytest.raises(DataError, match=r"missing column\(s\) myid"):
        read_table(path, question_col="prompt", id_col="myid")
    records, _ = read_table(path, question_col="prompt")
    assert records == [{"id": "cols-0", "question": "q", "answer": "a"}]


def test_a_header_with_a_line_break_is_quoted_in_the_one_line_error(tmp_path):
    """Found by tests/test_hostile_input.py: a CSV header cell may hold a quoted line break."""
    path = tmp_path / "odd.csv"
    path.write_text('"que\nstion",answer\nq,a\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_table(path)
    assert "\n" not in str(err.value)
    assert str(err.value).endswith("missing column(s) question; available columns: 'que\\nstion', answer")


def test_read_table_unknown_extension_and_missing_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("question,answer\nq,a\n")
    with pytest.raises(DataError, match=r"data\.txt: unsupported file type '\.txt'.*parquet"):
        read_table(path)
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        read_table(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="file not found"):
        load_local(str(tmp_path / "nope.csv"))


def test_read_table_empty_and_malformed_files(tmp_path):
    empty = {"e.jsonl": "\n\n", "e.csv": "", "e.json": "[]", "h.csv": "question,answer\n"}
    for name, text in empty.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=re.escape(name) + ": no rows"):
            read_table(tmp_path / name)
    (tmp_path / "x.json").write_text('{"question": "q"}')
    with pytest.raises(DataError, match=r"x\.json: expected a JSON list"):
        read_table(tmp_path / "x.json")
    (tmp_path / "y.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"y\.parquet: cannot read"):
        read_table(tmp_path / "y.parquet")
    (tmp_path / "z.jsonl").write_bytes(b'{"question": "\xff"}\n')
    with pytest.raises(DataError, match=r"z\.jsonl: not valid UTF-8"):
        read_table(tmp_path / "z.jsonl")


def test_load_local_standard_signature(tmp_path):
    path = _write("csv", tmp_path / "t.csv", [{"Q": "q", "A": "a"}])
    records, stats = load_local(str(path), question_col="Q", answer_col="A", source="mine")
    assert records == [{"id": "t-0", "question": "q", "answer": "a", "source": "mine"}]
    assert stats["read"] == 1
    with pytest.raises(DataError, match="no data source"):
        load_local(None)


def test_hub_error_is_data_error_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config

    # the flags are read when `datasets` is imported, which may have happened already
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    start = time.monotonic()
    pattern = r"^cannot load hub dataset 'no-such-org/no-such-dataset-x': .*HF_DATASETS_OFFLINE"
    with pytest.raises(DataError, match=pattern) as err:
        load_local(None, hub="no-such-org/no-such-dataset-x")
    assert time.monotonic() - start < 15
    assert "\n" not in str(err.value)


def test_loaders_registry():
    assert LOADERS == {"sample": load_sample, "local": load_local, "medquad": load_medquad, "pubmedqa": load_pubmedqa,
                       "wikidoc": load_wikidoc, "medchat": load_medchat, "medal": load_medal, "mix": load_mixture}


def _data_cfg(loader: str, **fields) -> object:
    """A minimal data group: only what load_records reads for this loader (absent fields count as unset)."""
    from omegaconf import OmegaConf

    return OmegaConf.create({"loader": loader, "options": fields.pop("options", {}), **fields})


def test_every_registered_loader_is_reachable_through_load_records(tmp_path):
    from medsweep import data

    sample = sample_path()
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"Q": "What is flu?", "A": "A virus.", "key": "k1"},
                                             {"Q": "What is a cold?", "A": "A mild virus.", "key": "k2"}])
    pubmed = write_jsonl(tmp_path / "pqa.jsonl", [{"id": "pubmedqa-1", "question": "Does it?", "context": "c",
                                                   "answer": "It does.", "final_decision": "yes"}])
    wikidoc = write_jsonl(tmp_path / "wd.jsonl", [{"instruction": "i", "input": "What is gout?", "output": "Uric."}])
    medchat = _write("csv", tmp_path / "mc.csv", [{"q": "Is NA an answer?", "a": "NA"}])
    medal = _write("csv", tmp_path / "medal.csv", [{"TEXT": "the MI was acute", "LOCATION": "[1]",
                                                    "LABEL": "['myocardial infarction']"}] * 3)
    medquad = write_jsonl(tmp_path / "mq.jsonl", [{"id": "m1", "question": "What is X?", "answer": "Y.",
                                                   "source": "GHR"}])
    cases = {
        "sample": (_data_cfg("sample"), 192, load_sample()),
        "local": (_data_cfg("local", path=str(qa), hub=None, question_col="Q", answer_col="A", id_col="key",
                            context_col=None, label_col=None), 2,
                  read_table(qa, question_col="Q", answer_col="A", id_col="key")),
        "medquad": (_data_cfg("medquad", path=str(medquad)), 1, load_medquad(str(medquad))),
        "pubmedqa": (_data_cfg("pubmedqa", path=str(pubmed), options={"decision_first": True}), 1,
                     load_pubmedqa(str(pubmed), decision_first=True)),
        "wikidoc": (_data_cfg("wikidoc", path=str(wikidoc), hub_split="train"), 1, load_wikidoc(str(wikidoc))),
        "medchat": (_data_cfg("medchat", path=str(medchat), options={"question_col": "q", "answer_col": "a"}), 1,
                    load_medchat(str(medchat), question_col="q", answer_col="a")),
        "medal": (_data_cfg("medal", path=str(medal), options={"max_rows": 2}), 2,
                  load_medal(str(medal), max_rows=2)),
    }
    for name, (cfg, n, direct) in cases.items():
        loaded = data.load_records(cfg)
        assert loaded == direct and len(loaded[0]) == n, name
    assert loaded[0][0]["id"] == "medal-0" and loaded[1]["read"] == 2

    # the mix: two parts of the bundled sample, each cleaned with the data group's limits before the draw
    parts = [{"loader": "local", "path": str(sample), "id_col": "id", "n": 5},
             {"loader": "local", "path": str(sample), "hub": None, "n": 3}]
    cfg = _data_cfg("mix", options={"parts": parts, "seed": 7}, max_question_words=512, max_answer_words=30)
    records, stats = data.load_records(cfg)
    cleaned, counts = data.clean(read_table(sample, id_col="id")[0], 512, 30)
    assert counts["dropped_too_long"] > 0 and stats["part1_local"]["clean"] == counts
    assert stats["read"] == 2 * 192 and stats["part1_local"]["drawn"] == 5 and stats["part2_local"]["drawn"] == 3
    plain = [{**r, "id": f"sample_medqa-{int(r['id'].split('-')[1]) - 1}"} for r in cleaned]
    assert records == load_mix([(cleaned, 5), (plain, 3)], seed=7)
    cases["mix"] = (cfg, 8, (records, stats))
    assert set(cases) == set(LOADERS)
    with pytest.raises(DataError, match=r"^data\.options\.parts\[0\]\.loader='sample' is unknown; allowed: local, "
                                        r"medquad, pubmedqa, wikidoc, medchat, medal$"):
        data.load_records(_data_cfg("mix", options={"parts": [{"loader": "sample", "n": 1}]}, max_question_words=9,
                                    max_answer_words=9))
    with pytest.raises(DataError, match=r"^data\.loader='nope' is unknown; allowed: sample, local, medquad, pubmedqa, "
                                        r"wikidoc, medchat, medal, mix$"):
        data.load_records(_data_cfg("nope"))


# --------------------------------------------------------------------------- WikiDoc, Med


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_wikidoc(tmp_path, suffix):
    rows = [
        {"instruction": "Answer this question truthfully", "input": "What is asthma?",
         "output": "A lung disease."},
        {"instruction": "What causes gout?", "input": "  ", "output": "Uric acid crystals."},
        {"instruction": "Answer", "input": "Empty answer?", "output": ""},
    ]
    path = _write(suffix, tmp_path / f"wikidoc.{suffix}", rows)
    records, stats = load_wikidoc(str(path))
    assert [(r["id"], r["question"], r["answer"], r["source"]) for r in records] == [
        ("wikidoc-0", "What is asthma?", "A lung disease.", "wikidoc"),
        ("wikidoc-1", "What causes gout?", "Uric acid crystals.", "wikidoc"),
    ]
    assert all(set(r) == {"id", "question", "answer", "source"} for r in records)
    assert stats["read"] == 3 and stats["skipped_empty_answer"] == 1
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "i", "input": "q"}])
    with pytest.raises(DataError, match=r"bad\.jsonl: missing column\(s\) output"):
        load_wikidoc(str(bad))


def test_medchat(tmp_path):
    path = _write("csv", tmp_path / "medchat.csv", [
        {"question": "Is NA an answer?", "answer": "NA"},
        {"question": "No answer", "answer": ""},
    ])
    records, stats = load_medchat(str(path))
    assert records == [
        {"id": "medchat-0", "question": "Is NA an answer?", "answer": "NA", "source": "medchat"}
    ]
    assert stats["skipped_empty_answer"] == 1


MEDAL_ROWS = [
    {"abstract_id": 11, "text": "the BP was high in all patients", "location": [1],
     "label": ["blood pressure"]},
    {"abstract_id": 12, "text": "MI occurred early", "location": 0,
     "label": "myocardial infarction"},
    {"abstract_id": 13, "text": "too short", "location": [5], "label": ["x"]},
    {"abstract_id": 14, "text": "ok CT here", "location": [1], "label": [""]},
    {"abstract_id": 15, "text": "neg loc", "location": [-1], "label": ["x"]},
    {"abstract_id": 16, "text": "", "location": [0], "label": ["x"]},
]


def _check_medal(records: list[dict], stats: dict) -> None:
    assert [r["id"] for r in records] == ["11", "12"]
    assert records[0]["question"] == (
        'In the following abstract, what does the abbreviation "BP" stand for?\n\n'
        "the BP was high in all patients"
    )
    assert records[0]["answer"] == "blood pressure"
    assert records[0]["context"] == MEDAL_ROWS[0]["text"]
    assert records[1]["answer"] == "myocardial infarction" and '"MI"' in records[1]["question"]
    assert stats == {"read": 6, "kept": 2, "skipped_empty_text": 1, "skipped_bad_location": 2,
                     "skipped_empty_answer": 1}


def test_medal_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "medal.jsonl", MEDAL_ROWS)
    _check_medal(*load_medal(str(path)))
    records, stats = load_medal(str(path), max_rows=1)
    assert len(records) == 1 and stats["read"] == 1
    with pytest.raises(ConfigError, match="max_rows"):
        load_medal(str(path), max_rows=0)


def test_medal_csv(tmp_path):
    # cells as text: "[1]", "['blood pressure']", "0", ...
    rows = [{k: str(v) for k, v in r.items()} for r in MEDAL_ROWS]
    path = _write("csv", tmp_path / "medal.csv", rows)
    _check_medal(*load_medal(str(path)))
    # Kaggle-style upper-case header with plain values
    kaggle = _write("csv", tmp_path / "kaggle.csv", [
        {"ABSTRACT_ID": "7", "TEXT": "an ECG was done", "LOCATION": "1",
         "LABEL": "electrocardiogram"},
        {"ABSTRACT_ID": "8", "TEXT": "bad location", "LOCATION": "one", "LABEL": "x"},
    ])
    records, stats = load_medal(str(kaggle))
    assert [(r["id"], r["answer"]) for r in records] == [("7", "electrocardiogram")]
    assert stats["skipped_bad_location"] == 1


# --------------------------------------------------------------------------- load_mix


def _pool(name: str, n: int) -> list[dict]:
    return [{"id": f"{name}-{i}", "question": f"q{i}", "answer": f"a{i}"} for i in range(n)]


def test_load_mix_deterministic_and_exact():
    medquad, wikidoc = _pool("mq", 1500), _pool("wd", 1200)
    mix = load_mix([(medquad, 1000), (wikidoc, 1000)], seed=42)
    assert len(mix) == 2000 and len({r["id"] for r in mix}) == 2000
    assert Counter(r["id"].split("-")[0] for r in mix) == {"mq": 1000, "wd": 1000}
    assert mix == load_mix([(medquad, 1000), (wikidoc, 1000)], seed=42)
    assert mix != load_mix([(medquad, 1000), (wikidoc, 1000)], seed=43)
    assert [r["id"] for r in mix[:50]] != sorted(r["id"] for r in mix[:50])  # shuffled
    mix[0]["question"] = "changed"
    assert all(r["question"] != "changed" for r in medquad + wikidoc)  # inputs not aliased
    assert load_mix([(medquad, 0)], seed=1) == []


def test_load_mix_too_few():
    with pytest.raises(DataError, match="mix part 2: asked for 11 records but it has 10"):
        load_mix([(_pool("a", 5), 5), (_pool("b", 10), 11)], seed=0)


# --------------------------------------------------------------------------- property test

_value = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.text(alphabet=st.sampled_from(" \t\n\r\u00a0\u2028\u3000"), max_size=5),
    st.text(min_size=1000, max_size=5000),
)


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rows=st.lists(st.tuples(_value, _value), min_size=1, max_size=8))
def test_read_table_jsonl_no_silent_loss(tmp_path_factory, rows):
    path = write_jsonl(tmp_path_factory.mktemp("prop") / "p.jsonl",
                       [{"question": q, "answer": a} for q, a in rows])
    records, stats = read_table(path)
    assert stats["read"] == len(rows)
    assert len(records) + skipped(stats) == len(rows)
    expected = [
        (f"p-{i}", (q or "").strip(), (a or "").strip())
        for i, (q, a) in enumerate(rows)
        if (q or "").strip() and (a or "").strip()
    ]
    assert [(r["id"], r["question"], r["answer"]) for r in records] == expected
