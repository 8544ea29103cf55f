"""The `judge` config group's schema (conf/judge/*.yaml): a judge model grading each answer after evaluation
(medsweep/judge.py); kept apart from medsweep/config.py, which holds it as `RunConfig.judge`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from medsweep.rules import _one_of, require


@dataclass
class JudgeConfig:
    """A judge model grading each answer after evaluation (medsweep/judge.py); medsweep-judge reads it too."""

    kind: str = "none"  # none | local (a transformers chat model) | openai (any OpenAI-compatible endpoint)
    model: str | None = None  # local: model dir, run dir or hub id (null: the embedded SmolLM2); openai: model name
    base_url: str | None = None  # openai: the endpoint's /v1 URL (vLLM, Ollama, a hosted API)
    key_env: str | None = "OPENAI_API_KEY"  # NAME of the variable holding the key, read at call time (never the key)
    device: str = "auto"  # local: cpu | cuda | auto
    precision: str = "auto"  # local: fp32 | bf16 | fp16 (CUDA) | auto: bf16 where native (GPU, AMX CPU)
    batch_size: int = 8  # local: prompts per generate() call
    max_new_tokens: int = 128  # the judge's reply budget
    temperature: float = 0.0  # 0: greedy (local) / temperature 0 (openai)
    top_p: float = 1.0  # nucleus sampling when temperature > 0
    timeout_s: float = 120.0  # openai: seconds per request
    retries: int = 2  # openai: retries on connection errors, 429 and 5xx
    pairwise: bool = True  # with eval.baseline: fine-tuned vs base answer, asked in both orders
    method: str = "auto"  # logprobs (next-token scores) | text (a parsed reply) | auto: logprobs local, text openai

    def check(self) -> None:
        _one_of("judge.kind", self.kind, ["none", "local", "openai"])
        require(self.kind != "openai" or bool(self.model), "judge.model", self.model, "required with judge=openai")
        _one_of("judge.method", self.method, ["auto", "logprobs", "text"])
        _one_of("judge.precision", self.precision, ["auto", "fp32", "bf16", "fp16"])
        require(self.kind != "openai" or self.method != "logprobs", "judge.method", self.method, "judge=openai "
                "reads the reply's text: use auto or text")
        require(self.kind != "openai" or re.match(r"^https?://", str(self.base_url)) is not None, "judge.base_url",
                 self.base_url, "expected http(s)://host[:port]/v1 with judge=openai")
        require(self.kind != "local" or not str(self.model or "").startswith(("/", ".", "~"))
                or Path(str(self.model)).expanduser().is_dir(), "judge.model", self.model, "no such directory")
        require(self.batch_size > 0 and self.max_new_tokens > 0, "judge.batch_size/max_new_tokens",
                 (self.batch_size, self.max_new_tokens), "must be > 0")
        require(self.temperature >= 0 and 0 < self.top_p <= 1, "judge.temperature/top_p",
                 (self.temperature, self.top_p), "temperature >= 0 and top_p in (0, 1]")
