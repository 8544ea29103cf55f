"""Judge-model scoring: a judge model grades each generated answer against its question and reference (correct,
complete, safe: 1-5 each, and a short reason) and, where the base model answered the same questions, says which of
the fine-tuned and the base answer is better, asked twice with the positions swapped.

    medsweep eval.baseline=true judge=local                 # after the run's evaluation, on the answers it generated
    medsweep-judge results/sweeps/<name> judge=openai judge.base_url=http://gpu01:8000/v1 judge.model=Qwen2.5-72B

The judge is any OpenAI-compatible endpoint or a local transformers chat model (medsweep/generators.py: the key is
read from the environment variable judge.key_env names, at call time, and never written). Prompts and parsers:
medsweep/judge_text.py. A reply the parser cannot read, or a request that fails, is counted (judge_unparsed, the
record's `judge` counts) and never fatal. Scores and reasons go into each prediction row's `judge` entry, the means
into the record's metrics (and baseline, delta, per_example), the judge's identity into the record's `judge`."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import mean
from typing import Any
from urllib.parse import urlsplit

from medsweep import CONF_DIR, metrics, record
from medsweep.config import JudgeConfig, RunConfig
from medsweep.errors import ConfigError, MedsweepError, ModelError
from medsweep.generators import Generator, OpenAIGenerator
from medsweep.hardware import Hardware, cpu_has_bf16
from medsweep.judge_logprobs import LOW_MASS, LogprobScorer
from medsweep.judge_text import (
    CRITERIA,
    JUDGE_PROMPT_VERSION,
    Grade,
    Messages,
    Preference,
    grade_messages,
    outcome,
    pairwise_messages,
    parse_grade,
    parse_preference,
)
from medsweep.runlock import RunLock
from medsweep.runrecord import FILE, RunRecord

log = logging.getLogger("medsweep.judge")

PREDICTIONS = "predictions.jsonl"
BASELINE = "predictions_baseline.jsonl"
GIVE_UP_AFTER = 5  # failed requests in a row after which the rest of a run's requests are counted as errors, not sent
OUTCOMES = {"win": "wins", "loss": "losses", "tie": "ties", "unparsed": "unparsed", "error": "errors"}  # -> counts


class Judge:
    """A generator asked the rubric and pairwise prompts. An endpoint is asked one conversation at a time, so that
    one failed request is one `error`; a local model answers a whole list in batches."""

    def __init__(self, generator: Generator, identity: dict[str, Any], max_new_tokens: int,
                 scorer: LogprobScorer | None = None):
        self.generator, self.identity, self.max_new_tokens = generator, identity, max_new_tokens
        self.scorer = scorer  # set: the logprobs method (scores from the next token), else the text method
        self.failed = 0  # requests failed in a row: a dead endpoint (or a wrong key) is not asked hundreds of times

    def _ask(self, conversations: list[Messages]) -> list[str | MedsweepError]:
        gen = self.generator
        if not isinstance(gen, OpenAIGenerator):
            return list(gen.chat(conversations, self.max_new_tokens))
        replies: list[str | MedsweepError] = []
        for messages in conversations:
            if self.failed >= GIVE_UP_AFTER:
                replies.append(MedsweepError(f"not asked: the judge failed {self.failed} times in a row"))
                continue
            try:
                replies.append(gen._scrub(gen.complete(messages, self.max_new_tokens)))  # a server may echo the key
                self.failed = 0
            except MedsweepError as exc:
                log.warning("judge: %s", exc)
                replies.append(exc)
                self.failed += 1
        return replies

    def grade(self, rows: list[dict[str, Any]]) -> list[Grade]:
        """One Grade per prediction row (question, reference, generated)."""
        if self.scorer is not None:
            return self.scorer.grade(rows)
        replies = self._ask([grade_messages(r["question"], r["reference"], r["generated"]) for r in rows])
        return [Grade("error", reason=str(r)) if isinstance(r, MedsweepError) else parse_grade(r) for r in replies]

    def compare(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[tuple[Preference, Preference]]:
        """Per (fine-tuned row, base row): the verdict with the fine-tuned answer as A, then as B."""
        if self.scorer is not None:
            both = self.scorer.verdicts([(f["question"], f["reference"], f["generated"], b["generated"])
                                         for f, b in pairs] + [(f["question"], f["reference"], b["generated"],
                                                                f["generated"]) for f, b in pairs])
            return list(zip(both[:len(pairs)], both[len(pairs):], strict=True))
        first = [pairwise_messages(f["question"], f["reference"], f["generated"], b["generated"]) for f, b in pairs]
        swapped = [pairwise_messages(f["question"], f["reference"], b["generated"], f["generated"]) for f, b in pairs]
        replies = [Preference("error", reason=str(r)) if isinstance(r, MedsweepError) else parse_preference(r)
                   for r in self._ask(first + swapped)]
        return list(zip(replies[:len(pairs)], replies[len(pairs):], strict=True))


@dataclass
class Judged:
    """The record's `judge`: who judged, with which prompt and decoding, and what came of it."""

    identity: dict[str, Any]  # kind, model, endpoint host (no credentials) or local path and device
    prompt_version: str
    decoding: dict[str, Any]
    judged_at: str
    seconds: float
    answers: dict[str, dict[str, int]]  # fine_tuned / baseline: graded, unparsed, errors (logprobs: low_mass)
    pairwise: dict[str, Any] | None  # wins, losses, ties, unparsed, errors, win_rate, judge_picked_a (, low_mass)


