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


# --------------------------------------------------------------------- details the reviewer and the import rely on

HELP = {
    (): """\
usage: python -m medsweep.labelstudio [-h] {tasks,answer-tasks,import} ...

Human review of synthetic QA in Label Studio: task files out, reviewed annotations back in.

positional arguments:
  {tasks,answer-tasks,import}
    tasks               write question and answer tasks + labeling configs from synthetic.jsonl
    answer-tasks        answer tasks for the accepted questions of a question export
    import              reviewed exports -> training JSONL

options:
  -h, --help            show this help message and exit
""",
    ("tasks",): """\
usage: python -m medsweep.labelstudio tasks [-h] [--out OUT] [--only {questions,answers}] synthetic

positional arguments:
  synthetic             medsweep-synth output (synthetic.jsonl)

options:
  -h, --help            show this help message and exit
  --out OUT             folder (default: labelstudio/ next to the input)
  --only {questions,answers}
                        write one project's files only
""",
    ("answer-tasks",): """\
usage: python -m medsweep.labelstudio answer-tasks [-h] --questions QUESTIONS [--out OUT] synthetic

positional arguments:
  synthetic

options:
  -h, --help            show this help message and exit
  --questions QUESTIONS
                        Label Studio export (JSON) of the question project
  --out OUT             folder (default: labelstudio/ next to the input)
""",
    ("import",): """\
usage: python -m medsweep.labelstudio import [-h] [--questions QUESTIONS] [--answers ANSWERS] --out OUT
                                             [--heldout HELDOUT] [--seed SEED] [--keep-unreviewed]

options:
  -h, --help            show this help message and exit
  --questions QUESTIONS
                        Label Studio export (JSON or JSON_MIN) of the question project
  --answers ANSWERS     Label Studio export (JSON or JSON_MIN) of the answer project
  --out OUT             reviewed JSONL to write (e.g. results/synth/reviewed.jsonl)
  --heldout HELDOUT     hold out whole abstracts with at least N questions into heldout.jsonl next to --out (default
                        0)
  --seed SEED           seed of the held-out draw (default 0)
  --keep-unreviewed     keep items nobody reviewed (default: drop)
""",
}


