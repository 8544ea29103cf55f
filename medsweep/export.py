"""`medsweep-export <run dir>`: merge a run's LoRA adapter into its base model and write what other tools load.

    medsweep-export results/runs/<run>                      # merged safetensors + f16/q8_0 GGUF + Ollama Modelfile
    medsweep-export results/runs/<run> --gguf f16 --out /tmp/smol-med
    medsweep-export results/runs/<run> --gguf none          # merged safetensors only
    HF_TOKEN=... medsweep-export results/runs/<run> --push-to-hub me/smol-med [--push adapter]

Writes under --out (default: <run dir>/export):

* ``merged/``: the adapter merged into the base (peft ``merge_and_unload``), safetensors, ``config.json``,
  ``generation_config.json``, the tokenizer and its chat template (``chat_template.jinja``).
  ``AutoModelForCausalLM.from_pretrained(out/"merged")`` loads it.
* ``model-f16.gguf``, ``model-q8_0.gguf``: written with gguf-py by `medsweep.gguf_writer` (llama.cpp's
  ``convert_hf_to_gguf.py`` conventions; Llama architecture with a byte-level BPE vocabulary, SmolLM2 / Llama 3
  style): q/k rows permuted the way llama.cpp expects, norms kept f32, q8_0 for 2-D tensors whose rows are a
  multiple of 32 (others f16), tokenizer tokens / types / merges / special ids / chat template in the metadata.
  transformers loads them back with
  ``from_pretrained(out, gguf_file="model-f16.gguf", quantization_config=GgufConfig(dequantize=True))``.
* ``Modelfile``: Ollama (``ollama create <name> -f Modelfile``, written by `medsweep.ollama`): FROM the q8_0 GGUF
  (else the first written), the model family's chat template (ChatML for SmolLM2; Llama 3 headers), its stop
  tokens, and SYSTEM set to the instruction the run was trained with.
* ``export.json``: what was written (sizes, tensor types), the source run and adapter.

The token for ``--push-to-hub`` comes from the environment only (``HF_TOKEN`` or ``HUGGING_FACE_HUB_TOKEN``);
it is never written anywhere. Arguments are validated before any work starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsweep import models, record
from medsweep.errors import ConfigError, MedsweepError
from medsweep.gguf_writer import GGUF_TYPES, write_gguf
from medsweep.hardware import Hardware, usable_cores
from medsweep.ollama import write_modelfile
from medsweep.prompts import PromptStyle

if TYPE_CHECKING:
    from medsweep.config import ModelConfig

log = logging.getLogger("medsweep.export")

HF_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
CPU = Hardware(device="cpu", precision="fp32", threads=min(2, usable_cores()))


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


def _adapter_tokenizer(adapter_dir: Path, model_cfg: ModelConfig):
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
    """Safetensors + config + tokenizer + chat template, loadable with from_pretrained (transformers 5 creates the
    folder, writes safetensors only and the chat template as chat_template.jinja)."""
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


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
                                                   system=PromptStyle.of(cfg).instruction))
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
