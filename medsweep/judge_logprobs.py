"""The local judge's scores from its next-token probabilities (the G-Eval approach), not from parsed text: the prompt
starts the assistant's turn (`Correct (1-5): `), one forward pass gives the distribution of the next token, and the
score is the probability-weighted mean of the digits 1-5, renormalised over those five. Pairwise: P(A) against P(B)
after `Better answer:`. Every answer gets a score; a judge that puts little of its next-token mass on the digits
(LOW_MASS) is not following the format and is counted (judge_low_mass), its score kept."""

from __future__ import annotations

from typing import Any

import torch

from medsweep.generation import next_token_probs, next_token_probs_after
from medsweep.hardware import Hardware
from medsweep.judge_text import (
    CRITERIA,
    SCORE_PREFIX,
    VERDICT_PREFIX,
    Grade,
    Preference,
    score_messages,
    verdict_messages,
)
from medsweep.prompts import chat_ids

LOW_MASS = 0.5  # the labels' share of the next-token mass below which the judge is counted as off format
DIGITS = ("1", "2", "3", "4", "5")
LETTERS = ("A", "B")


def label_ids(tokenizer, labels: tuple[str, ...]) -> list[list[int]]:
    """Per label, the ids of its one-token spellings, bare and after a space ("4" / " 4"): which one follows a
    prompt depends on the tokenizer and on whether the prompt ends in a space. ValueError when a label has none."""
    found = []
    for label in labels:
        ids = {ids[0] for ids in (tokenizer.encode(s, add_special_tokens=False) for s in (label, " " + label))
               if len(ids) == 1}
        if not ids:
            raise ValueError(f"the judge's tokenizer has no single token for {label!r}")
        found.append(sorted(ids))
    return found


def label_probs(probs: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:
    """Per prompt (rows of `probs`), each label's probability: the sum over its spellings (prompts x labels)."""
    return torch.stack([probs[:, i].sum(dim=1) for i in ids], dim=1)


def expected_scores(digits: torch.Tensor) -> tuple[list[float], list[int], list[float]]:
    """From P(1..5) per prompt: the weighted mean over the five renormalised, the likeliest digit, their mass."""
    mass = digits.sum(dim=1)
    weights = digits / mass.clamp(min=1e-30).unsqueeze(1)
    values = torch.arange(1, 6, dtype=weights.dtype)
    return ((weights * values).sum(dim=1).tolist(), (digits.argmax(dim=1) + 1).tolist(), mass.tolist())


def _item(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["question"], row["reference"], row["generated"])


def _common_start(prompts: list[list[int]]) -> int:
    """The length of the prompts' common first tokens, leaving each at least its last token."""
    n = 0
    while n < min(map(len, prompts)) - 1 and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


class LogprobScorer:
    """A local chat model scored by its next token: one forward pass per (answer, criterion), batched."""

    def __init__(self, model, tokenizer, hw: Hardware, batch_size: int):
        self.model, self.tokenizer, self.hw, self.batch_size = model, tokenizer, hw, batch_size
        self.digit_ids, self.letter_ids = label_ids(tokenizer, DIGITS), label_ids(tokenizer, LETTERS)
        self.graded: dict[tuple[str, str, str], Grade] = {}  # by _item: the scores depend on nothing else

    def _probs(self, prompts: list[list[int]]) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return next_token_probs(self.model, self.tokenizer, prompts, self.hw, self.batch_size)

    def grade(self, rows: list[dict[str, Any]]) -> list[Grade]:
        """One Grade per prediction row (question, reference, generated). A row's three criteria prompts differ only
        at their end: their common start runs once (next_token_probs_after). An answer graded before by this
        scorer (the base model's answers, the same in every run of a sweep) is not graded again."""
        todo = list({key: row for row in rows if (key := _item(row)) not in self.graded}.items())
        if todo:
            prefixes, ends = [], []
            for _, r in todo:
                ids = [chat_ids(self.tokenizer, score_messages(r["question"], r["reference"], r["generated"], c),
                                SCORE_PREFIX[c]) for c in CRITERIA]
                n = _common_start(ids)
                prefixes.append(ids[0][:n])
                ends.append([p[n:] for p in ids])
            self.model.eval()
            with torch.no_grad():
                probs = next_token_probs_after(self.model, self.tokenizer, prefixes, ends, self.hw, self.batch_size)
            digits = label_probs(probs.reshape(-1, probs.shape[-1]), self.digit_ids)
            means, tops, masses = expected_scores(digits)
            k = len(CRITERIA)
            for i, (key, _) in enumerate(todo):
                mean, top, mass = (dict(zip(CRITERIA, v[i * k:(i + 1) * k], strict=True))
                                   for v in (means, tops, masses))
                self.graded[key] = Grade("ok", mean["correct"], mean["complete"], mean["safe"], reason=None,
                                         argmax={c: int(t) for c, t in top.items()}, mass=mass)
        return [self.graded[_item(r)] for r in rows]

    def verdicts(self, conversations: list[tuple[str, str, str, str]]) -> list[Preference]:
        """Per (question, reference, answer A, answer B): the likelier letter after VERDICT_PREFIX."""
        prompts = [chat_ids(self.tokenizer, verdict_messages(*c), VERDICT_PREFIX) for c in conversations]
        if not prompts:
            return []
        letters = label_probs(self._probs(prompts), self.letter_ids)
        mass = letters.sum(dim=1)
        p_a = (letters[:, 0] / mass.clamp(min=1e-30)).tolist()
        return [Preference("ok", "A" if a >= 0.5 else "B", reason=None, p_a=a, mass=m)
                for a, m in zip(p_a, mass.tolist(), strict=True)]
