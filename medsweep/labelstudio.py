"""Human review of synthetic QA in Label Studio: task files out, reviewed annotations back in.

Two projects, one per review step, each with its labeling config (written next to the tasks):

* questions: the abstract and the generated question; the reviewer edits the question (the text area is
  pre-filled from a prediction) and picks accept / reject.
* answers: the abstract, the question and the generated answer with its grounding flags; the reviewer edits
  the answer and picks accept / reject.

    python -m medsweep.labelstudio tasks results/synth/synthetic.jsonl                 # both task files + configs
    # create the two projects with labelstudio/questions_config.xml and answers_config.xml, import
    # questions_tasks.json / answers_tasks.json, review, then Export -> JSON for each project
    python -m medsweep.labelstudio answer-tasks results/synth/synthetic.jsonl --questions q_export.json
    #   (optional, sequential review: answer tasks only for accepted questions, with their edited text)
    python -m medsweep.labelstudio import --questions q_export.json --answers a_export.json \\
        --out results/synth/reviewed.jsonl --heldout 20

Import rules: the latest submitted (not cancelled) annotation of a task decides; the reviewer's edited text
wins over the generated one; a `reject` drops the item; an item must be reviewed in every export given
(unreviewed items are dropped and counted, unless --keep-unreviewed). The output JSONL has
``id, question, answer, context, source, abstract_id`` (train on it with ``data=synth``); ``--heldout N`` moves
the items of whole abstracts (at least N questions) to ``heldout.jsonl`` next to it, for ``data.eval_path``.
Both Label Studio export formats are read: JSON (tasks with ``annotations``) and JSON_MIN (flat rows).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from medsweep import record
from medsweep.errors import DataError, MedsweepError

QUESTION_CONFIG = """<View>
  <Header value="Abstract"/>
  <Text name="context" value="$context"/>
  <Header value="Generated question"/>
  <Text name="question" value="$question"/>
  <Header value="Edit the question so it stands alone and the abstract answers it"/>
  <TextArea name="edited_question" toName="question" editable="true" transcription="true" maxSubmissions="1" rows="2"/>
  <Choices name="verdict" toName="question" choice="single-radio" showInline="true" required="true">
    <Choice value="accept"/>
    <Choice value="reject"/>
  </Choices>
</View>
"""

ANSWER_CONFIG = """<View>
  <Header value="Abstract"/>
  <Text name="context" value="$context"/>
  <Header value="Question"/>
  <Text name="question" value="$question"/>
  <Header value="Generated answer (flags: $flags)"/>
  <Text name="answer" value="$answer"/>
  <Header value="Edit the answer: brief, and only what the abstract states"/>
  <TextArea name="edited_answer" toName="answer" editable="true" transcription="true" maxSubmissions="1" rows="4"/>
  <Choices name="verdict" toName="answer" choice="single-radio" showInline="true" required="true">
    <Choice value="accept"/>
    <Choice value="reject"/>
  </Choices>
</View>
"""

MODEL_VERSION = "medsweep-synth"
DATA_KEYS = ("item_id", "abstract_id", "source", "context", "question", "answer", "flags")


# --------------------------------------------------------------------------- tasks out


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return rows


def _data(item: dict[str, Any]) -> dict[str, str]:
    """The task's data: what the labeling configs show, plus the ids the import needs."""
    flags = item.get("flags") or []
    return {
        "item_id": str(item["id"]),
        "abstract_id": str(item.get("abstract_id", "")),
        "source": str(item.get("source", "")),
        "context": str(item.get("context", "")),
        "question": str(item["question"]),
        "answer": str(item.get("answer", "")),
        "flags": (", ".join(flags) if isinstance(flags, list) else str(flags)) or "none",
    }


def _prefill(from_name: str, to_name: str, text: str) -> dict[str, Any]:
    """A prediction that pre-fills the text area with the generated text (the reviewer edits it)."""
    return {"model_version": MODEL_VERSION, "result": [
        {"from_name": from_name, "to_name": to_name, "type": "textarea", "value": {"text": [text]}},
    ]}


