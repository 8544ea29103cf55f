"""`medsweep-export <run dir>`: merge a run's LoRA adapter into its base model and write what other tools load.

    medsweep-export results/runs/<run>                      # merged safetensors + f16/q8_0 GGUF + Ollama Modelfile
    medsweep-export results/runs/<run> --gguf f16 --out /tmp/smol-med
    medsweep-export results/runs/<run> --gguf none          # merged safetensors only
    HF_TOKEN=... medsweep-export results/runs/<run> --push-to-hub me/smol-med [--push adapter]

Writes under --out (default: <run dir>/export):

* ``merged/``: the adapter merged into the base (peft ``merge_and_unload``), safetensors, ``config.json``,
  ``generation_config.json``, the tokenizer and its chat template (``chat_template.jinja``).
  ``AutoModelForCausalLM.from_pretrained(out/"merged")`` loads it.
* ``model-f16.gguf``, ``model-q8_0.gguf``: written here with gguf-py (gguf 0.19 ships no HF->GGUF converter,
  only dump/metadata scripts; llama.cpp's ``convert_hf_to_gguf.py`` is not on PyPI as a package). Llama
  architecture with a byte-level BPE vocabulary (SmolLM2, Llama 3 style): tensor names from gguf's
  ``TensorNameMap`` for ``MODEL_ARCH.LLAMA``, q/k rows permuted the way llama.cpp expects, norms kept f32,
  q8_0 for 2-D tensors whose rows are a multiple of 32 (others f16, as llama.cpp does), tokenizer tokens /
  types / merges / special ids / chat template in the metadata. transformers loads them back with
  ``from_pretrained(out, gguf_file="model-f16.gguf", quantization_config=GgufConfig(dequantize=True))``.
* ``Modelfile``: Ollama (``ollama create <name> -f Modelfile``): FROM the q8_0 GGUF (else the first written),
  the model family's chat template (ChatML for SmolLM2; Llama 3 headers), its stop tokens, and SYSTEM set to
  the instruction the run was trained with.
* ``export.json``: what was written (sizes, tensor types), the source run and adapter.

The token for ``--push-to-hub`` comes from the environment only (``HF_TOKEN`` or ``HUGGING_FACE_HUB_TOKEN``);
it is never written anywhere. Arguments are validated before any work starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsweep import models, record
from medsweep.errors import ConfigError, MedsweepError, ModelError
from medsweep.hardware import Hardware

log = logging.getLogger("medsweep.export")

GGUF_TYPES = ("f16", "q8_0", "f32")
HF_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
CPU = Hardware(device="cpu", precision="fp32", threads=max(1, min(2, os.cpu_count() or 1)))


# --------------------------------------------------------------------------- loading a run


def run_config(run_dir: str | os.PathLike):
    """The resolved config a run recorded (``<run dir>/config.yaml``) as a DictConfig."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a medsweep run directory: no config.yaml in it")
    return OmegaConf.load(path)


def _adapter_dir(run_dir: Path) -> Path:
    if not (run_dir / "adapter" / "adapter_config.json").is_file():
        raise ConfigError(f"{run_dir} has no adapter (adapter/adapter_config.json): the run did not finish training")
    return run_dir / "adapter"