def _host(url: str) -> str:
    """scheme://host[:port] of an endpoint URL: no user, password, path or query (where tokens may hide)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _precision(hw: Hardware, requested: str) -> Hardware:
    """The local judge's compute precision (judge.precision): auto keeps the GPU's choice and takes bf16 on a CPU
    with native bf16 matmuls (several times faster there than fp32; emulated elsewhere, and slower)."""
    if requested == "auto":
        requested = hw.precision if hw.device == "cuda" else ("bf16" if cpu_has_bf16() else "fp32")
    if requested == "fp16" and hw.device != "cuda":
        raise ConfigError("judge.precision=fp16 is invalid on the CPU: allowed fp32, bf16, auto")
    return replace(hw, precision=requested)


def build_judge(cfg: JudgeConfig, cache_dir: str | None = None) -> Judge:
    """The judge judge.kind names (local or openai)."""
    cfg.check()
    method = cfg.method if cfg.method != "auto" else ("text" if cfg.kind == "openai" else "logprobs")
    if cfg.kind == "openai":
        assert cfg.base_url and cfg.model  # cfg.check() requires them
        gen: Generator = OpenAIGenerator(cfg.base_url, cfg.model, cfg.key_env, cfg.temperature, cfg.top_p,
                                         cfg.timeout_s, cfg.retries)
        return Judge(gen, {"kind": "openai", "model": cfg.model, "endpoint": _host(cfg.base_url),
                           "key_env": cfg.key_env, "method": method}, cfg.max_new_tokens)
    if cfg.kind != "local":
        raise ConfigError("judge=none judges nothing: choose judge=local or judge=openai")
    from medsweep import models
    from medsweep.export import load_generator_model
    from medsweep.generators import LocalGenerator, _device

    hw = _precision(_device(cfg, "judge.device"), cfg.precision)
    path = Path(os.path.expanduser(cfg.model)) if cfg.model else \
        models.embedded_model_dir(cache_dir or os.environ.get("MEDSWEEP_CACHE", "~/.cache/medsweep"))
    if cfg.model and not path.is_dir():  # a hub id: its files from the hub cache (or the hub, when online)
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(cfg.model, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                                     "*.jinja"]))
        except Exception as exc:  # noqa: BLE001 - offline, unknown id, no access: one line
            raise ModelError(f"judge.model={cfg.model!r}: neither a directory nor a loadable hub id "
                             f"({type(exc).__name__})") from None
    if not (path / "config.json").is_file() and not (path / "config.yaml").is_file():
        raise ConfigError(f"judge.model={str(path)!r} is invalid: neither a model directory (config.json) nor a "
                          f"run directory")
    model, tokenizer = load_generator_model(path, hw)
    name = cfg.model or f"{path.name} (embedded)"
    gen = LocalGenerator(model, tokenizer, hw, name, batch_size=cfg.batch_size, temperature=cfg.temperature,
                         top_p=cfg.top_p)
    try:
        scorer = LogprobScorer(model, tokenizer, hw, cfg.batch_size) if method == "logprobs" else None
    except ValueError as exc:
        raise ConfigError(f"judge.method=logprobs is invalid for {name}: {exc}; use judge.method=text") from None
    return Judge(gen, {"kind": "local", "model": name, "path": str(path), "device": hw.device,
                       "precision": hw.precision, "method": method}, cfg.max_new_tokens, scorer)


# --------------------------------------------------------------------------- a run directory


def _key(row: dict[str, Any]) -> str:
    """An item's identity, as the report matches items (report/items.py): its id, else its question."""
    return str(row["id"]) if row.get("id") not in (None, "") else str(row.get("question"))


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    except (OSError, ValueError) as exc:
        raise MedsweepError(f"{path}: cannot read the predictions ({exc})") from None
    if not rows or not all(isinstance(r, dict) and {"question", "reference", "generated"} <= set(r) for r in rows):
        raise MedsweepError(f"{path}: not prediction rows (question, reference, generated)")
    return rows


