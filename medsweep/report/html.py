"""``report.html`` beside ``report.md``: one self-contained file (a reviewer mails it, opens it offline): the tables
as HTML, the figures embedded as base64 PNG with their captions, and the best and worst answers of the best
configurations (answers.py). No external stylesheet, script, font or image; every text that comes from the runs
(questions, answers, references, axis values, errors) is HTML-escaped, since an answer may hold markup.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medsweep import metrics as registry
from medsweep.record import atomic_write_text
from medsweep.report.answers import Answer, Extremes
from medsweep.report.captions import caption
from medsweep.report.signif import NOTE as SIGNIF_NOTE
from medsweep.report.tables import CI_NOTE, _summary_line, display

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0 1em; display: block; overflow-x: auto; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f6f6f6; } table.answers td { text-align: left; }
table.answers td { max-width: 32em; } figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; } figcaption, .note { color: #555; font-size: 12px; max-width: 60em; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def _prose(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _table(view: pd.DataFrame) -> str:
    if view.empty:
        return "<p><em>(none)</em></p>"
    return display(view).to_html(index=False, escape=True, border=0, na_rep="")


def _figure(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    text = caption(path)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'
            + (f"<figcaption>{_prose(text)}</figcaption>" if text else "") + "</figure>")


def _answers(rows: Sequence[Answer], label: str) -> str:
    frame = pd.DataFrame([{"item": a.item, label: f"{a.score:.4g}", "question": a.question, "answer": a.answer,
                           "reference": a.reference} for a in rows])
    return frame.to_html(index=False, escape=True, border=0, classes="answers")


def _extremes(found: Sequence[Extremes]) -> list[str]:
    if not found:
        return ["<p><em>(no per-item scores that tell answers apart: no predictions.jsonl, or equal scores)</em></p>"]
    parts = ['<p class="note">Per metric, the configuration with the best mean and the items it scores highest '
             "and lowest on; the answers and scores are those of its first run (lowest seed).</p>"]
    for e in found:
        label = registry.label(e.metric)
        parts += [f"<h3>{html.escape(label)}: {html.escape(e.configuration)}</h3>",
                  f'<p class="note">run {html.escape(e.run)}</p>',
                  f"<h4>Highest {html.escape(label)}</h4>", _answers(e.best, label),
                  f"<h4>Lowest {html.escape(label)}</h4>", _answers(e.worst, label)]
    return parts


def write_html(df: pd.DataFrame, out_dir, views: dict, figures: Sequence = (), answers: Sequence[Extremes] = ()
               ) -> Path:
    """Write ``out_dir/report/report.html`` (views: tables.views' heading and table by stem); return its path."""
    body = ["<h1>medsweep report</h1>", f"<p>{_prose(_summary_line(df))}</p>",
            f'<p class="note">{_prose(CI_NOTE)}</p>', f'<p class="note">{_prose(SIGNIF_NOTE)}</p>']
    for stem, (heading, view) in views.items():
        body += [f'<h2 id="{html.escape(stem)}">{html.escape(heading)}</h2>', _table(view)]
    if figures:
        body += ["<h2>Figures</h2>", *(_figure(Path(f)) for f in figures)]
    body += ["<h2>Best and worst answers</h2>", *_extremes(answers)]
    text = "\n".join(['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      "<title>medsweep report</title>", f"<style>{_CSS}</style></head><body>", *body,
                      "</body></html>", ""])
    path = Path(out_dir) / "report" / "report.html"
    atomic_write_text(path, text)
    return path
