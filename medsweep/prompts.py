"""Prompt formatting: the paper's instruction / input / output structure, rendered through the model's chat
template when it has one (system = instruction, user = input, assistant = output), else in Alpaca form.
Tokenization masks the prompt so the loss is on the answer tokens (and the end-of-turn token) only: one record
(`tokenize_example`) or a whole training set in two batched calls of the Rust tokenizer (`tokenize`), both through
the one rule of `masked_example`; `collator` pads the batches.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from medsweep.config import RunConfig

IGNORE_INDEX = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "labels")
ALPACA = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


@dataclass(frozen=True)
class PromptStyle:
    """The prompt settings, read from the config in one place (`of`): the task's instruction, which the data group
    sets (PubMedQA asks for a decision, MeDAL for an expansion), in the architecture's format, which the model
    group sets (its chat template or Alpaca, with or without a system turn). Training, evaluation, the
    tokenized-set cache and the Ollama export take one of these."""

    instruction: str
    format: str = "chat"  # chat: the tokenizer's chat template | alpaca: ### Instruction / Input / Response
    system_prompt: bool = True  # the instruction as a system turn (else it opens the user turn: Gemma 1.1)

    @classmethod
    def of(cls, cfg: RunConfig | DictConfig) -> PromptStyle:
        return cls(str(cfg.data.instruction), str(cfg.model.prompt_format), bool(cfg.model.system_prompt))


def user_input(record: dict[str, Any]) -> str:
    """The input part: the question, preceded by its context when the dataset has one (PubMedQA) and the
    question does not already quote it (MeDAL)."""
    context = (record.get("context") or "").strip()
    question = record["question"].strip()
    return f"Context: {context}\n\nQuestion: {question}" if context and context not in question else question


def _messages(instruction: str, text: str, system_prompt: bool) -> list[dict[str, str]]:
    if system_prompt:
        return [{"role": "system", "content": instruction}, {"role": "user", "content": text}]
    return [{"role": "user", "content": f"{instruction}\n\n{text}"}]  # templates without a system turn (Gemma)


def render(tokenizer, record: dict[str, Any], instruction: str, prompt_format: str, system_prompt: bool = True,
           with_answer: bool = True) -> tuple[str, str]:
    """(prompt, completion) strings. The prompt ends where the model starts answering; the completion is
    the reference answer plus the end-of-answer marker (chat end-of-turn or eos)."""
    text = user_input(record)
    answer = record["answer"].strip() if with_answer else ""
    if prompt_format == "chat" and tokenizer.chat_template:
        messages = _messages(instruction, text, system_prompt)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not with_answer:
            return prompt, ""
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": answer}], tokenize=False
        )
        if not full.startswith(prompt):  # templates that rewrite earlier turns: fall back to the plain join
            return prompt, answer + (tokenizer.eos_token or "")
        return prompt, full[len(prompt):]
    prompt = ALPACA.format(instruction=instruction, input=text)
    return prompt, (answer + (tokenizer.eos_token or "")) if with_answer else ""


_SLOTS = ("\u27e6medsweep:user\u27e7", "\u27e6medsweep:answer\u27e7")  # stand-ins no text contains
_CHECKED = 4  # records rendered both ways before the filled template is trusted for the rest


def render_many(tokenizer, records: list[dict[str, Any]], instruction: str, prompt_format: str,
                system_prompt: bool = True) -> list[tuple[str, str]]:
    """`render` for many records, far faster: the chat template (Jinja, slow per call, twice per record) is
    rendered once with stand-ins for the question and the answer, which are then filled in per record. Used
    only when the template treats the content as opaque text: the first records are rendered both ways and
    must agree, or every record goes through `render`."""
    one = [render(tokenizer, r, instruction, prompt_format, system_prompt) for r in records[:_CHECKED]]
    skeleton = _skeleton(tokenizer, instruction, prompt_format, system_prompt)
    if skeleton is None or any(_fill(skeleton, r) != pair for r, pair in zip(records, one, strict=False)):
        return one + [render(tokenizer, r, instruction, prompt_format, system_prompt) for r in records[_CHECKED:]]
    return one + [_fill(skeleton, r) for r in records[_CHECKED:]]


def _skeleton(tokenizer, instruction: str, prompt_format: str, system_prompt: bool) -> tuple[str, str] | None:
    user, answer = _SLOTS
    prompt, completion = render(tokenizer, {"question": user, "answer": answer}, instruction, prompt_format,
                                system_prompt)
    if prompt.count(user) != 1 or completion.count(answer) != 1 or user in completion or answer in prompt:
        return None
    return prompt, completion


def _fill(skeleton: tuple[str, str], record: dict[str, Any]) -> tuple[str, str]:
    prompt, completion = skeleton
    return prompt.replace(_SLOTS[0], user_input(record)), completion.replace(_SLOTS[1], record["answer"].strip())


def tokenize_example(tokenizer, record: dict[str, Any], instruction: str, prompt_format: str, max_seq_length: int,
                     system_prompt: bool = True) -> dict[str, Any] | None:
    """input_ids / attention_mask / labels with the prompt masked; None if the prompt alone does not fit.
    Answers that do not fit are truncated (flagged with `truncated`)."""
    prompt, completion = render(tokenizer, record, instruction, prompt_format, system_prompt)
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer, prompt) else []
    prompt_ids = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return masked_example(prompt_ids, answer_ids, max_seq_length)


def masked_example(prompt_ids: list[int], answer_ids: list[int], max_seq_length: int) -> dict[str, Any] | None:
    """The truncation rule: prompt + answer with the prompt masked in the labels; None if the prompt alone leaves
    no room for one answer token; an answer that does not fit is cut to the room left (`truncated`)."""
    room = max_seq_length - len(prompt_ids)
    if room < 1:
        return None
    truncated = len(answer_ids) > room
    answer_ids = answer_ids[:room]
    ids = prompt_ids + answer_ids
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        "length": len(ids),
        "truncated": truncated,
    }


def tokenize(records: list[dict[str, Any]], tokenizer, style: PromptStyle, max_seq_length: int):
    """HF Dataset of answer-masked examples plus counts of dropped (prompt too long) / truncated ones.
    The same examples as tokenize_example, record by record, but encoded in two batched calls of the
    Rust tokenizer (prompts, completions): several times faster, which is seconds of every job's start-up."""
    from datasets import Dataset

    texts = render_many(tokenizer, records, style.instruction, style.format, style.system_prompt)
    prompts_ids = _encode(tokenizer, [prompt for prompt, _ in texts])
    answers_ids = _encode(tokenizer, [completion for _, completion in texts])
    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "length": []}
    dropped = truncated = answer_tokens = 0
    for (prompt, _), prompt_ids, answer_ids in zip(texts, prompts_ids, answers_ids, strict=True):
        if adds_bos(tokenizer, prompt):  # as tokenize_example (tests/test_speed_paths.py checks they agree)
            prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
        example = masked_example(prompt_ids, answer_ids, max_seq_length)
        if example is None:
            dropped += 1
            continue
        truncated += example["truncated"]
        for column in columns:
            columns[column].append(example[column])
        answer_tokens += example["length"] - len(prompt_ids)
    stats = {"dropped_prompt_too_long": dropped, "answers_truncated": truncated,
             "examples": len(columns["length"]), "answer_tokens": answer_tokens, "tokens": sum(columns["length"])}
    return Dataset.from_dict(columns), stats


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens, as `tokenizer(text, add_special_tokens=False)` gives
    them: one batched call of the Rust backend (without the offsets transformers would compute) when the
    tokenizer has one."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        with _tokenizers_parallelism():
            return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