def _adapter_tokenizer(adapter_dir: Path, model_cfg: Any):
    """The tokenizer saved with the adapter (what the run trained with), else the model config's."""
    from transformers import AutoTokenizer

    if (adapter_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = model_cfg.pad_token or tokenizer.eos_token
        return tokenizer
    return models.load_tokenizer(model_cfg)


def load_adapted(run_dir: str | os.PathLike, hw: Hardware = CPU):
    """(PeftModel with the run's adapter on its base model, tokenizer, run config). The base is loaded in full
    precision even when the run trained QLoRA: merging into 4-bit weights would lose the update."""
    from peft import PeftModel

    cfg = run_config(run_dir)
    adapter_dir = _adapter_dir(Path(run_dir))
    cfg.model.load_in_4bit = False
    tokenizer = _adapter_tokenizer(adapter_dir, cfg.model)
    base, _ = models.load_model(cfg.model, tokenizer, hw, seed=cfg.train.seed)
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    return model, tokenizer, cfg


def merge(run_dir: str | os.PathLike, hw: Hardware = CPU):
    """(merged plain transformers model, tokenizer, run config)."""
    model, tokenizer, cfg = load_adapted(run_dir, hw)
    merged = model.merge_and_unload()
    merged.eval()
    return merged, tokenizer, cfg


def load_generator_model(spec: str | os.PathLike, hw: Hardware = CPU):
    """A model to generate with from a path: a run directory (base + adapter, merged in memory) or a directory
    that from_pretrained loads (e.g. ``<run>/export/merged``). Returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec)
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        model, tokenizer, _ = merge(path, hw)
        return model.to(hw.device), tokenizer
    if not (path / "config.json").is_file():
        raise ConfigError(f"generator.model_dir={str(spec)!r} is invalid: neither a run directory (config.yaml + "
                          f"adapter/) nor a model directory (config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Any: transformers declares PreTrainedModel.to with @wraps(nn.Module.to), which mypy types as unbound
    loaded: Any = AutoModelForCausalLM.from_pretrained(path, dtype=hw.weight_dtype)
    model = loaded.to(hw.device)
    model.eval()
    return model, tokenizer


def save_merged(model, tokenizer, out_dir: Path) -> Path:
    """Safetensors + config + tokenizer + chat template, loadable with from_pretrained."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if tokenizer.chat_template and not (out_dir / "chat_template.jinja").is_file():
        (out_dir / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
    return out_dir


# --------------------------------------------------------------------------- GGUF


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's row order for q/k projections (rotary pairs interleaved): convert_hf_to_gguf.LlamaModel.permute;
    transformers undoes it when it loads a llama GGUF."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's pre-tokenizer name for this byte-level BPE vocabulary (tokenizer.ggml.pre)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    vocab = tokenizer.get_vocab()
    parts = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = [p.get("type") for p in parts]
    if vocab.get("<|im_start|>") == 1 and vocab.get("<|endoftext|>") == 0 and len(vocab) == 49152:
        return "smollm"  # the SmolLM/SmolLM2 vocabulary (what the embedded GGUF states)
    if kinds == ["Digits", "ByteLevel"]:
        return "smollm"
    if "Split" in kinds and "<|begin_of_text|>" in vocab:
        return "llama-bpe"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    raise ModelError(f"cannot tell llama.cpp's pre-tokenizer for this vocabulary (pre_tokenizer {kinds}); "
                     "GGUF export supports SmolLM2 / GPT-2 / Llama 3 byte-level BPE tokenizers")


def _vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, llama.cpp token types, merges "a b") of a byte-level BPE tokenizer."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ModelError(f"GGUF export needs a byte-level BPE tokenizer; this one is {model.get('type')}")
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    if max(by_id) >= vocab_size:
        raise ModelError(f"the tokenizer has ids up to {max(by_id)} but the model's vocabulary is {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, [int(t) for t in types], merges


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if params.get("rope_type", "default") != "default":
        raise ModelError(f"GGUF export supports plain RoPE only; this model uses rope_type={params['rope_type']!r}")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ModelError("the model config has no rope_theta")
    return float(theta)


def _tensor_type(name: str, data: np.ndarray, qtype: str):
    """The GGML type a tensor is stored as: norms/1-D f32; 2-D f16/f32/q8_0 (q8_0 needs rows of 32k values)."""
    import gguf

    T = gguf.GGMLQuantizationType
    if data.ndim == 1 or name.endswith("_norm.weight"):
        return T.F32
    if qtype == "f32":
        return T.F32
    if qtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0] == 0:
        return T.Q8_0
    return T.F16


def write_gguf(model, tokenizer, path: Path, qtype: str = "f16", name: str = "model") -> dict[str, Any]:
    """Write a Llama-architecture model (a merged transformers model) as GGUF; returns a summary."""
    import gguf

    if qtype not in GGUF_TYPES:
        raise ConfigError(f"--gguf {qtype!r} is invalid: allowed {', '.join(GGUF_TYPES)}")
    config = model.config
    if config.model_type != "llama":
        raise ModelError(f"GGUF export writes the Llama architecture; {config.model_type!r} is not supported "
                         "(the merged safetensors are still written)")
    arch = gguf.MODEL_ARCH.LLAMA
    n_layers, n_head = config.num_hidden_layers, config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    tokens, types, merges = _vocab(tokenizer, config.vocab_size)
    name_map = gguf.get_tensor_name_map(arch, n_layers)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "f32": gguf.LlamaFileType.ALL_F32}[qtype]

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(int(file_type))
    if qtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * n_head != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, token_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                          ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if token_id is not None:
            getattr(writer, f"add_{key}_token_id")(int(token_id))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_space_prefix(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    tied = bool(getattr(config, "tie_word_embeddings", False))
    counts: dict[str, int] = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        base, suffix = hf_name.rsplit(".", 1)
        mapped = name_map.get_name(base)
        if mapped is None:
            raise ModelError(f"no GGUF name for tensor {hf_name!r} of the Llama architecture")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if base.endswith("self_attn.q_proj"):
            data = _permute(data, n_head, n_head)
        elif base.endswith("self_attn.k_proj"):
            data = _permute(data, n_head, n_kv)
        gguf_name = f"{mapped}.{suffix}"
        dtype = _tensor_type(gguf_name, data, qtype)
        if dtype == gguf.GGMLQuantizationType.Q8_0:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, dtype), raw_dtype=dtype)
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, dtype))
        counts[dtype.name] = counts.get(dtype.name, 0) + 1
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return {"path": str(path), "type": qtype, "bytes": path.stat().st_size, "tensor_types": counts,
            "tensors": sum(counts.values())}


