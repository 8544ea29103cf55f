"""`medsweep-synth`: synthetic QA pairs from abstracts, for human review and a second fine-tuning stage.

    medsweep-synth input.path=../shared/data/pubmedqa/pubmedqa_pqal.jsonl input.limit=20
    medsweep-synth input.loader=table input.path=abstracts.csv input.text_col=abstract input.id_col=pmid
    medsweep-synth generator.model_dir=results/runs/<run>                 # a fine-tuned run as the generator
    OPENAI_API_KEY=... medsweep-synth synth/generator=openai generator.base_url=https://api.openai.com/v1 \\
        generator.model=gpt-4o-mini                                       # or Ollama / vLLM: their /v1 URL

This module is the pipeline: abstracts in, the two steps, the files out, the command. Step 1 asks the generator
(medsweep/generators.py) for several stand-alone questions per abstract (prompt: conf/synth/prompts/*.yaml);
step 2 answers each question from its abstract only. Cleaning (medsweep/synth_text.py) keeps one question per
line, strips numbering and bullets, drops lines without a letter or digit, headers ("Questions:"), answer lines,
too short or too long lines, lines not ending with "?" and lines pointing at their source ("this study", "the
text"; both configurable), and de-duplicates (normalised text, across all abstracts). Answers that are empty (or
the prompt's "not stated" reply) are flagged ``empty``; answers sharing no content word with the abstract are
flagged ``ungrounded``. Flagged pairs are kept for the reviewer to see (medsweep/labelstudio.py).

Writes to ``out_dir`` (default results/synth): ``synthetic.jsonl`` (id, abstract_id, source, question, answer,
context, flags, overlap, generator), ``stats.json`` (every count) and ``synth_config.yaml`` (resolved config;
the API key is read from the environment variable named by generator.key_env and is never written).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medsweep import CONF_DIR, loaders, record
from medsweep.data import question_key
from medsweep.errors import ConfigError, DataError, MedsweepError
from medsweep.generators import Generator, Messages, OpenAIGenerator, build_generator
from medsweep.loaders.tables import require_columns
from medsweep.synth_text import clean_answer, clean_questions, grounding

log = logging.getLogger("medsweep.synth")

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
        require_columns(str(path), columns, [inp.text_col or None, inp.id_col or None])
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
    for key, least in (("limit", 1), ("max_words", 1), ("offset", 0)):  # limit=0 would read as "all"
        value = cfg.input.get(key)
        if value is not None and value < least:
            raise ConfigError(f"input.{key}={value!r} is invalid: must be >= {least}"
                              + (" or null" if key != "offset" else ""))
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
