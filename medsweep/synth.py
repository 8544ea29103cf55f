"""`medsweep-synth`: synthetic QA pairs from abstracts, for human review and a second fine-tuning stage.

    medsweep-synth input.path=../shared/data/pubmedqa/pubmedqa_pqal.jsonl input.limit=20
    medsweep-synth input.loader=table input.path=abstracts.csv input.text_col=abstract input.id_col=pmid
    medsweep-synth generator.model_dir=results/runs/<run>                 # a fine-tuned run as the generator
    OPENAI_API_KEY=... medsweep-synth synth/generator=openai generator.base_url=https://api.openai.com/v1 \\
        generator.model=gpt-4o-mini                                       # or Ollama / vLLM: their /v1 URL

Step 1 asks the generator for several stand-alone questions per abstract (prompt: conf/synth/prompts/*.yaml);
step 2 answers each question from its abstract only. Cleaning keeps one question per line, strips numbering
and bullets, drops lines without a letter or digit, headers ("Questions:"), answer lines, too short or too long
lines, lines not ending with "?" and lines pointing at their source ("this study", "the text"; both
configurable), and de-duplicates (normalised text, across all abstracts). Answers that are empty (or the
prompt's "not stated" reply) are flagged ``empty``; answers sharing no content word with the abstract are
flagged ``ungrounded``. Flagged pairs are kept for the reviewer to see (medsweep/labelstudio.py).

Writes to ``out_dir`` (default results/synth): ``synthetic.jsonl`` (id, abstract_id, source, question, answer,
context, flags, overlap, generator), ``stats.json`` (every count) and ``synth_config.yaml`` (resolved config;
the API key is read from the environment variable named by generator.key_env and is never written).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from medsweep import CONF_DIR, loaders, record
from medsweep.data import question_key
from medsweep.errors import ConfigError, DataError, MedsweepError
from medsweep.hardware import Hardware

log = logging.getLogger("medsweep.synth")

Messages = list[dict[str, str]]

# --------------------------------------------------------------------------- cleaning

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


# --------------------------------------------------------------------------- abstracts


def load_abstracts(inp: Any) -> list[dict[str, str]]:
    """[{id, text, source}] from the configured input, de-duplicated, offset/limit applied, truncated to
    input.max_words words."""
    loader, path = inp.loader, inp.path
    if loader == "pubmedqa":
        records, _ = loaders.load_pubmedqa(path, split=inp.split)
        items = [{"id": r["id"], "text": r.get("context", ""), "source": "pubmedqa"} for r in records]
    elif loader == "medal":
        records, _ = loaders.load_medal(path, max_rows=inp.max_rows)
        items = [{"id": r["id"], "text": r.get("context", ""), "source": "medal"} for r in records]
    elif loader == "table":
        if not path:
            raise ConfigError("input.path is required with input.loader=table")
        p = loaders.existing(path)
        rows, columns = loaders.read_rows(p)  # the generic table reader (jsonl/json/csv/tsv/parquet)
        wanted = [c for c in (inp.text_col, inp.id_col) if c]
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; available columns: {', '.join(columns)}")
        items = [{"id": str(row.get(inp.id_col) or "") if inp.id_col else "", "text": str(row.get(inp.text_col) or ""),
                  "source": inp.source or p.stem} for row in rows]
        for i, it in enumerate(items):
            it["id"] = it["id"] or f"{p.stem}-{i}"
    else:
        raise ConfigError(f"input.loader={loader!r} is invalid: allowed pubmedqa, medal, table")
    out, seen = [], set()
    for it in items:
        text = " ".join(it["text"].split())
        key = question_key(text)
        if not key or key in seen:
            continue
        seen.add(key)
        words = text.split()
        if inp.max_words and len(words) > inp.max_words:
            text = " ".join(words[: inp.max_words])
        out.append({**it, "text": text})
    out = out[inp.offset:]
    return out[: inp.limit] if inp.limit else out


# --------------------------------------------------------------------------- generators


class Generator(Protocol):
    name: str

    def chat(self, conversations: list[Messages], max_new_tokens: int) -> list[str]: ...


class LocalGenerator:
    """A transformers causal LM with a chat template: batched, left-padded generation."""

    def __init__(self, model, tokenizer, hw: Hardware, name: str, batch_size: int = 4, temperature: float = 0.0,
                 top_p: float = 0.9, repetition_penalty: float = 1.0):
        self.model, self.tokenizer, self.hw, self.name = model, tokenizer, hw, name
        self.batch_size, self.temperature, self.top_p = batch_size, temperature, top_p
        self.repetition_penalty = repetition_penalty
        if not tokenizer.chat_template:
            raise ConfigError(f"the generator {name} has no chat template; use a chat (instruct) model")

    def _ids(self, messages: Messages) -> list[int]:
        from medsweep.prompts import adds_bos

        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = [self.tokenizer.bos_token_id] if adds_bos(self.tokenizer, prompt) else []
        return bos + self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def chat(self, conversations: list[Messages], max_new_tokens: int) -> list[str]:
        import torch

        from medsweep.evaluate import autocast, decoding, stop_ids, until_stop

        prompts = [self._ids(m) for m in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        out = [""] * len(prompts)
        stop = stop_ids(self.tokenizer, self.model)
        sampling = decoding(self.temperature > 0, self.temperature, self.top_p)
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [prompts[i] for i in idx]}, return_tensors="pt").to(
                    self.hw.device)
                with torch.no_grad(), autocast(self.hw):
                    gen = self.model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=stop,
                                              pad_token_id=self.tokenizer.pad_token_id, use_cache=True,
                                              repetition_penalty=self.repetition_penalty, **sampling)
                new = gen[:, batch["input_ids"].shape[1]:]
                for row, i in enumerate(idx):
                    out[i] = self.tokenizer.decode(until_stop(new[row].tolist(), stop)[0], skip_special_tokens=True)
        finally:
            self.tokenizer.padding_side = side
        return out


class OpenAIGenerator:
    """Any OpenAI-compatible chat endpoint (OpenAI, Ollama, vLLM, ...): POST {base_url}/chat/completions with
    urllib. The key comes from the environment variable `key_env` only; without it no Authorization header is
    sent (Ollama and local vLLM need none)."""

    def __init__(self, base_url: str, model: str, key_env: str | None = "OPENAI_API_KEY", temperature: float = 0.0,
                 top_p: float = 1.0, timeout_s: float = 120.0, retries: int = 2):
        if not base_url or not model:
            raise ConfigError("generator.base_url and generator.model are required with synth/generator=openai")
        if not re.match(r"^https?://", base_url):
            raise ConfigError(f"generator.base_url={base_url!r} is invalid: expected http(s)://host[:port]/v1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.key_env, self.temperature, self.top_p = model, key_env, temperature, top_p
        self.timeout_s, self.retries = timeout_s, retries
        self.name = f"openai:{model}"

    def _key(self) -> str | None:
        return os.environ.get(self.key_env) if self.key_env else None

    def _scrub(self, text: str) -> str:
        key = self._key()
        return text.replace(key, record.REDACTED) if key else text

    def complete(self, messages: Messages, max_new_tokens: int) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": max_new_tokens,
                           "temperature": self.temperature, "top_p": self.top_p, "stream": False}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return str(payload["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as exc:
                detail = self._scrub(exc.read().decode("utf-8", "replace")[:300])
                if exc.code in (429, 500, 502, 503, 504) and attempt < self.retries:
                    time.sleep(2 ** attempt)
                    continue
                hint = f" (is ${self.key_env} set?)" if exc.code in (401, 403) and self.key_env else ""
                raise MedsweepError(f"{self.url}: HTTP {exc.code}{hint}: {' '.join(detail.split())}") from None
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                if attempt < self.retries:
                    time.sleep(2 ** attempt)
                    continue
                raise MedsweepError(f"{self.url}: cannot reach the endpoint: {self._scrub(str(exc))}") from None
            except (KeyError, IndexError, TypeError, ValueError):
                raise MedsweepError(f"{self.url}: not an OpenAI chat completion response") from None
        raise AssertionError("unreachable")

    def chat(self, conversations: list[Messages], max_new_tokens: int) -> list[str]:
        return [self.complete(m, max_new_tokens) for m in conversations]


def _device(gen_cfg: Any) -> Hardware:
    import torch

    device = gen_cfg.device if gen_cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("generator.device=cuda is invalid: no CUDA GPU is visible")
    precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device == "cuda" else "fp32"
    return Hardware(device=device, precision=precision, threads=max(1, min(2, os.cpu_count() or 1)))


def build_generator(cfg: Any) -> Generator:
    """The generator the config names: local (the `model` config or generator.model_dir) or openai."""
    g = cfg.generator
    if g.backend == "openai":
        return OpenAIGenerator(g.base_url, g.model, g.key_env, g.temperature, g.top_p, g.timeout_s, g.retries)
    if g.backend != "local":
        raise ConfigError(f"generator.backend={g.backend!r} is invalid: allowed local, openai")
    from medsweep import models

    hw = _device(g)
    if g.model_dir:
        from medsweep.export import load_generator_model

        model, tokenizer = load_generator_model(g.model_dir, hw)
        name = Path(g.model_dir).name
    else:
        tokenizer = models.load_tokenizer(cfg.model)
        model, _ = models.load_model(cfg.model, tokenizer, hw, seed=cfg.seed)
        name = cfg.model.name
    return LocalGenerator(model, tokenizer, hw, name, batch_size=g.batch_size, temperature=g.temperature,
                          top_p=g.top_p, repetition_penalty=g.repetition_penalty)


# --------------------------------------------------------------------------- the two steps


def _fill(template: str, **values: Any) -> str:
    """str.replace of {name} placeholders (abstracts may hold braces that str.format would choke on)."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", str(value))
    return template


