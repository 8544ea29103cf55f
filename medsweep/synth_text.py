"""medsweep-synth's text rules: questions cut out of a generation (one per line, numbering and bullets stripped,
headers, answer lines, too short or too long lines, lines not ending with "?" and lines pointing at their source
dropped, de-duplicated), answers cleaned, and the grounding flags of an answer against its abstract."""

from __future__ import annotations

import re

from medsweep.data import question_key

_BULLET = re.compile(
    r"^\s*(?:[-*\u2022\u00b7>#]+\s*|\(?\d{1,3}\s*[.):\]]\s*|\(?[a-zA-Z][.)]\s+|(?:Q|Ques|Question)\s*\d*\s*[:.)-]\s*)+"
)
_SPLIT_NUMBERED = re.compile(r"(?<=[?.!])\s+(?=\(?\d{1,3}[.)]\s)")
_ANSWER_LINE = re.compile(r"^\s*(?:A|Answer)\s*\d*\s*[:.)-]", re.IGNORECASE)
_ALNUM = re.compile(r"[^\W_]", re.UNICODE)
_NOT_STANDALONE = re.compile(r"\b(?:this|the|these|above|given)\s+(?:text|abstract|study|studies|article|paper|passage|"
                             r"authors?|research|trial|findings|results)\b", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers him
his how i if in into is it its itself just may me might more most must my no nor not now of off on once only or
other our ours out over own same shall she should so some such than that the their theirs them then there these they
this those through to too under until up very was we were what when where which while who whom why will with would
you your yours yes used use using study studies patient patients result results
""".split())


def strip_numbering(line: str) -> str:
    """A line without leading bullets, numbering ("1.", "2)", "(3)", "a)", "Q1:", "Question 2 -") or markdown."""
    line = _BULLET.sub("", line.strip())
    return line.strip().strip("*_`").strip().strip('"\u201c\u201d').strip()


def clean_questions(text: str, limit: int, min_words: int = 3, seen: set[str] | None = None,
                    max_words: int = 40, require_question_mark: bool = True, standalone: bool = True
                    ) -> tuple[list[str], dict[str, int]]:
    """Questions from a generation: one per line, no numbering, at least one alphanumeric character, between
    `min_words` and `max_words` words, ending with "?" (unless `require_question_mark` is off), no header or answer
    lines, with `standalone` none pointing at its source ("this study", "the text", "the authors"), de-duplicated
    (also against `seen`, which is updated), at most `limit`. Returns (questions, counts of lines dropped per
    reason)."""
    seen = set() if seen is None else seen
    counts = {"lines": 0, "no_alnum": 0, "header": 0, "answer_line": 0, "too_short": 0, "too_long": 0,
              "not_a_question": 0, "not_standalone": 0, "duplicate": 0, "over_limit": 0}
    kept: list[str] = []
    lines = [part for line in text.splitlines() for part in _SPLIT_NUMBERED.split(line)]
    for raw in lines:
        if not raw.strip():
            continue
        counts["lines"] += 1
        if _ANSWER_LINE.match(raw):
            counts["answer_line"] += 1
            continue
        line = " ".join(strip_numbering(raw).split())
        if not _ALNUM.search(line):
            counts["no_alnum"] += 1
        elif line.endswith(":"):
            counts["header"] += 1
        elif len(line.split()) < min_words:
            counts["too_short"] += 1
        elif len(line.split()) > max_words:
            counts["too_long"] += 1
        elif require_question_mark and not line.endswith("?"):
            counts["not_a_question"] += 1
        elif standalone and _NOT_STANDALONE.search(line):
            counts["not_standalone"] += 1
        elif question_key(line) in seen:
            counts["duplicate"] += 1
        elif len(kept) >= limit:
            counts["over_limit"] += 1
        else:
            seen.add(question_key(line))
            kept.append(line)
    return kept, counts


def clean_answer(text: str, not_stated: str | None = None) -> str:
    """The answer without an "Answer:" prefix, a run-on next question, or extra whitespace; "" when the model
    said the text does not answer it (`not_stated`)."""
    text = re.split(r"(?:^|\s)(?:Q|Question)\s*\d*\s*:", text.strip(), maxsplit=1)[0]
    text = re.sub(r"^\s*(?:A|Answer)\s*[:.)-]\s*", "", text, flags=re.IGNORECASE)
    text = " ".join(text.split())
    if not_stated and text.lower().strip(" .!").startswith(not_stated.lower().strip(" .!")):
        return ""
    return text


def content_words(text: str) -> set[str]:
    """Lower-cased words of 3+ characters (any number) that are not stopwords; a trailing plural s is dropped."""
    words = set()
    for w in _WORD.findall(text.lower()):
        if w in STOPWORDS or (len(w) < 3 and not w.isdigit()):
            continue
        words.add(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return words


def grounding(answer: str, abstract: str, min_overlap: float = 0.0) -> tuple[list[str], float]:
    """(flags, overlap): ``empty`` for no answer; ``ungrounded`` when the answer shares no content word with the
    abstract (or the shared fraction of its content words is below `min_overlap`)."""
    if not answer.strip():
        return ["empty"], 0.0
    words = content_words(answer)
    if not words:
        return ["ungrounded"], 0.0
    shared = len(words & content_words(abstract))
    overlap = shared / len(words)
    return (["ungrounded"] if shared == 0 or overlap < min_overlap else []), round(overlap, 3)
