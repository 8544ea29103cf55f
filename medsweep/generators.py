"""medsweep-synth's generators: one `chat()` interface over a local transformers chat model (batched generation,
medsweep/generation.py) and over any OpenAI-compatible endpoint (OpenAI, Ollama, vLLM ...), built from the config's
`generator` group."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

import torch

from medsweep import record
from medsweep.errors import ConfigError, MedsweepError
from medsweep.generation import decoding, generate_batched
from medsweep.hardware import Hardware, pick_device, usable_cores
from medsweep.prompts import chat_ids

Messages = list[dict[str, str]]


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

    def chat(self, conversations: list[Messages], max_new_tokens: int) -> list[str]:
        prompts = [chat_ids(self.tokenizer, m) for m in conversations]
        options = {**decoding(self.temperature > 0, self.temperature, self.top_p),
                   "repetition_penalty": self.repetition_penalty}
        self.model.eval()  # dropout off; not switched back: a generator's model is only ever used to generate
        # transformers' generate() is no_grad itself; this covers any other model object handed in
        with torch.no_grad():
            done = generate_batched(self.model, self.tokenizer, prompts, self.hw, self.batch_size, max_new_tokens,
                                    options)
        return [d.text for d in done]  # not stripped: clean_questions / clean_answer normalise the whitespace


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


def _device(gen_cfg: Any, setting: str = "generator.device") -> Hardware:
    """The generator's own device (generator.device), not a run profile's: one process, two threads at most, fp32 on
    the CPU even where hardware.resolve would pick bf16, and on CUDA bf16 wherever torch.cuda.is_bf16_supported()
    says so (kept as medsweep-synth has always chosen them)."""
    device = pick_device(gen_cfg.device, setting)
    precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device == "cuda" else "fp32"
    return Hardware(device=device, precision=precision, threads=min(2, usable_cores()))


def build_generator(cfg: Any) -> Generator:
    """The generator the config names: local (the `model` config or generator.model_dir) or openai."""
    g = cfg.generator
    if g.backend == "openai":
        return OpenAIGenerator(g.base_url, g.model, g.key_env, g.temperature, g.top_p, g.timeout_s, g.retries)
    if g.backend != "local":
        raise ConfigError(f"generator.backend={g.backend!r} is invalid: allowed local, openai")
    # only the local backend needs the model loading code (and export's GGUF writer): an endpoint run skips them
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
