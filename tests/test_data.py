"""medsweep.data: the bundled sample, cleaning counts, the deterministic leak-free split, and data errors (each a
DataError of one line naming the file; bad rows skipped and counted)."""

import json

import pytest
from omegaconf import OmegaConf

from medsweep import data
from medsweep.errors import DataError
from tests.conftest import MEDQUAD_JSONL, need_shared_data


def test_bundled_sample_is_large_and_varied():
    records, stats = data.load_records(OmegaConf.create({"loader": "sample", "options": {}}))
    assert len(records) >= 150 and stats["read"] == len(records)
    assert {r["id"] for r in records} == {f"sample-{i:04d}" for i in range(1, len(records) + 1)}
    assert all(r["question"].endswith("?") and 10 <= len(r["answer"].split()) <= 80 for r in records)


def test_clean_counts_every_drop():
    recs = [
        {"id": "1", "question": "What is flu?", "answer": "A viral infection."},
        {"id": "2", "question": "what is FLU", "answer": "Duplicate after normalisation."},
        {"id": "3", "question": "  ", "answer": "No question."},
        {"id": "4", "question": "Long?", "answer": "word " * 50},
        {"id": "5", "question": "What is a cold?", "answer": "A mild viral infection."},
    ]
    kept, counts = data.clean(recs, max_question_words=20, max_answer_words=40)
    assert [r["id"] for r in kept] == ["1", "5"]
    assert counts == {"dropped_empty": 1, "dropped_too_long": 1, "dropped_duplicate": 1}


def test_split_is_deterministic_and_leak_free():
    need_shared_data()
    cfg = OmegaConf.create({"name": "medquad", "loader": "local", "path": str(MEDQUAD_JSONL),
                            "question_col": "question", "answer_col": "answer", "id_col": "id", "context_col": None,
                            "label_col": None, "options": {}, "limit": None, "split_seed": 0,
                            "max_question_words": 512, "max_answer_words": 2048})
    a = data.build(cfg, eval_size=100, train_size=1900)
    b = data.build(cfg, eval_size=100, train_size=1900)
    assert [r["id"] for r in a.eval] == [r["id"] for r in b.eval]
    assert len(a.eval) == 100 and len(a.train) == min(1900, a.stats["after_cleaning"] - 100)
    train_q = {data.question_key(r["question"]) for r in a.train}
    assert not train_q & {data.question_key(r["question"]) for r in a.eval}
    assert a.stats["loaded"] == 2000
    assert a.stats["after_cleaning"] == 2000 - a.stats["dropped_duplicate"] - a.stats["dropped_empty"] \
        - a.stats["dropped_too_long"]


def test_eval_larger_than_dataset_is_an_error():
    recs = [{"id": str(i), "question": f"q{i}?", "answer": "a"} for i in range(5)]
    with pytest.raises(DataError, match="train.eval_split=5"):
        data.split(recs, eval_size=5, seed=0)


# ---- data errors: each a DataError with one line naming the file ----------------------------------------------------

def _local(path, **kw):
    from omegaconf import OmegaConf

    base = {"name": "local", "loader": "local", "path": str(path), "hub": None, "hub_config": None,
            "hub_split": "train", "question_col": "question", "answer_col": "answer", "id_col": None,
            "context_col": None, "label_col": None, "options": {}, "limit": None, "split_seed": 0,
            "max_question_words": 512, "max_answer_words": 2048, "instruction": "x"}
    return OmegaConf.create({**base, **kw})


def _data_error(cfg, eval_size=2) -> str:
    with pytest.raises(DataError) as err:
        data.build(cfg, eval_size=eval_size)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_data_errors(tmp_path):
    assert "not found" in _data_error(_local(tmp_path / "nope.jsonl"))
    (tmp_path / "x.docx").write_text("hello")
    assert ".docx" in _data_error(_local(tmp_path / "x.docx")) or "x.docx" in _data_error(_local(tmp_path / "x.docx"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a?", "answer": "b"}\n{"question": "c?", "answer": "d"}\n{oops\n')
    assert "bad.jsonl:3:" in _data_error(_local(bad))
    cols = tmp_path / "cols.jsonl"
    cols.write_text('{"q": "a?", "a": "b"}\n')
    assert "question" in _data_error(_local(cols))
    xml = tmp_path / "x.xml"
    xml.write_text("<html><body>not medquad</body></html>")
    assert "x.xml" in _data_error(_local(xml, loader="medquad"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"question": "a?", "answer": ""}\n{"question": " ", "answer": "b"}\n')
    assert "empty" in _data_error(_local(empty))


def test_eval_size_larger_than_dataset():
    need_shared_data()
    message = _data_error(_local(MEDQUAD_JSONL), eval_size=5000)
    assert "train.eval_split=5000" in message


def test_bad_rows_are_skipped_and_counted(tmp_path):
    f = tmp_path / "mixed.jsonl"
    rows = [{"question": f"q{i}?", "answer": f"answer {i}"} for i in range(6)]
    rows += [{"question": "empty?", "answer": ""}, {"question": "long?", "answer": "w " * 3000}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = data.build(_local(f), eval_size=2)
    assert len(splits.train) + len(splits.eval) == 6
    assert splits.stats["dropped_too_long"] == 1
    assert splits.stats["load"]["skipped_empty_answer"] == 1
