"""Label Studio review: task files and labeling configs out, reviewed exports (JSON and JSON_MIN) back in.

The always-on tests use exports in the documented formats (copied from a real Label Studio 1.23 server's
output). The `labelstudio` test drives a live server through the SDK; it needs

    MEDSWEEP_LABEL_STUDIO_URL=http://127.0.0.1:8089 MEDSWEEP_LABEL_STUDIO_TOKEN=<legacy API token>
    MEDSWEEP_LABEL_STUDIO_PYTHON=/tmp/lsvenv/bin/python   # an interpreter with label-studio-sdk (if not this one)

(started e.g. with `label-studio start --no-browser --host 127.0.0.1 --port 8089 --username ... --password ...
--user-token ... --enable-legacy-api-token` in its own virtual environment).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from medsweep import labelstudio as ls
from medsweep.errors import DataError

ASPIRIN = "Aspirin reduces fever. In some people it can cause stomach bleeding."
METFORMIN = "Metformin is the first treatment for type 2 diabetes."
ITEMS = [
    {"id": "a1-q1", "abstract_id": "a1", "source": "pubmedqa", "context": ASPIRIN,
     "question": "What can aspirin cause", "answer": "Bleeding.", "flags": []},
    {"id": "a1-q2", "abstract_id": "a1", "source": "pubmedqa", "context": ASPIRIN,
     "question": "What does aspirin reduce?", "answer": "Fever.", "flags": []},
    {"id": "a2-q1", "abstract_id": "a2", "source": "pubmedqa", "context": METFORMIN,
     "question": "Who discovered penicillin?", "answer": "Fleming.", "flags": ["ungrounded"]},
    {"id": "a2-q2", "abstract_id": "a2", "source": "pubmedqa", "context": METFORMIN,
     "question": "What is the first treatment for type 2 diabetes?", "answer": "", "flags": ["empty"]},
]


def _annotation(ann_id, from_name, to_name, verdict, text, updated="2026-11-22T22:41:24.532995Z", cancelled=False):
    """One annotation as Label Studio's JSON export writes it."""
    result = [{"from_name": "verdict", "to_name": to_name, "type": "choices", "value": {"choices": [verdict]}}]
    if text is not None:
        result.append({"from_name": from_name, "to_name": to_name, "type": "textarea", "value": {"text": [text]}})
    return {"id": ann_id, "completed_by": 1, "result": result, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": updated, "updated_at": updated, "lead_time": 3.2, "task": ann_id, "project": 1}


def json_export(tasks, annotations: dict[str, list[dict]]) -> list[dict]:
    """A JSON export (Export -> JSON): each imported task with id, data, annotations, predictions (ids)."""
    out = []
    for i, task in enumerate(tasks, start=1):
        out.append({"id": i, "annotations": annotations.get(task["data"]["item_id"], []), "drafts": [],
                    "predictions": [i], "data": copy.deepcopy(task["data"]), "meta": {},
                    "created_at": "2026-11-22T22:41:23Z", "updated_at": "2026-11-22T22:41:23Z", "inner_id": i,
                    "total_annotations": len(annotations.get(task["data"]["item_id"], [])), "project": 1})
    return out


def json_min_export(tasks, decisions: dict[str, tuple[str, str]], text_field: str) -> list[dict]:
    """A JSON_MIN export: the task's data keys plus one key per control; unannotated tasks carry no control key."""
    out = []
    for i, task in enumerate(tasks, start=1):
        row = {**task["data"], "id": i, "annotator": None, "annotation_id": None, "created_at": None,
               "updated_at": None, "lead_time": None}
        if task["data"]["item_id"] in decisions:
            verdict, text = decisions[task["data"]["item_id"]]
            row.update(verdict=verdict, annotator=1, annotation_id=i)
            row[text_field] = text
        out.append(row)
    return out


QUESTION_REVIEW = {  # item -> (verdict, reviewer's text)
    "a1-q1": ("accept", "What can aspirin cause in some people?"),
    "a1-q2": ("accept", "What does aspirin reduce?"),
    "a2-q1": ("reject", "Who discovered penicillin?"),
    "a2-q2": ("accept", "What is the first treatment for type 2 diabetes?"),
}
ANSWER_REVIEW = {
    "a1-q1": ("accept", "Aspirin can cause stomach bleeding in some people."),
    "a1-q2": ("accept", "Fever."),
    "a2-q2": ("accept", "Metformin."),
}


# --------------------------------------------------------------------------- tasks out


def test_tasks_and_labeling_configs(tmp_path):
    written = ls.write_tasks(ITEMS, tmp_path)
    assert sorted(p.name for p in written) == ["answers_config.xml", "answers_tasks.json", "questions_config.xml",
                                               "questions_tasks.json"]
    tasks = json.loads((tmp_path / "questions_tasks.json").read_text())
    assert len(tasks) == 4 and set(tasks[0]) == {"data", "predictions"}
    assert tasks[0]["data"] == {"item_id": "a1-q1", "abstract_id": "a1", "source": "pubmedqa", "context": ASPIRIN,
                                "question": "What can aspirin cause", "answer": "Bleeding.", "flags": "none"}
    prefill = tasks[0]["predictions"][0]["result"][0]
    assert prefill == {"from_name": "edited_question", "to_name": "question", "type": "textarea",
                       "value": {"text": ["What can aspirin cause"]}}
    answer_tasks = json.loads((tmp_path / "answers_tasks.json").read_text())
    assert answer_tasks[2]["data"]["flags"] == "ungrounded"
    assert answer_tasks[2]["predictions"][0]["result"][0]["from_name"] == "edited_answer"
    for name, text_area, to_name in (("questions", "edited_question", "question"), ("answers", "edited_answer",
                                                                                       "answer")):
        root = ET.fromstring((tmp_path / f"{name}_config.xml").read_text())
        objects = {t.get("name"): t.get("value") for t in root.iter("Text")}
        assert objects["context"] == "$context" and objects[to_name] == f"${to_name}"
        area = next(root.iter("TextArea"))
        assert (area.get("name"), area.get("toName"), area.get("editable")) == (text_area, to_name, "true")
        assert [c.get("value") for c in root.iter("Choice")] == ["accept", "reject"]
        # every $variable the config shows is in the task data
        variables = {v[1:] for t in root.iter() for v in [t.get("value") or ""] if v.startswith("$")}
        assert variables <= set(tasks[0]["data"])


# --------------------------------------------------------------------------- annotations in


def _reviewed_exports():
    q_tasks = ls.question_tasks(ITEMS)
    q_ann = {k: [_annotation(i, "edited_question", "question", v, t)]
             for i, (k, (v, t)) in enumerate(QUESTION_REVIEW.items(), start=1)}
    q_export = json_export(q_tasks, q_ann)
    a_tasks = ls.answer_tasks_after_review(ITEMS, q_export)
    a_ann = {k: [_annotation(10 + i, "edited_answer", "answer", v, t)]
             for i, (k, (v, t)) in enumerate(ANSWER_REVIEW.items(), start=1)}
    return q_tasks, q_export, a_tasks, json_export(a_tasks, a_ann)


def test_import_json_export_edited_text_wins_rejected_dropped():
    _, q_export, a_tasks, a_export = _reviewed_exports()
    assert [t["data"]["item_id"] for t in a_tasks] == ["a1-q1", "a1-q2", "a2-q2"]  # rejected question: no answer task
    assert a_tasks[0]["data"]["question"] == "What can aspirin cause in some people?"
    assert "question edited" in a_tasks[0]["data"]["flags"]
    records, stats = ls.import_reviews(q_export, a_export)
    assert [r["id"] for r in records] == ["a1-q1", "a1-q2", "a2-q2"]
    first = records[0]
    assert first["question"] == "What can aspirin cause in some people?"
    assert first["answer"] == "Aspirin can cause stomach bleeding in some people."
    assert first["edited"] == ["question", "answer"] and first["context"] == ASPIRIN and first["abstract_id"] == "a1"
    assert records[1]["edited"] == []
    assert records[2]["answer"] == "Metformin."  # the generated answer was empty: the reviewer wrote one
    assert stats["rejected_question"] == 1 and stats["kept"] == 3 and stats["unreviewed"] == 0
    assert set(records[0]) == {"id", "question", "answer", "context", "source", "abstract_id", "edited"}


def test_import_json_min_export_gives_the_same_records():
    q_tasks, q_export, a_tasks, a_export = _reviewed_exports()
    q_min = json_min_export(q_tasks, QUESTION_REVIEW, "edited_question")
    a_min = json_min_export(a_tasks, ANSWER_REVIEW, "edited_answer")
    assert ls.import_reviews(q_min, a_min) == ls.import_reviews(q_export, a_export)


def test_rejected_answer_unreviewed_and_cancelled_items_are_dropped():
    q_tasks = ls.question_tasks(ITEMS)
    annotations = {
        "a1-q1": [_annotation(1, "edited_question", "question", "accept", "Old edit?", updated="2026-01-01T00:00:00Z"),
                  _annotation(2, "edited_question", "question", "reject", None, updated="2026-01-02T00:00:00Z")],
        "a1-q2": [_annotation(3, "edited_question", "question", "accept", None, cancelled=True)],  # skipped
        "a2-q2": [_annotation(4, "edited_question", "question", "accept", None)],  # accepted as generated
    }
    export = json_export(q_tasks, annotations)
    records, stats = ls.import_reviews(questions=export)
    assert [r["id"] for r in records] == []  # a2-q2's generated answer is empty
    assert stats == {**stats, "rejected_question": 1, "unreviewed": 2, "empty": 1}  # the latest annotation decides
    records, stats = ls.import_reviews(questions=export, keep_unreviewed=True)
    assert [r["id"] for r in records] == ["a1-q2", "a2-q1"] and records[0]["question"] == "What does aspirin reduce?"
    a_export = json_export(ls.answer_tasks(ITEMS), {"a1-q2": [_annotation(5, "edited_answer", "answer", "reject",
                                                                          None)]})
    records, stats = ls.import_reviews(answers=a_export, keep_unreviewed=True)
    assert "a1-q2" not in [r["id"] for r in records] and stats["rejected_answer"] == 1


def test_bad_exports_name_the_problem(tmp_path):
    (tmp_path / "x.json").write_text('{"not": "a list"}')
    with pytest.raises(DataError, match="expected a Label Studio JSON export"):
        ls.load_export(tmp_path / "x.json")
    with pytest.raises(DataError, match="has no data.item_id"):
        ls.import_reviews(questions=[{"id": 1, "data": {"text": "x"}, "annotations": []}])
    with pytest.raises(DataError, match="nothing to import"):
        ls.import_reviews()


def test_heldout_split_keeps_abstracts_whole():
    records = [{"id": f"a{a}-q{q}", "abstract_id": f"a{a}", "question": f"q{a}{q}?", "answer": "x"}
               for a in range(10) for q in range(3)]
    train, held = ls.split_heldout(records, 5, seed=0)
    assert len(held) == 6 and len(train) == 24  # two whole abstracts
    assert not {r["abstract_id"] for r in held} & {r["abstract_id"] for r in train}
    assert ls.split_heldout(records, 5, seed=0) == (train, held)
    with pytest.raises(DataError, match="every abstract"):
        ls.split_heldout(records, 100)


def test_cli_tasks_then_import_writes_reviewed_and_heldout(tmp_path):
    synthetic = tmp_path / "synthetic.jsonl"
    synthetic.write_text("".join(json.dumps(it) + "\n" for it in ITEMS))
    assert ls.main(["tasks", str(synthetic)]) == 0
    assert (tmp_path / "labelstudio" / "questions_tasks.json").is_file()
    _, q_export, _, a_export = _reviewed_exports()
    (tmp_path / "q.json").write_text(json.dumps(q_export))
    (tmp_path / "a.json").write_text(json.dumps(a_export))
    assert ls.main(["answer-tasks", str(synthetic), "--questions", str(tmp_path / "q.json")]) == 0
    assert len(json.loads((tmp_path / "labelstudio" / "answers_tasks.json").read_text())) == 3
    out = tmp_path / "reviewed.jsonl"
    assert ls.main(["import", "--questions", str(tmp_path / "q.json"), "--answers", str(tmp_path / "a.json"),
                    "--out", str(out), "--heldout", "1"]) == 0
    train = ls.read_jsonl(out)
    held = ls.read_jsonl(tmp_path / "heldout.jsonl")
    assert len(train) + len(held) == 3 and held and train
    from medsweep.loaders import read_table  # data=synth reads it with the generic table reader

    records, stats = read_table(out, id_col="id")
    assert stats["kept"] == len(train) and records[0]["id"] == train[0]["id"]


# --------------------------------------------------------------------------- a live Label Studio server

SDK_SCRIPT = r'''
import json, sys
from label_studio_sdk.client import LabelStudio

url, token, config_path, tasks_path, plan_path, out_prefix, text_field, to_name = sys.argv[1:9]
client = LabelStudio(base_url=url, api_key=token)
project = client.projects.create(title="medsweep test " + text_field, label_config=open(config_path).read())
try:
    client.projects.import_tasks(id=project.id, request=json.load(open(tasks_path)))
    plan = json.load(open(plan_path))
    for task in client.tasks.list(project=project.id):
        if task.data["item_id"] not in plan:
            continue  # left unreviewed
        verdict, text = plan[task.data["item_id"]]
        result = [{"from_name": "verdict", "to_name": to_name, "type": "choices", "value": {"choices": [verdict]}},
                  {"from_name": text_field, "to_name": to_name, "type": "textarea", "value": {"text": [text]}}]
        client.annotations.create(id=task.id, result=result, was_cancelled=False)
    for kind in ("JSON", "JSON_MIN"):
        data = b"".join(client.projects.exports.download_sync(project.id, export_type=kind, download_all_tasks=True))
        open(out_prefix + "." + kind + ".json", "wb").write(data)
finally:
    client.projects.delete(id=project.id)
'''


def _sdk_python() -> str | None:
    if importlib.util.find_spec("label_studio_sdk") is not None:
        return sys.executable
    return os.environ.get("MEDSWEEP_LABEL_STUDIO_PYTHON")


@pytest.mark.labelstudio
def test_roundtrip_through_a_live_label_studio_server(tmp_path):
    url, token = os.environ.get("MEDSWEEP_LABEL_STUDIO_URL"), os.environ.get("MEDSWEEP_LABEL_STUDIO_TOKEN")
    if not url or not token:
        pytest.skip("no live Label Studio: set MEDSWEEP_LABEL_STUDIO_URL and MEDSWEEP_LABEL_STUDIO_TOKEN")
    python = _sdk_python()
    if not python:
        pytest.skip("label-studio-sdk is not importable here: set MEDSWEEP_LABEL_STUDIO_PYTHON to an interpreter "
                    "that has it")
    script = tmp_path / "sdk_roundtrip.py"
    script.write_text(SDK_SCRIPT)

    def review(name, tasks, plan, text_field, to_name):
        (tmp_path / f"{name}_tasks.json").write_text(json.dumps(tasks))
        (tmp_path / f"{name}_plan.json").write_text(json.dumps(plan))
        (tmp_path / f"{name}_config.xml").write_text(ls.QUESTION_CONFIG if name == "questions" else ls.ANSWER_CONFIG)
        done = subprocess.run([python, str(script), url, token, str(tmp_path / f"{name}_config.xml"),
                               str(tmp_path / f"{name}_tasks.json"), str(tmp_path / f"{name}_plan.json"),
                               str(tmp_path / name), text_field, to_name], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return (ls.load_export(tmp_path / f"{name}.JSON.json"), ls.load_export(tmp_path / f"{name}.JSON_MIN.json"))

    plan = {k: v for k, v in QUESTION_REVIEW.items() if k != "a2-q2"}  # a2-q2 stays unreviewed
    q_json, q_min = review("questions", ls.question_tasks(ITEMS), plan, "edited_question", "question")
    assert len(q_json) == 4 and sum(bool(t["annotations"]) for t in q_json) == 3
    a_tasks = ls.answer_tasks_after_review(ITEMS, q_json)
    assert [t["data"]["item_id"] for t in a_tasks] == ["a1-q1", "a1-q2"]  # rejected and unreviewed: no answer task
    a_json, a_min = review("answers", a_tasks, ANSWER_REVIEW, "edited_answer", "answer")

    records, stats = ls.import_reviews(q_json, a_json)
    assert [r["id"] for r in records] == ["a1-q1", "a1-q2"]
    assert records[0]["question"] == "What can aspirin cause in some people?"
    assert records[0]["answer"] == "Aspirin can cause stomach bleeding in some people."
    assert stats["rejected_question"] == 1 and stats["unreviewed"] == 1
    assert ls.import_reviews(q_min, a_min) == (records, stats)
