"""A merged Llama-architecture transformers model as a GGUF file, written with gguf-py.

gguf 0.19 ships no HF->GGUF converter (only dump/metadata scripts) and llama.cpp's ``convert_hf_to_gguf.py`` is
not on PyPI as a package, so `write_gguf` follows that script's conventions for ``LlamaModel`` itself:

* tensor names from gguf's ``TensorNameMap`` for ``MODEL_ARCH.LLAMA``; a tied ``lm_head.weight`` is left out
  (llama.cpp reuses ``token_embd``), ``rotary_emb.inv_freq`` buffers are skipped;
* q/k projection rows permuted into llama.cpp's interleaved rotary order (`_permute`, its ``permute``);
* norms and 1-D tensors f32; 2-D tensors f16, f32 or q8_0 (q8_0 only for rows that are a multiple of the
  32-value block, others f16, as llama.cpp does);
* hyperparameters (context, embedding, block count, heads, KV heads, rope base (plain RoPE only), RMS eps)
  under the ``llama.*`` keys, and a byte-level BPE vocabulary (SmolLM2, GPT-2, Llama 3) as ``tokenizer.ggml.*``:
  model ``gpt2``, llama.cpp's pre-tokenizer name, tokens / token types / merges, bos/eos/unk/pad ids, the chat
  template.

transformers loads the result back with ``from_pretrained(dir, gguf_file=..., quantization_config=
GgufConfig(dequantize=True))``. The file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsweep.errors import ConfigError, ModelError

GGUF_TYPES = ("f16", "q8_0", "f32")


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for q/k projections (rotary pairs interleaved) of `n_head` heads (the query heads for
    q, the key/value heads for k): convert_hf_to_gguf.LlamaModel.permute; transformers undoes it when it loads a
    llama GGUF."""
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
    # LlamaConfig always sets these (None in a config.json becomes the heads / hidden_size // heads)
    n_kv, head_dim = config.num_key_value_heads, config.head_dim
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
    writer.add_add_bos_token(bool(tokenizer.add_bos_token))
    writer.add_add_space_prefix(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    # a tied head is left out (llama.cpp reuses token_embd when output.weight is absent), and so are the rotary
    # buffers older transformers kept in the state dict
    written = {hf_name: tensor for hf_name, tensor in model.state_dict().items()
               if not (hf_name == "lm_head.weight" and config.tie_word_embeddings)
               and not hf_name.endswith("rotary_emb.inv_freq")}
    counts: dict[str, int] = {}
    for hf_name, tensor in written.items():
        base, suffix = hf_name.rsplit(".", 1)
        mapped = name_map.get_name(base)
        if mapped is None:
            raise ModelError(f"no GGUF name for tensor {hf_name!r} of the Llama architecture")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if base.endswith("self_attn.q_proj"):
            data = _permute(data, n_head)
        elif base.endswith("self_attn.k_proj"):
            data = _permute(data, n_kv)
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