def _messages(system: str | None, user: str) -> Messages:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def synthesize(abstracts: list[dict[str, str]], generator: Generator, prompts: Any, num_questions: int,
               min_question_words: int = 3, min_overlap: float = 0.0, max_new_tokens_questions: int = 192,
               max_new_tokens_answer: int = 96, max_question_words: int = 40, require_question_mark: bool = True,
               standalone: bool = True, progress: Callable[[str], None] = log.info
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Questions (step 1), then answers (step 2), cleaned and flagged. Returns (rows, stats)."""
    t0 = time.perf_counter()
    progress(f"step 1: questions for {len(abstracts)} abstracts with {generator.name}")
    raw = generator.chat([_messages(prompts.question_system, _fill(prompts.question_user, abstract=a["text"],
                                                                   n=num_questions)) for a in abstracts],
                         max_new_tokens_questions)
    seen: set[str] = set()
    drops: dict[str, int] = {}
    pending = []
    for a, text in zip(abstracts, raw, strict=True):
        questions, counts = clean_questions(text, num_questions, min_question_words, seen, max_question_words,
                                            require_question_mark, standalone)
        for reason, n in counts.items():
            drops[reason] = drops.get(reason, 0) + n
        pending += [(a, k, q) for k, q in enumerate(questions, start=1)]
    t1 = time.perf_counter()
    progress(f"step 2: answers for {len(pending)} questions")
    answers = generator.chat([_messages(prompts.answer_system, _fill(prompts.answer_user, abstract=a["text"],
                                                                     question=q)) for a, _, q in pending],
                             max_new_tokens_answer)
    rows: list[dict[str, Any]] = []
    for (a, k, q), text in zip(pending, answers, strict=True):
        answer = clean_answer(text, prompts.get("not_stated"))
        flags, overlap = grounding(answer, a["text"], min_overlap)
        rows.append({"id": f"{a['id']}-q{k}", "abstract_id": a["id"], "source": a["source"], "question": q,
                     "answer": answer, "context": a["text"], "flags": flags, "overlap": overlap,
                     "generator": generator.name})
    stats = {
        "abstracts": len(abstracts), "question_lines": drops.get("lines", 0), "questions": len(pending),
        "dropped": {k: v for k, v in drops.items() if k != "lines"},
        "abstracts_without_questions": sum(1 for a in abstracts if not any(p[0] is a for p in pending)),
        "flagged_empty": sum("empty" in r["flags"] for r in rows),
        "flagged_ungrounded": sum("ungrounded" in r["flags"] for r in rows),
        "unflagged": sum(not r["flags"] for r in rows),
        "seconds_questions": round(t1 - t0, 2), "seconds_answers": round(time.perf_counter() - t1, 2),
        "generator": generator.name,
    }
    return rows, stats


def run(cfg: Any, generator: Generator | None = None) -> dict[str, Any]:
    """Load the abstracts, generate, write synthetic.jsonl / stats.json / synth_config.yaml into cfg.out_dir."""
    from omegaconf import OmegaConf

    if cfg.num_questions < 1:
        raise ConfigError(f"num_questions={cfg.num_questions!r} is invalid: must be >= 1")
    if OmegaConf.is_missing(cfg.input, "path"):
        raise ConfigError("input.path is required: the abstracts file (e.g. input.path=pubmedqa_pqal.jsonl; "
                          "input.path=null reads the hub copy of pubmedqa/medal)")
    if cfg.generator.backend == "openai" and OmegaConf.is_missing(cfg.generator, "model"):
        raise ConfigError("generator.model is required with synth/generator=openai (the endpoint's model name)")
    out_dir = Path(cfg.out_dir)
    abstracts = load_abstracts(cfg.input)
    if not abstracts:
        raise DataError(f"no abstracts in {cfg.input.path} (after de-duplication, offset and limit)")
    generator = generator or build_generator(cfg)
    rows, stats = synthesize(abstracts, generator, cfg.prompts, cfg.num_questions, cfg.min_question_words,
                             cfg.min_overlap, cfg.generator.max_new_tokens_questions,
                             cfg.generator.max_new_tokens_answer, cfg.max_question_words, cfg.require_question_mark,
                             cfg.require_standalone)
    scrub = generator._scrub if isinstance(generator, OpenAIGenerator) else (lambda s: s)
    record.atomic_write_jsonl(out_dir / "synthetic.jsonl",
                              [{k: scrub(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows])
    stats["written_at"] = record.now()
    record.atomic_write_json(out_dir / "stats.json", stats)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    record.atomic_write_text(out_dir / "synth_config.yaml", OmegaConf.to_yaml(record.redact(resolved)))
    return {"out_dir": str(out_dir), "rows": len(rows), **stats}


# --------------------------------------------------------------------------- CLI



def _hydra_main():
    import hydra
    from omegaconf import DictConfig

    from medsweep import config

    config.register_configs()  # model_schema: conf/synth.yaml types its `model` node (the model files list only
    # what differs from ModelConfig's defaults)

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="synth")
    def _main(cfg: DictConfig) -> None:
        for noisy in ("transformers", "peft", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            summary = run(cfg)
        except MedsweepError as exc:
            print(f"medsweep-synth: error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        print(f"{summary['out_dir']}/synthetic.jsonl: {summary['rows']} QA pairs from {summary['abstracts']} "
              f"abstracts ({summary['flagged_empty']} flagged empty, {summary['flagged_ungrounded']} ungrounded)")
        print(f"review: python -m medsweep.labelstudio tasks {summary['out_dir']}/synthetic.jsonl")

    return _main


def main() -> None:
    _hydra_main()()


if __name__ == "__main__":
    main()