def _scores(grades: list[Grade]) -> dict[str, float]:
    ok = [g for g in grades if g.status == "ok"]
    means = {f"judge_{c}": mean(float(getattr(g, c)) for g in ok) for c in CRITERIA} if ok else {}
    low = {"judge_low_mass": sum(g.low_mass(LOW_MASS) for g in grades)} if any(g.mass for g in grades) else {}
    return {**means, "judge_unparsed": sum(g.status == "unparsed" for g in grades), **low}


def _counts(grades: list[Grade]) -> dict[str, int]:
    low = {"low_mass": sum(g.low_mass(LOW_MASS) for g in grades)} if any(g.mass for g in grades) else {}
    return {"graded": sum(g.status == "ok" for g in grades), "unparsed": sum(g.status == "unparsed" for g in grades),
            "errors": sum(g.status == "error" for g in grades), **low}


def _pairwise(verdicts: list[tuple[Preference, Preference]]) -> dict[str, Any]:
    results = [outcome(a, b) for a, b in verdicts]
    counts = {name: results.count(o) for o, name in OUTCOMES.items()}
    decided = counts["wins"] + counts["losses"] + counts["ties"]
    read = [p.better for pair in verdicts for p in pair if p.status == "ok"]
    masses = [p.mass for pair in verdicts for p in pair if p.mass is not None]
    low = {"low_mass": sum(m < LOW_MASS for m in masses)} if masses else {}
    return {**counts, "win_rate": (counts["wins"] + counts["ties"] / 2) / decided if decided else None,
            "judge_picked_a": read.count("A") / len(read) if read else None, **low}  # position bias: 0.5 is none


def _without_judge(section: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (section or {}).items() if k not in metrics.JUDGE}


def _pref_row(p: Preference) -> dict[str, Any]:
    extra = {k: v for k, v in (("p_a", p.p_a), ("mass", p.mass)) if v is not None} | ({"raw": p.raw} if p.raw else {})
    return {"status": p.status, "better": p.better, "reason": p.reason, **extra}


def judge_run(run_dir: Path, rec: RunRecord, judge: Judge, pairwise: bool = True) -> Judged:
    """Grade the run's predictions (and its base model's, when it has them; then the pairwise comparison), write the
    prediction files back with each row's `judge` entry (atomically, one file at a time) and set the record's judge
    metrics and `judge`; the caller saves the record. A previous judge's entries are replaced."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    judge.failed = 0  # each run gives the judge its chance
    rows = _read(run_dir / PREDICTIONS)
    base_rows = _read(run_dir / BASELINE) if (run_dir / BASELINE).is_file() else []
    log.info("judge %s: grading %d answers%s", judge.identity["model"], len(rows),
             f" and the base model's {len(base_rows)}" if base_rows else "")
    grades, base_grades = judge.grade(rows), judge.grade(base_rows) if base_rows else []
    by_key = {_key(b): b for b in base_rows}
    pairs = [(r, by_key[_key(r)]) for r in rows if _key(r) in by_key] if pairwise else []
    verdicts = judge.compare(pairs) if pairs else []
    for row, grade in zip([*rows, *base_rows], [*grades, *base_grades], strict=True):
        row["judge"] = grade.as_row()
    for (row, _), (first, swapped) in zip(pairs, verdicts, strict=True):
        # ft_as_a: the fine-tuned answer shown as A, the base answer as B; ft_as_b: the other way round
        row["judge"]["pairwise"] = {"outcome": outcome(first, swapped), "ft_as_a": _pref_row(first),
                                    "ft_as_b": _pref_row(swapped)}
    pref = _pairwise(verdicts) if pairs else None

    found = _scores(grades)
    if pref is not None and pref["win_rate"] is not None:
        found["judge_pref_win_rate"] = pref["win_rate"]
    rec.metrics = {**_without_judge(rec.metrics), **found}
    if base_rows and rec.baseline is not None:
        rec.baseline = {**_without_judge(rec.baseline), **_scores(base_grades)}
    if rec.delta is not None and rec.baseline is not None:
        rec.delta = {**_without_judge(rec.delta), **{k: rec.metrics[k] - rec.baseline[k] for k in rec.metrics
                                                     if k in metrics.JUDGE and k in rec.baseline}}
    rec.per_example = {**_without_judge(rec.per_example),
                       **{f"judge_{c}": [getattr(g, c) for g in grades] for c in CRITERIA}}
    record.atomic_write_jsonl(run_dir / PREDICTIONS, rows)
    if base_rows:
        record.atomic_write_jsonl(run_dir / BASELINE, base_rows)
    decoding = {"temperature": getattr(judge.generator, "temperature", None),
                "top_p": getattr(judge.generator, "top_p", None), "max_new_tokens": judge.max_new_tokens} \
        if judge.scorer is None else {"scored_by": "next-token probabilities of the digits 1-5 / letters A, B",
                                      "low_mass_below": LOW_MASS}
    answers = {"fine_tuned": _counts(grades), **({"baseline": _counts(base_grades)} if base_rows else {})}
    judged = Judged(judge.identity, JUDGE_PROMPT_VERSION, decoding, record.now(), time.perf_counter() - t0, answers,
                    pref)
    rec.judge = asdict(judged)
    return judged


# --------------------------------------------------------------------------- medsweep-judge


def judge_trained_run(run: RunConfig, run_dir: Path, rec: RunRecord) -> None:
    """Judge the answers a run (run.py) or a run of a pack (packrun.py) has just written, with its judge.* settings.
    A judge that cannot be built or asked fails no trained run: the record says why, and `medsweep-judge <run dir>`
    judges it later (answers that failed one by one are counted, not raised)."""
    try:
        judge_run(run_dir, rec, build_judge(run.judge, run.model.cache_dir), run.judge.pairwise)
    except Exception as exc:  # noqa: BLE001 - out of memory, a model that cannot load ...: the trained run stands
        log.warning("judge=%s failed: %s (judge the run later: medsweep-judge %s)", run.judge.kind, exc, run_dir)
        rec.judge = {"kind": run.judge.kind, "error": f"{type(exc).__name__}: {exc}"}


def _run_dirs(paths: list[str]) -> list[Path]:
    """Run directories (with a record) among `paths` and their sub-directories (a sweep, results/runs)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / FILE).is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(d for d in p.iterdir() if (d / FILE).is_file())
        else:
            raise ConfigError(f"{p}: no such directory")
    if not found:
        raise ConfigError(f"no run directory (with {FILE}) in {' '.join(paths)}")
    return found


