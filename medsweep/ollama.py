"""An Ollama Modelfile for an exported GGUF: ``ollama create <name> -f Modelfile``.

FROM the GGUF next to it (a relative ``./`` path), TEMPLATE in Ollama's Go-template syntax for the tokenizer's
chat template family (ChatML for SmolLM2, Llama 3 headers), a SYSTEM message (the instruction a run was trained
with) and one ``PARAMETER stop`` per stop token of that family. Values are quoted with triple quotes.
"""

from __future__ import annotations

from pathlib import Path

from medsweep import record
from medsweep.errors import ModelError

CHATML_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)
LLAMA3_TEMPLATE = (
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"
)


def ollama_template(chat_template: str | None) -> tuple[str, list[str]]:
    """(Ollama TEMPLATE, stop tokens) for the tokenizer's chat template family."""
    chat_template = chat_template or ""
    if "<|im_start|>" in chat_template:
        return CHATML_TEMPLATE, ["<|im_start|>", "<|im_end|>"]
    if "<|start_header_id|>" in chat_template:
        return LLAMA3_TEMPLATE, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    raise ModelError("no Ollama template for this chat template (ChatML and Llama 3 are supported)")


def _quote(text: str) -> str:
    if '"""' in text:
        raise ModelError('a Modelfile value cannot contain """')
    return f'"""{text}"""'


def write_modelfile(path: Path, gguf_file: str, chat_template: str | None, system: str | None = None) -> Path:
    """An Ollama Modelfile next to the GGUF (FROM is relative to the Modelfile)."""
    template, stops = ollama_template(chat_template)
    lines = [f"# Ollama: ollama create <name> -f {path.name}   (written by medsweep-export)",
             f"FROM ./{gguf_file}", f"TEMPLATE {_quote(template)}"]
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    record.atomic_write_text(path, "\n".join(lines) + "\n")
    return path