def question_tasks(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Label Studio tasks of the question project (import JSON: a list of {data, predictions})."""
    return [{"data": _data(it), "predictions": [_prefill("edited_question", "question", str(it["question"]))]}
            for it in items]


def answer_tasks(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Label Studio tasks of the answer project."""
    return [{"data": _data(it), "predictions": [_prefill("edited_answer", "answer", str(it.get("answer", "")))]}
            for it in items]


def write_tasks(items: list[dict[str, Any]], out_dir: str | Path, which: tuple[str, ...] = ("questions", "answers")
                ) -> list[Path]:
    """Write ``<which>_tasks.json`` and ``<which>_config.xml`` for the projects asked for."""
    out_dir = Path(out_dir)
    written = []
    for name in which:
        tasks = question_tasks(items) if name == "questions" else answer_tasks(items)
        config = QUESTION_CONFIG if name == "questions" else ANSWER_CONFIG
        record.atomic_write_text(out_dir / f"{name}_tasks.json", json.dumps(tasks, ensure_ascii=False, indent=1))
        record.atomic_write_text(out_dir / f"{name}_config.xml", config)
        written += [out_dir / f"{name}_tasks.json", out_dir / f"{name}_config.xml"]
    return written


# --------------------------------------------------------------------------- annotations in


def load_export(path: str | Path) -> list[dict[str, Any]]:
    """A Label Studio export (JSON or JSON_MIN) as a list of rows."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise DataError(f"{path}: expected a Label Studio JSON export (a list of tasks)")
    return data


def _text(value: Any) -> str:
    """A text area's value (a list of lines/submissions, or a string) as one stripped string."""
    if isinstance(value, list):
        value = "\n".join(str(v).strip() for v in value if str(v).strip())
    return str(value or "").strip()


def _latest(annotations: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest submitted annotation (cancelled = skipped ones do not count)."""
    done = [a for a in annotations or [] if not a.get("was_cancelled")]
    if not done:
        return None
    return max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))


def review(task: dict[str, Any], text_field: str) -> dict[str, Any]:
    """{data, reviewed, verdict, text, annotator} of one exported task (JSON or JSON_MIN row)."""
    if "data" in task or "annotations" in task:  # JSON: {id, data, annotations: [{result: [...]}], predictions}
        data = task.get("data") or {}
        ann = _latest(task.get("annotations") or [])
        if ann is None:
            return {"data": data, "reviewed": False, "verdict": None, "text": None, "annotator": None}
        verdict, text = None, None
        for r in ann.get("result") or []:
            value = r.get("value") or {}
            if r.get("from_name") == "verdict" and value.get("choices"):
                verdict = str(value["choices"][0]).lower()
            elif r.get("from_name") == text_field and "text" in value:
                text = _text(value["text"])
        return {"data": data, "reviewed": True, "verdict": verdict, "text": text or None,
                "annotator": ann.get("completed_by")}
    # JSON_MIN: the task's data keys plus one key per control (from_name), only for annotated tasks
    data = {k: task[k] for k in DATA_KEYS if k in task}
    reviewed = "verdict" in task or text_field in task
    verdict = task.get("verdict")
    if isinstance(verdict, dict):
        verdict = (verdict.get("choices") or [None])[0]
    elif isinstance(verdict, list):
        verdict = verdict[0] if verdict else None
    text = task.get(text_field)
    if isinstance(text, dict):
        text = text.get("text")
    return {"data": data, "reviewed": reviewed, "verdict": str(verdict).lower() if verdict else None,
            "text": _text(text) or None, "annotator": task.get("annotator")}


def _index(rows: list[dict[str, Any]], text_field: str, where: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, task in enumerate(rows, start=1):
        r = review(task, text_field)
        item_id = r["data"].get("item_id")
        if not item_id:
            raise DataError(f"{where}: task {i} has no data.item_id (tasks must come from medsweep.labelstudio)")
        out[str(item_id)] = r
    return out


def import_reviews(questions: list[dict[str, Any]] | None = None, answers: list[dict[str, Any]] | None = None,
                   keep_unreviewed: bool = False, require_answer: bool = True
                   ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Merge the question and/or answer project exports into reviewed records (see the module docstring); items
    left without a question (or, with `require_answer`, an answer) are dropped and counted as ``empty``."""
    if questions is None and answers is None:
        raise DataError("nothing to import: give the question export, the answer export or both")
    q = _index(questions, "edited_question", "question export") if questions is not None else {}
    a = _index(answers, "edited_answer", "answer export") if answers is not None else {}
    stats = {"items": 0, "kept": 0, "rejected_question": 0, "rejected_answer": 0, "unreviewed": 0,
             "edited_question": 0, "edited_answer": 0, "empty": 0}
    order = list(dict.fromkeys([*q, *a]))
    records = []
    for item_id in order:
        stats["items"] += 1
        qr, ar = q.get(item_id), a.get(item_id)
        if questions is not None and qr is not None and qr["reviewed"] and qr["verdict"] == "reject":
            stats["rejected_question"] += 1
            continue
        if answers is not None and ar is not None and ar["reviewed"] and ar["verdict"] == "reject":
            stats["rejected_answer"] += 1
            continue
        missing = (questions is not None and (qr is None or not qr["reviewed"])) or \
                  (answers is not None and (ar is None or not ar["reviewed"]))
        if missing and not keep_unreviewed:
            stats["unreviewed"] += 1
            continue
        q_data, a_data = (qr or {}).get("data", {}), (ar or {}).get("data", {})
        data = {**q_data, **a_data}
        generated_q = str(q_data.get("question") or a_data.get("question") or "").strip()
        generated_a = str(a_data.get("answer") or q_data.get("answer") or "").strip()
        question = (qr or {}).get("text") or str(a_data.get("question") or generated_q).strip()
        answer = (ar or {}).get("text") or generated_a
        edited_q, edited_a = question != generated_q, answer != generated_a
        if not question or (require_answer and not answer):
            stats["empty"] += 1
            continue
        stats["edited_question"] += edited_q
        stats["edited_answer"] += edited_a
        records.append({
            "id": item_id, "question": question, "answer": answer, "context": str(data.get("context", "")),
            "source": str(data.get("source", "")) or "synth", "abstract_id": str(data.get("abstract_id", "")),
            "edited": [k for k, e in (("question", edited_q), ("answer", edited_a)) if e],
        })
    stats["kept"] = len(records)
    return records, stats


def answer_tasks_after_review(items: list[dict[str, Any]], question_export: list[dict[str, Any]],
                              keep_unreviewed: bool = False) -> list[dict[str, Any]]:
    """Answer-project tasks for the questions accepted in the question project, with the edited text (flagged
    ``question edited`` when the answer was generated for the original wording)."""
    reviewed, _ = import_reviews(questions=question_export, keep_unreviewed=keep_unreviewed, require_answer=False)
    by_id = {str(it["id"]): it for it in items}
    out = []
    for r in reviewed:
        item = dict(by_id.get(r["id"], r))
        flags = list(item.get("flags") or [])
        if "question" in r["edited"]:
            flags.append("question edited")
        out.append({**item, "question": r["question"], "flags": flags})
    return answer_tasks(out)


def split_heldout(records: list[dict[str, Any]], n: int, seed: int = 0
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held out): whole abstracts, drawn with `seed`, until at least `n` questions are held out, so no
    abstract has questions on both sides."""
    if n <= 0:
        return records, []
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r.get("abstract_id") or r["id"], []).append(r)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    held: set[str] = set()
    count = 0
    for k in keys:
        if count >= n:
            break
        held.add(k)
        count += len(groups[k])
    if len(held) == len(keys):
        raise DataError(f"--heldout {n} would hold out every abstract ({len(records)} reviewed items); lower it")
    train = [r for r in records if (r.get("abstract_id") or r["id"]) not in held]
    heldout = [r for r in records if (r.get("abstract_id") or r["id"]) in held]
    return train, heldout


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medsweep.labelstudio", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tasks", help="write question and answer tasks + labeling configs from synthetic.jsonl")
    t.add_argument("synthetic", help="medsweep-synth output (synthetic.jsonl)")
    t.add_argument("--out", help="folder (default: labelstudio/ next to the input)")
    t.add_argument("--only", choices=["questions", "answers"], help="write one project's files only")
    at = sub.add_parser("answer-tasks", help="answer tasks for the accepted questions of a question export")
    at.add_argument("synthetic")
    at.add_argument("--questions", required=True, help="Label Studio export (JSON) of the question project")
    at.add_argument("--out", help="folder (default: labelstudio/ next to the input)")
    im = sub.add_parser("import", help="reviewed exports -> training JSONL")
    im.add_argument("--questions", help="Label Studio export (JSON or JSON_MIN) of the question project")
    im.add_argument("--answers", help="Label Studio export (JSON or JSON_MIN) of the answer project")
    im.add_argument("--out", required=True, help="reviewed JSONL to write (e.g. results/synth/reviewed.jsonl)")
    im.add_argument("--heldout", type=int, default=0, help="hold out whole abstracts with at least N questions "
                                                           "into heldout.jsonl next to --out (default 0)")
    im.add_argument("--seed", type=int, default=0, help="seed of the held-out draw (default 0)")
    im.add_argument("--keep-unreviewed", action="store_true", help="keep items nobody reviewed (default: drop)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("tasks", "answer-tasks"):
            items = read_jsonl(args.synthetic)
            out = Path(args.out) if args.out else Path(args.synthetic).parent / "labelstudio"
            if args.command == "tasks":
                written = write_tasks(items, out, (args.only,) if args.only else ("questions", "answers"))
            else:
                tasks = answer_tasks_after_review(items, load_export(args.questions))
                record.atomic_write_text(out / "answers_tasks.json", json.dumps(tasks, ensure_ascii=False, indent=1))
                record.atomic_write_text(out / "answers_config.xml", ANSWER_CONFIG)
                written = [out / "answers_tasks.json", out / "answers_config.xml"]
            for path in written:
                print(path)
            return 0
        records, stats = import_reviews(load_export(args.questions) if args.questions else None,
                                        load_export(args.answers) if args.answers else None,
                                        keep_unreviewed=args.keep_unreviewed)
        if not records:
            raise DataError(f"no reviewed item kept ({stats})")
        train, heldout = split_heldout(records, args.heldout, args.seed)
        out = Path(args.out)
        record.atomic_write_jsonl(out, train)
        print(f"{out}: {len(train)} reviewed pairs")
        if heldout:
            record.atomic_write_jsonl(out.parent / "heldout.jsonl", heldout)
            print(f"{out.parent / 'heldout.jsonl'}: {len(heldout)} held-out pairs")
        print(json.dumps(stats), file=sys.stderr)
    except MedsweepError as exc:
        print(f"medsweep.labelstudio: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