def config_of(overrides: list[str]) -> JudgeConfig:
    """judge=<kind> (default local) and judge.<key>=<value> overrides on conf/judge/<kind>.yaml, typed and checked."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    kinds = [o.partition("=")[2] for o in overrides if o.startswith("judge=")]
    kind = kinds[-1] if kinds else "local"
    if not (CONF_DIR / "judge" / f"{kind}.yaml").is_file() or kind == "none":
        raise ConfigError(f"judge={kind} is invalid: allowed local, openai")
    rest = [o for o in overrides if not o.startswith("judge=")]
    bad = next((o for o in rest if not o.startswith("judge.")), None)
    if bad:
        raise ConfigError(f"{bad!r} is invalid: expected run directories and judge=... / judge.<key>=... overrides")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(JudgeConfig), OmegaConf.load(CONF_DIR / "judge" / f"{kind}.yaml"),
                                 OmegaConf.from_dotlist([o.removeprefix("judge.") for o in rest]))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"judge.{getattr(exc, 'full_key', '')} is invalid: {str(exc).splitlines()[0]}") from None
    assert isinstance(cfg, JudgeConfig)
    cfg.check()
    return cfg


def _line(run_dir: Path, judged: Judged, rec: RunRecord) -> str:
    ft, m = judged.answers["fine_tuned"], rec.metrics or {}
    scores = ", ".join(f"{c} {m[f'judge_{c}']:.2f}" for c in CRITERIA if f"judge_{c}" in m) or "no scores"
    line = f"{run_dir}: {ft['graded']} graded, {ft['unparsed']} unparsed, {ft['errors']} errors; {scores}"
    p = judged.pairwise
    if p:
        rate = "n/a" if p["win_rate"] is None else f"{p['win_rate']:.2f}"
        line += f"; vs base: win rate {rate} ({p['wins']} wins, {p['losses']} losses, {p['ties']} ties)"
    return line


def main(argv: list[str] | None = None) -> None:
    """medsweep-judge RUN_OR_SWEEP_DIR... [judge=local|openai] [judge.<key>=<value> ...]: judge finished runs again
    (a bigger judge later, without retraining); each run's predictions and record are rewritten atomically."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(main.__doc__)
        sys.exit(0 if args else 2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = config_of([a for a in args if "=" in a])
        runs = _run_dirs([a for a in args if "=" not in a])
        judge = build_judge(cfg)
        for run_dir in runs:
            rec = RunRecord.read(run_dir)
            if not rec.is_complete:
                print(f"{run_dir}: skipped ({rec.status}, not complete)")
                continue
            with RunLock(run_dir, wait_s=0):
                judged = judge_run(run_dir, rec, judge, cfg.pairwise)
                rec.save(run_dir)
            print(_line(run_dir, judged, rec))
    except (MedsweepError, OSError, ValueError) as exc:
        print(f"medsweep-judge: error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    main()