# --------------------------------------------------------------------------- Ollama

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


# --------------------------------------------------------------------------- Hub


def hub_token() -> str:
    for name in HF_TOKEN_ENV:
        if os.environ.get(name):
            return os.environ[name]
    raise ConfigError(f"--push-to-hub needs a token in the environment ({' or '.join(HF_TOKEN_ENV)}); "
                      "it is never read from arguments or files")


def validate_push(repo: str | None, what: str) -> None:
    """Check --push-to-hub arguments before any work: repo id form, token present, not offline."""
    if repo is None:
        return
    if not REPO_ID.match(repo):
        raise ConfigError(f"--push-to-hub {repo!r} is invalid: expected a Hub repo id like owner/name")
    if what not in ("merged", "adapter"):
        raise ConfigError(f"--push {what!r} is invalid: allowed merged, adapter")
    hub_token()
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise ConfigError("--push-to-hub needs the network but HF_HUB_OFFLINE is set; unset it to push")


def push_to_hub(folder: Path, repo: str, private: bool = True) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=hub_token())
    api.create_repo(repo, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message="medsweep-export")
    return str(getattr(info, "commit_url", info))


# --------------------------------------------------------------------------- CLI


def parse_gguf_types(value: str) -> list[str]:
    if value.strip().lower() in ("", "none"):
        return []
    types = [t.strip().lower() for t in value.split(",") if t.strip()]
    bad = [t for t in types if t not in GGUF_TYPES]
    if bad:
        raise ConfigError(f"--gguf {value!r} is invalid: {', '.join(bad)} not in {', '.join(GGUF_TYPES)} (or none)")
    return list(dict.fromkeys(types))


def export(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, gguf_types=("f16", "q8_0"),
           push_repo: str | None = None, push_what: str = "merged", private: bool = True) -> dict[str, Any]:
    """Merge, save, write GGUF files and the Modelfile (and push); returns the summary written to export.json."""
    run_dir = Path(run_dir)
    validate_push(push_repo, push_what)
    run_config(run_dir)
    adapter_dir = _adapter_dir(run_dir)
    out_dir = Path(out) if out else run_dir / "export"
    started = time.time()
    merged, tokenizer, cfg = merge(run_dir)
    merged_dir = save_merged(merged, tokenizer, out_dir / "merged")
    summary: dict[str, Any] = {
        "run_dir": str(run_dir.resolve()), "adapter": str(adapter_dir.resolve()), "model": cfg.model.name,
        "merged": str(merged_dir), "gguf": [], "modelfile": None, "pushed": None, "exported_at": record.now(),
    }
    name = f"{cfg.model.name}-{run_dir.name}"
    for qtype in gguf_types:
        summary["gguf"].append(write_gguf(merged, tokenizer, out_dir / f"model-{qtype}.gguf", qtype, name=name))
    if summary["gguf"]:
        ggufs = {g["type"]: Path(g["path"]).name for g in summary["gguf"]}
        chosen = ggufs.get("q8_0") or next(iter(ggufs.values()))
        summary["modelfile"] = str(write_modelfile(out_dir / "Modelfile", chosen, tokenizer.chat_template,
                                                   system=cfg.data.instruction))
    if push_repo:
        folder = merged_dir if push_what == "merged" else adapter_dir
        summary["pushed"] = {"repo": push_repo, "what": push_what, "commit": push_to_hub(folder, push_repo, private)}
    summary["seconds"] = time.time() - started
    record.atomic_write_json(out_dir / "export.json", summary)
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medsweep-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a medsweep run directory (config.yaml + adapter/)")
    p.add_argument("--out", help="output folder (default: <run dir>/export)")
    p.add_argument("--gguf", default="f16,q8_0", help="comma-separated GGUF types: f16, q8_0, f32, or none "
                                                      "(default: f16,q8_0)")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload to this Hub repo (token from HF_TOKEN)")
    p.add_argument("--push", choices=["merged", "adapter"], default="merged",
                   help="what --push-to-hub uploads (default: merged)")
    p.add_argument("--public", action="store_true", help="create the Hub repo public (default: private)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="medsweep-export: %(message)s")
    for noisy in ("transformers", "peft", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        types = parse_gguf_types(args.gguf)
        validate_push(args.push_to_hub, args.push)
        if not Path(args.run_dir).is_dir():
            raise ConfigError(f"{args.run_dir}: no such run directory")
        summary = export(args.run_dir, args.out, types, args.push_to_hub, args.push, private=not args.public)
    except MedsweepError as exc:
        print(f"medsweep-export: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"merged model: {summary['merged']}")
    for g in summary["gguf"]:
        print(f"gguf {g['type']}: {g['path']} ({g['bytes'] / 2**20:.1f} MiB)")
    if summary["modelfile"]:
        print(f"Ollama: ollama create <name> -f {summary['modelfile']}")
    if summary["pushed"]:
        print(f"pushed {summary['pushed']['what']} to {summary['pushed']['repo']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