@contextlib.contextmanager
def _tokenizers_parallelism():
    """Let the Rust tokenizer use every core for this one batched call (faster even on 2 cores), then set
    TOKENIZERS_PARALLELISM back (hardware.apply_threads sets it false): processes forked later (DataLoader
    workers) see it false and never touch the parent's thread pool."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def collator(tokenizer) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Dynamic padding to the longest example of the batch (labels padded with -100)."""
    from transformers import DataCollatorForSeq2Seq

    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)

    def collate(features):  # drop the `length` column used only by the length-grouped sampler
        return pad([{k: f[k] for k in MODEL_INPUTS} for f in features])

    return collate


def prompt_ids(tokenizer, record: dict[str, Any], instruction: str, prompt_format: str,
               system_prompt: bool = True) -> list[int]:
    """Token ids of the generation prompt (no answer)."""
    prompt, _ = render(tokenizer, record, instruction, prompt_format, system_prompt, with_answer=False)
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer, prompt) else []
    return bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def encodes_bos(tokenizer) -> bool:
    """Whether the tokenizer starts its encodings with BOS (Llama 2/3, Mistral, Gemma do; SmolLM2 and GPT-2
    do not). Asked of its own encoding, since Llama 3 adds BOS through its post-processor, not a flag."""
    bos_id = tokenizer.bos_token_id
    return bos_id is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos_id]


def adds_bos(tokenizer, text: str) -> bool:
    """Whether to prepend BOS to the rendered text: the tokenizer would, and the text does not already start
    with it (chat templates that write it, Gemma's)."""
    bos = tokenizer.bos_token
    return bool(bos) and not text.startswith(bos) and encodes_bos(tokenizer)


def chat_ids(tokenizer, messages: list[dict[str, str]], start: str = "") -> list[int]:
    """The token ids of a chat prompt with the assistant's turn opened by the chat template (and `start` already
    written in it: the judge's `Correct (1-5): `): BOS exactly once, whether the template writes it (Gemma) or
    the tokenizer would add it (Llama, Mistral), none where neither does (SmolLM2, GPT-2)."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + start
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer, prompt) else []
    return bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
