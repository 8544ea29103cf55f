"""The bundled sample, cleaning counts, and the deterministic leak-free split."""

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