@pytest.mark.parametrize("command", list(HELP))
def test_cli_help_text(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    with pytest.raises(SystemExit) as done:
        ls.main([*command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out == HELP[command]


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    for argv, message in (([], "the following arguments are required: command"),
                          (["tasks", "x.jsonl", "--only", "both"], "argument --only: invalid choice: 'both'"),
                          (["answer-tasks", "x.jsonl"], "the following arguments are required: --questions"),
                          (["import", "--questions", "q.json"], "the following arguments are required: --out"),
                          (["import", "--out", "o", "--heldout", "two"], "argument --heldout: invalid int value")):
        with pytest.raises(SystemExit) as done:
            ls.main(argv)
        assert done.value.code == 2 and message in capsys.readouterr().err, argv


@pytest.fixture
def latin1_locale(monkeypatch):
    """Files opened without an explicit encoding read as latin-1, as on a platform whose locale is not UTF-8."""
    import pathlib

    real = pathlib.Path.open

    def open_(self, mode="r", buffering=-1, encoding=None, errors=None, newline=None):
        if "b" not in mode and encoding in (None, "locale"):
            encoding = "latin-1"
        return real(self, mode, buffering, encoding, errors, newline)

    monkeypatch.setattr(pathlib.Path, "open", open_)


def test_files_are_read_as_utf8_whatever_the_locale(tmp_path, latin1_locale):
    item = {**ITEMS[0], "context": "Aspirin 5 µg – café"}
    (tmp_path / "s.jsonl").write_bytes((json.dumps(item, ensure_ascii=False) + "\n\n").encode("utf-8"))
    assert ls.read_jsonl(tmp_path / "s.jsonl") == [item]
    (tmp_path / "e.json").write_bytes(json.dumps([{"id": 1, "data": {"context": "µg"}}], ensure_ascii=False)
                                      .encode("utf-8"))
    assert ls.load_export(tmp_path / "e.json")[0]["data"]["context"] == "µg"


def test_unreadable_files_name_file_and_line(tmp_path):
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"id": 1}\n\n{oops\n')
    with pytest.raises(DataError) as err:
        ls.read_jsonl(bad)
    assert str(err.value) == f"{bad}:3: not valid JSON (Expecting property name enclosed in double quotes)"
    with pytest.raises(DataError) as err:
        ls.load_export(tmp_path / "missing.json")
    assert str(err.value) == f"{tmp_path / 'missing.json'}: file not found"
    (tmp_path / "x.json").write_text('[\n{"id": 1},\n]')
    with pytest.raises(DataError) as err:
        ls.load_export(tmp_path / "x.json")
    assert str(err.value) == f"{tmp_path / 'x.json'}:3: not valid JSON (Expecting value)"
    for content in ("[1, 2]", '[{"id": 1}, "task"]'):
        (tmp_path / "y.json").write_text(content)
        with pytest.raises(DataError) as err:
            ls.load_export(tmp_path / "y.json")
        assert str(err.value) == f"{tmp_path / 'y.json'}: expected a Label Studio JSON export (a list of tasks)"


def test_task_data_defaults_and_prefills(tmp_path):
    bare = {"id": 7, "question": "What is gout?"}
    expected = {"item_id": "7", "abstract_id": "", "source": "", "context": "", "question": "What is gout?",
                "answer": "", "flags": "none"}
    assert ls.question_tasks([bare]) == [{"data": expected, "predictions": [{"model_version": "medsweep-synth",
        "result": [{"from_name": "edited_question", "to_name": "question", "type": "textarea",
                    "value": {"text": ["What is gout?"]}}]}]}]
    assert ls.answer_tasks([bare]) == [{"data": expected, "predictions": [{"model_version": "medsweep-synth",
        "result": [{"from_name": "edited_answer", "to_name": "answer", "type": "textarea",
                    "value": {"text": [""]}}]}]}]
    assert ls.answer_tasks([ITEMS[0]])[0]["predictions"][0]["result"][0]["value"] == {"text": ["Bleeding."]}
    assert ls.answer_tasks([{**bare, "flags": "checked"}])[0]["data"]["flags"] == "checked"
    assert ls.answer_tasks([{**bare, "flags": ["empty", "ungrounded"]}])[0]["data"]["flags"] == "empty, ungrounded"
    assert ls.answer_tasks([{**bare, "flags": None}])[0]["data"]["flags"] == "none"


def test_task_files_are_indented_utf8_json(tmp_path):
    item = {**ITEMS[0], "context": "Aspirin 5 µg"}
    written = ls.write_tasks([item], tmp_path, which=("answers",))
    assert written == [tmp_path / "answers_tasks.json", tmp_path / "answers_config.xml"]
    assert not (tmp_path / "questions_tasks.json").exists()
    raw = (tmp_path / "answers_tasks.json").read_text(encoding="utf-8")
    assert raw.startswith('[\n {\n  "data": {\n   "item_id": "a1-q1",') and '"Aspirin 5 µg"' in raw
    assert (tmp_path / "answers_config.xml").read_text() == ls.ANSWER_CONFIG


def _ann(verdict, ann_id=None, updated=None, created=None, text=None, extra=()):
    result = [{"from_name": "verdict", "to_name": "question", "type": "choices", "value": {"choices": [verdict]}}]
    if text is not None:
        result.append({"from_name": "edited_question", "to_name": "question", "type": "textarea",
                       "value": {"text": [text]}})
    ann = {"result": result + list(extra), "was_cancelled": False, "completed_by": 5}
    for key, value in (("id", ann_id), ("updated_at", updated), ("created_at", created)):
        if value is not None:
            ann[key] = value
    return ann


@pytest.mark.parametrize("annotations, verdict", [
    # no updated_at: the later created_at wins, whatever the ids
    ([_ann("accept", 9, created="2026-01-01"), _ann("reject", 3, created="2026-02-01")], "reject"),
    # updated_at wins over created_at
    ([_ann("accept", 1, updated="2026-03-01", created="2026-03-01"),
      _ann("reject", 2, updated="2026-04-01", created="2026-01-01")], "reject"),
    # a timestamp beats none
    ([_ann("accept", 1, updated="2026-01-01"), _ann("reject", 2)], "accept"),
    # same time: the higher id (a missing id counts as 0)
    ([_ann("reject", None, updated="2026-01-01"), _ann("accept", 1, updated="2026-01-01")], "accept"),
])
def test_the_latest_annotation_decides(annotations, verdict):
    task = {"id": 1, "data": {"item_id": "x"}, "annotations": annotations}
    assert ls.review(task, "edited_question")["verdict"] == verdict


def test_review_of_json_tasks():
    other = [{"from_name": "quality", "to_name": "question", "type": "choices", "value": {"choices": ["Good"]}},
             {"from_name": "notes", "to_name": "question", "type": "textarea", "value": {"text": ["a note"]}}]
    task = {"id": 1, "data": {"item_id": "x"}, "annotations": [_ann("Accept", 4, text=" Edited? ", extra=other)]}
    assert ls.review(task, "edited_question") == {"data": {"item_id": "x"}, "reviewed": True, "verdict": "accept",
                                                   "text": "Edited?", "annotator": 5}
    unannotated = {"id": 2, "data": {"item_id": "y", "question": "Q?"}}  # no annotations key at all
    assert ls.review(unannotated, "edited_question") == {"data": {"item_id": "y", "question": "Q?"},
                                                         "reviewed": False, "verdict": None, "text": None,
                                                         "annotator": None}
    no_data = {"id": 3, "annotations": [_ann("reject", 1)]}
    assert ls.review(no_data, "edited_question") == {"data": {}, "reviewed": True, "verdict": "reject",
                                                     "text": None, "annotator": 5}
    blank_lines = {"data": {"item_id": "z"}, "annotations": [_ann("accept", 1, text="")]}
    blank_lines["annotations"][0]["result"][1]["value"]["text"] = ["first", "   ", " second "]
    assert ls.review(blank_lines, "edited_question")["text"] == "first\nsecond"


def test_review_of_json_min_rows():
    base = {"item_id": "x", "question": "Q?", "context": "C", "id": 1, "annotator": 3, "extra": "not data"}
    data = {"item_id": "x", "question": "Q?", "context": "C"}
    assert ls.review(dict(base), "edited_question") == {"data": data, "reviewed": False, "verdict": None,
                                                        "text": None, "annotator": 3}
    assert ls.review({**base, "edited_question": "New?"}, "edited_question") == {
        "data": data, "reviewed": True, "verdict": None, "text": "New?", "annotator": 3}
    assert ls.review({**base, "verdict": "Reject"}, "edited_question") == {
        "data": data, "reviewed": True, "verdict": "reject", "text": None, "annotator": 3}
    got = ls.review({**base, "verdict": {"choices": ["Accept", "reject"]},
                     "edited_question": {"text": ["a", " ", "b "]}}, "edited_question")
    assert (got["verdict"], got["text"]) == ("accept", "a\nb")
    assert ls.review({**base, "verdict": {}}, "edited_question")["verdict"] is None
    assert ls.review({**base, "verdict": ["Reject", "accept"]}, "edited_question")["verdict"] == "reject"
    assert ls.review({**base, "verdict": []}, "edited_question")["verdict"] is None


def test_tasks_without_item_id_are_named_by_position():
    good = {"id": 1, "data": {"item_id": "x"}, "annotations": []}
    with pytest.raises(DataError) as err:
        ls.import_reviews(questions=[good, {"id": 2, "data": {}, "annotations": []}])
    assert str(err.value) == "question export: task 2 has no data.item_id (tasks must come from medsweep.labelstudio)"
    with pytest.raises(DataError) as err:
        ls.import_reviews(answers=[{"id": 1, "data": {}, "annotations": []}])
    assert str(err.value) == "answer export: task 1 has no data.item_id (tasks must come from medsweep.labelstudio)"
    with pytest.raises(DataError) as err:
        ls.import_reviews()
    assert str(err.value) == "nothing to import: give the question export, the answer export or both"


def _min_row(item_id, verdict=None, text=None, field="edited_answer", **data):
    row = {"item_id": item_id, "question": f"Question {item_id}?", "answer": f"Answer {item_id}.", **data}
    if verdict is not None:
        row["verdict"] = verdict
    if text is not None:
        row[field] = text
    return row


def test_import_counts_every_outcome():
    questions = [_min_row("q1", "accept", "Edited 1?", "edited_question", source="pubmedqa", context="C1",
                          abstract_id="A1"),
                 _min_row("q2", "accept", "Edited 2?", "edited_question"),
                 _min_row("q3", "reject", None, "edited_question"),
                 _min_row("q4", "accept", None, "edited_question", answer=""),
                 _min_row("q5", "accept", None, "edited_question"),
                 _min_row("q6"),
                 _min_row("q7", "reject", None, "edited_question"),
                 _min_row("q8", "accept", None, "edited_question", answer=""),
                 _min_row("q9", "accept", None, "edited_question")]
    answers = [_min_row("q1", "accept", "New 1."), _min_row("q2", "accept", "New 2."), _min_row("q5", "reject"),
               _min_row("q4", "accept", answer=""), _min_row("q9", "reject"), _min_row("q8", "accept", answer=""),
               _min_row("q10", "accept", "Only answered.")]
    records, stats = ls.import_reviews(questions, answers)
    assert stats == {"items": 10, "kept": 2, "rejected_question": 2, "rejected_answer": 2, "unreviewed": 2,
                     "edited_question": 2, "edited_answer": 2, "empty": 2}
    assert records == [
        {"id": "q1", "question": "Edited 1?", "answer": "New 1.", "context": "C1", "source": "pubmedqa",
         "abstract_id": "A1", "edited": ["question", "answer"]},
        {"id": "q2", "question": "Edited 2?", "answer": "New 2.", "context": "", "source": "synth",
         "abstract_id": "", "edited": ["question", "answer"]}]


def test_import_of_one_export_alone():
    answers = [_min_row("a1", "accept", None, context="Ctx", source="s", abstract_id="A"),  # accepted as generated
               _min_row("a2"),  # nobody reviewed it
               _min_row("a3", "accept", "Edited."),
               _min_row("a4", "accept", None, question=""),  # no question at all
               _min_row("a5", "accept", None)]
    records, stats = ls.import_reviews(answers=answers)
    assert [r["id"] for r in records] == ["a1", "a3", "a5"]
    assert records[0] == {"id": "a1", "question": "Question a1?", "answer": "Answer a1.", "context": "Ctx",
                          "source": "s", "abstract_id": "A", "edited": []}
    assert records[1]["edited"] == ["answer"] and records[1]["answer"] == "Edited."
    assert stats == {"items": 5, "kept": 3, "rejected_question": 0, "rejected_answer": 0, "unreviewed": 1,
                     "edited_question": 0, "edited_answer": 1, "empty": 1}
    records, stats = ls.import_reviews(answers=answers, keep_unreviewed=True)
    assert [r["id"] for r in records] == ["a1", "a2", "a3", "a5"] and stats["unreviewed"] == 0


def test_the_answer_tasks_question_wins_when_the_question_review_has_no_text():
    questions = [_min_row("x", "accept", None, "edited_question", question="Original?")]
    answers = [_min_row("x", "accept", "Yes.", question="Reworded in the answer task?")]
    records, _ = ls.import_reviews(questions, answers)
    assert records[0]["question"] == "Reworded in the answer task?" and records[0]["edited"] == ["question", "answer"]


def test_answer_tasks_after_review_keep_item_flags_and_unreviewed_on_request():
    _, q_export, a_tasks, _ = _reviewed_exports()
    assert [t["data"]["flags"] for t in a_tasks] == ["question edited", "none", "empty"]
    unreviewed = json_export(ls.question_tasks(ITEMS), {"a1-q1": [_annotation(1, "edited_question", "question",
                                                                              "accept", None)]})
    assert [t["data"]["item_id"] for t in ls.answer_tasks_after_review(ITEMS, unreviewed)] == ["a1-q1"]
    kept = ls.answer_tasks_after_review(ITEMS, unreviewed, keep_unreviewed=True)
    assert [t["data"]["item_id"] for t in kept] == ["a1-q1", "a1-q2", "a2-q1", "a2-q2"]
    assert kept[2]["data"]["flags"] == "ungrounded"
    stranger = json_export(ls.question_tasks([{"id": "new", "question": "Where from?", "answer": "Here.",
                                               "context": "c", "abstract_id": "z", "source": "s"}]),
                           {"new": [_annotation(1, "edited_question", "question", "accept", None)]})
    task = ls.answer_tasks_after_review(ITEMS, stranger)[0]  # not among the items: built from the reviewed record
    assert task["data"] == {"item_id": "new", "abstract_id": "z", "source": "s", "context": "c",
                            "question": "Where from?", "answer": "Here.", "flags": "none"}


def test_heldout_split_details():
    records = [{"id": f"a{a}-q{q}", "abstract_id": f"a{a}", "question": f"q{a}{q}?", "answer": "x"}
               for a in range(10) for q in range(3)]
    train, held = ls.split_heldout(records, 3, seed=0)
    assert len(held) == 3 and len({r["abstract_id"] for r in held}) == 1  # one abstract is enough
    assert ls.split_heldout(records, 3) == (train, held)  # seed 0 is the default
    assert ls.split_heldout(records, 3, seed=1) != (train, held)
    assert ls.split_heldout(records, 0) == (records, []) and ls.split_heldout([], 0) == ([], [])
    no_abstract = [{"id": f"r{i}", "question": "q?", "answer": "a"} for i in range(6)]  # each its own group
    train, held = ls.split_heldout(no_abstract, 2, seed=0)
    assert len(held) == 2 and len(train) == 4 and {r["id"] for r in train + held} == {r["id"] for r in no_abstract}
    with pytest.raises(DataError) as err:
        ls.split_heldout(records[:3], 1)
    assert str(err.value) == "--heldout 1 would hold out every abstract (3 reviewed items); lower it"


def test_cli_writes_prints_and_fails_with_one_line(tmp_path, capsys):
    synthetic = tmp_path / "synthetic.jsonl"
    synthetic.write_text("".join(json.dumps({**it, "context": it["context"] + " µg"}, ensure_ascii=False) + "\n"
                                 for it in ITEMS))
    out = tmp_path / "custom"
    assert ls.main(["tasks", str(synthetic), "--out", str(out), "--only", "answers"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(out / "answers_tasks.json"), str(out / "answers_config.xml")]
    assert sorted(p.name for p in out.iterdir()) == ["answers_config.xml", "answers_tasks.json"]
    assert ls.main(["tasks", str(synthetic)]) == 0
    default = tmp_path / "labelstudio"
    assert capsys.readouterr().out.splitlines() == [str(default / f) for f in (
        "questions_tasks.json", "questions_config.xml", "answers_tasks.json", "answers_config.xml")]
    _, q_export, a_tasks, a_export = _reviewed_exports()
    (tmp_path / "q.json").write_text(json.dumps(q_export))
    (tmp_path / "a.json").write_text(json.dumps(a_export))
    out = tmp_path / "answers-only"  # a fresh folder: every file in it comes from answer-tasks
    assert ls.main(["answer-tasks", str(synthetic), "--questions", str(tmp_path / "q.json"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(out / "answers_tasks.json"), str(out / "answers_config.xml")]
    assert sorted(p.name for p in out.iterdir()) == ["answers_config.xml", "answers_tasks.json"]
    raw = (out / "answers_tasks.json").read_text(encoding="utf-8")
    assert raw.startswith('[\n {\n  "data": {\n   "item_id": "a1-q1",') and " µg" in raw
    assert [t["data"]["item_id"] for t in json.loads(raw)] == ["a1-q1", "a1-q2", "a2-q2"]
    assert (out / "answers_config.xml").read_text() == ls.ANSWER_CONFIG
    assert ls.main(["answer-tasks", str(synthetic), "--questions", str(tmp_path / "q.json")]) == 0
    assert capsys.readouterr().out.splitlines() == [str(default / "answers_tasks.json"),
                                                    str(default / "answers_config.xml")]

    reviewed = tmp_path / "reviewed.jsonl"
    assert ls.main(["import", "--questions", str(tmp_path / "q.json"), "--out", str(reviewed)]) == 0
    captured = capsys.readouterr()
    expected, stats = ls.import_reviews(questions=q_export)
    assert captured.out == f"{reviewed}: {len(expected)} reviewed pairs\n"
    assert json.loads(captured.err) == stats and captured.err.count("\n") == 1
    assert ls.read_jsonl(reviewed) == expected and not (tmp_path / "heldout.jsonl").exists()
    assert ls.main(["import", "--answers", str(tmp_path / "a.json"), "--out", str(reviewed), "--keep-unreviewed"]) == 0
    assert [r["id"] for r in ls.read_jsonl(reviewed)] == ["a1-q1", "a1-q2", "a2-q2"]
    capsys.readouterr()

    (tmp_path / "none.json").write_text(json.dumps(json_export(ls.question_tasks(ITEMS), {})))
    assert ls.main(["import", "--questions", str(tmp_path / "none.json"), "--out", str(reviewed)]) == 2
    captured = capsys.readouterr()
    _, stats = ls.import_reviews(questions=json_export(ls.question_tasks(ITEMS), {}))
    assert captured.err == f"medsweep.labelstudio: error: no reviewed item kept ({stats})\n" and captured.out == ""
    assert ls.main(["import", "--questions", str(tmp_path / "none.json"), "--out", str(reviewed),
                    "--keep-unreviewed"]) == 0
    capsys.readouterr()


def test_cli_heldout_uses_the_seed(tmp_path, capsys):
    items = [{"id": f"a{a}-q{q}", "abstract_id": f"a{a}", "question": f"What is {a}-{q}?", "answer": "It is.",
              "context": "c", "source": "s"} for a in range(12) for q in range(2)]
    export = json_min_export(ls.question_tasks(items), {it["id"]: ("accept", it["question"]) for it in items},
                             "edited_question")
    (tmp_path / "q.json").write_text(json.dumps(export))
    records, _ = ls.import_reviews(questions=export)
    for seed_args, seed in (([], 0), (["--seed", "3"], 3)):
        out = tmp_path / f"seed{seed}" / "reviewed.jsonl"
        assert ls.main(["import", "--questions", str(tmp_path / "q.json"), "--out", str(out), "--heldout", "3",
                        *seed_args]) == 0
        train, held = ls.split_heldout(records, 3, seed)
        assert ls.read_jsonl(out) == train and ls.read_jsonl(out.parent / "heldout.jsonl") == held
        assert capsys.readouterr().out == (f"{out}: {len(train)} reviewed pairs\n"
                                           f"{out.parent / 'heldout.jsonl'}: {len(held)} held-out pairs\n")
    assert ls.read_jsonl(tmp_path / "seed0/heldout.jsonl") != ls.read_jsonl(tmp_path / "seed3/heldout.jsonl")
