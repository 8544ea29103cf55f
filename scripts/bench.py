#!/usr/bin/env python
"""Speed benchmark: medsweep's default recipe side by side with the naive notebook recipe, and against what
this machine can do (its measured matmul peak).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/bench.py                    # SmolLM2-135M, MedQuAD
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/bench.py --model tiny_random --steps 4   # quick check

In one process, on the same MedQuAD pairs, the same model and the same number of optimizer steps:
  naive     HF Trainer, every example padded to --seq, loss over the whole sequence (full-vocabulary logits at
            every position), fp32, random batches; evaluation generates one question at a time.
  medsweep  exactly what `medsweep` runs by default: the default config composed by Hydra (only model, data and
            max_steps overridden), medsweep.prompts.tokenize, medsweep.train.training_args / build_trainer,
            medsweep.evaluate.
Then a few `python -m medsweep` subprocesses time the job start-up (process start -> first training step).

Reported for each: real (non-padding) and padded training tokens per second, step time, peak memory (RSS
sampled during the phase), answers per second and seconds per answer p50/p95 of evaluation, model load time,
start-up overhead, and model FLOPs utilisation: FLOPs per real token x real tokens per second / the matmul peak
of the precision the run computes in (measured here with a large torch matmul). The FLOPs formula (the same for
both recipes: model FLOPs, whatever the implementation spends):
  F/token = 4·N_lin + 4·N_head + 6·N_lora + 12·L·d_attn·c̄
    N_lin   frozen Linear weights of the blocks: 2·N forward + 2·N backward for the activation gradients
    N_head  the LM head (vocab x hidden): forward + backward to the hidden state
    N_lora  LoRA A and B: forward, activation gradient and weight gradient
    c̄       mean attended context per real token (causal: (len+1)/2), L layers, d_attn = heads x head dim;
            QK^T and AV, forward (4·L·d_attn·c̄) and backward (twice that)
Both recipes train on the same examples: `steps` batches of a whole epoch as medsweep's length-grouped sampler
makes them, drawn at random positions of the epoch (epoch_batches); medsweep trains on exactly those batches,
the naive recipe on the same examples in random batches, so both process the same real tokens. Before its
timed steps each recipe runs one untimed forward + backward on its longest batch (first allocations, lazy
initialisation); every optimizer step is then timed.
Prints a Markdown table and writes everything (loss curves, per-step times, answers) as JSON under results/bench/.
"""

from __future__ import annotations

import time

T_PROCESS = time.time()  # noqa: E402  (process start for this script's own bookkeeping)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "medquad" / "medquad_2000.jsonl"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------- machine


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, Any]:
    import torch

    from medsweep import hardware

    flags = ""
    with contextlib.suppress(OSError):
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
    return {"cpu": cpu_name(), "usable_cores": hardware.usable_cores(), "torch_threads": threads,
            "isa": isa, "native_bf16": hardware.cpu_has_bf16(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
            "loadavg_start": loadavg()}


def matmul_peak(dtype_name: str, n: int = 2048, budget_s: float = 20.0) -> dict[str, Any]:
    """GFLOP/s of an n x n torch matmul in `dtype` on the current threads: best and median of repeats.
    Emulated dtypes (bf16 without AVX512-BF16/AMX) are orders of magnitude slower: the size is reduced so the
    measurement stays within `budget_s`, and the size used is reported."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    size = 256
    while True:  # grow the size while one product fits the budget
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        t0 = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t0
        if size >= n or dt * 8 * 4 > budget_s / 3:
            break
        size *= 2
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    rates, spent = [], 0.0
    while spent < budget_s and len(rates) < 20:
        t0 = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t0
        spent += dt
        rates.append(2 * size**3 / dt / 1e9)
        if len(rates) >= 5 and spent > budget_s / 2:
            break
    return {"dtype": dtype_name, "n": size, "gflops_best": max(rates), "gflops_median": statistics.median(rates),
            "repeats": len(rates)}


class PeakRSS:
    """Peak resident set size of this process while the block runs (sampled every 10 ms), after handing
    freed heap back to the OS, so each phase is measured on its own."""

    def __init__(self):
        self.peak_mb = 0.0

    @staticmethod
    def rss_mb() -> float:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def __enter__(self):
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.start_mb = self.peak_mb = self.rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak_mb = max(self.peak_mb, self.rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.rss_mb())


# ---------------------------------------------------------------------------------------------- config, model


def compose(model: str, data_path: Path, steps: int, seq: int | None, batch: int | None, extra: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import medsweep.run  # noqa: F401  registers the schema and resolvers

    overrides = [f"model={model}", "data=local", f"data.path={data_path}", f"train.max_steps={steps}",
                 "train.logging_steps=1", *extra]
    if seq:
        overrides.append(f"train.max_seq_length={seq}")
    if batch:
        overrides.append(f"train.batch_size={batch}")
    with initialize_config_dir(config_dir=str((ROOT / "conf").resolve()), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def flops_per_token(model, mean_context: float) -> dict[str, float]:
    """The model-FLOPs formula of the module docstring, from the (LoRA-wrapped) model's own modules."""
    import torch

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = lm.get_output_embeddings()
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    n_lin = sum(m.weight.numel() for name, m in lm.named_modules()
                if isinstance(m, torch.nn.Linear) and m is not head and "lora_" not in name)
    n_head = head.weight.numel()
    cfg = lm.config
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", None) if getattr(cfg, "head_dim", None) \
        else cfg.hidden_size
    attn = 12 * cfg.num_hidden_layers * d_attn * mean_context
    total = 4 * n_lin + 4 * n_head + 6 * n_lora + attn
    return {"n_lin": n_lin, "n_head": n_head, "n_lora": n_lora, "layers": cfg.num_hidden_layers, "d_attn": d_attn,
            "mean_context": mean_context, "attention": attn, "per_token": total}


def load_model_timed(cfg, hw) -> tuple[Any, Any, float]:
    from medsweep import models

    t0 = time.perf_counter()
    tokenizer = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tokenizer, hw, seed=cfg.train.seed)
    return tokenizer, model, time.perf_counter() - t0


def cold_load_s(cfg, hw) -> float | None:
    """Model load with an empty cache (the embedded GGUF dequantized into safetensors), in a temp cache dir."""
    if cfg.model.source != "embedded":
        return None
    from omegaconf import OmegaConf

    tmp = Path(tempfile.mkdtemp(prefix="medsweep-bench-cache-"))
    try:
        cold = OmegaConf.merge(cfg, {"model": {"cache_dir": str(tmp)}})
        _, model, seconds = load_model_timed(cold, hw)
        del model
        return seconds
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- training


class Steps:
    """Trainer callback + collator wrapper: wall time of every optimizer step (end to end, data included) and
    the real / padded tokens of the batches it consumed."""

    def __init__(self, collate, grad_accum: int):
        from transformers import TrainerCallback

        self.collate, self.grad_accum = collate, grad_accum
        self.batches: list[tuple[int, int, float]] = []  # (real, padded, sum over sequences of len*(len+1)/2)
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []  # process CPU time (all threads): less sensitive to other jobs' load
        self.begin = self.cpu_begin = None
        outer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                outer.begin, outer.cpu_begin = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                outer.ends.append(time.perf_counter())
                outer.cpu_ends.append(time.process_time())

        self.callback = _Callback()

    def __call__(self, features):
        batch = self.collate(features)
        mask = batch["attention_mask"]
        lengths = mask.sum(1).tolist()
        self.batches.append((int(mask.sum()), mask.numel(), sum(n * (n + 1) / 2 for n in lengths)))
        return batch

    def summary(self) -> dict[str, Any]:
        times = [b - a for a, b in zip([self.begin, *self.ends[:-1]], self.ends, strict=False)]
        cpu = [b - a for a, b in zip([self.cpu_begin, *self.cpu_ends[:-1]], self.cpu_ends, strict=False)]
        per_step = [self.batches[i * self.grad_accum:(i + 1) * self.grad_accum] for i in range(len(times))]
        real = [sum(b[0] for b in s) for s in per_step]
        padded = [sum(b[1] for b in s) for s in per_step]
        context = sum(b[2] for s in per_step for b in s) / max(1, sum(real))
        t = sum(times)  # every step: the warm-up pass ran before the timing (warm_up)
        return {
            "steps": len(times), "step_s": times, "first_step_s": times[0] if times else None,
            "step_s_median": statistics.median(times) if times else None,
            "real_tokens": real, "padded_tokens": padded,
            "real_fraction": sum(real) / max(1, sum(padded)),
            "real_tokens_per_s": sum(real) / t if t else None,
            "cpu_s_per_step": cpu, "cpu_s_per_1k_real_tokens": 1000 * sum(cpu) / max(1, sum(real)),
            "padded_tokens_per_s": sum(padded) / t if t else None,
            "mean_context": context,
        }


def epoch_batches(records: list[dict[str, Any]], cfg, steps: int) -> list[dict[str, Any]]:
    """`steps` of the batches medsweep's length-grouped sampler makes for a whole epoch over `records` (its
    transformers grouping function, seeded with the run's seed), drawn at random positions of the epoch (seed 0),
    concatenated batch after batch: what both recipes train on. A real epoch groups lengths over megabatches of
    50 batches; timing its first batches only (always the longest) or a small random subset (little to group)
    would misrepresent it."""
    import random

    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from medsweep import models
    from medsweep.prompts import tokenize_example

    tokenizer = models.load_tokenizer(cfg.model)
    per_batch = cfg.train.batch_size * cfg.train.grad_accum
    kept, lengths = [], []
    for rec in records:  # which records survive tokenization, and their lengths (what prompts.tokenize keeps)
        example = tokenize_example(tokenizer, rec, cfg.data.instruction, cfg.model.prompt_format,
                                   cfg.train.max_seq_length, cfg.model.system_prompt)
        if example is not None:
            kept.append(rec)
            lengths.append(example["length"])
    order = get_length_grouped_indices(lengths, per_batch, generator=torch.Generator().manual_seed(cfg.train.seed))
    batches = [order[i:i + per_batch] for i in range(0, len(order) - per_batch + 1, per_batch)]
    chosen = random.Random(0).sample(range(len(batches)), min(steps, len(batches)))
    return [kept[i] for b in chosen for i in batches[b]]


def warm_up(trainer, collate, examples: list[dict[str, Any]]) -> float:
    """One forward + backward through the trainer's own loss on the longest batch, before the timed steps (first
    allocations: ~6 GB of pages faulted in on SmolLM2; lazy initialisation); then the gradients are dropped and
    the seed the Trainer set is set again, so the timed run draws what it would have drawn without it."""
    import torch
    from transformers import set_seed

    t0 = time.perf_counter()
    batch = collate(examples)
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch).backward()
    trainer.model.zero_grad(set_to_none=True)
    set_seed(trainer.args.seed)
    torch.set_grad_enabled(True)
    return time.perf_counter() - t0


def longest(rows: list[dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    """The `batch` examples with the most real tokens."""
    return sorted(rows, key=lambda r: -sum(r["attention_mask"]))[:batch]


def train_naive(records, cfg, hw, seq: int, batch: int, steps: int, workdir: Path) -> dict[str, Any]:
    """The published notebooks: texts padded to max_length, DataCollatorForLanguageModeling (labels = the
    whole sequence), the model's own full-vocabulary loss, fp32, plain HF Trainer."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from medsweep import models
    from medsweep.prompts import render

    with PeakRSS() as mem:
        tokenizer, base, load_s = load_model_timed(cfg, hw)
        model = models.add_lora(base, cfg.lora, cfg.model)
        tokenizer.padding_side = "right"
        t0 = time.perf_counter()
        texts = ["".join(render(tokenizer, r, cfg.data.instruction, cfg.model.prompt_format,
                                cfg.model.system_prompt)) for r in records]
        enc = tokenizer(texts, truncation=True, max_length=seq, padding="max_length", add_special_tokens=False)
        dataset = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        tokenize_s = time.perf_counter() - t0
        steps_cb = Steps(DataCollatorForLanguageModeling(tokenizer, mlm=False), 1)
        args = TrainingArguments(
            output_dir=str(workdir / "naive"), per_device_train_batch_size=batch, max_steps=steps,
            learning_rate=cfg.train.lr, lr_scheduler_type=cfg.train.lr_scheduler, warmup_steps=cfg.train.warmup_steps,
            seed=cfg.train.seed, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
            disable_tqdm=True, dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=steps_cb,
                          callbacks=[steps_cb.callback])
        warm_s = warm_up(trainer, steps_cb.collate, longest(dataset.to_list(), batch))
        trainer.train()
    torch.set_grad_enabled(True)
    out = steps_cb.summary()
    out.update(load_s=load_s, tokenize_s=tokenize_s, warm_up_s=warm_s, peak_rss_mb=mem.peak_mb, precision="fp32",
               loss=[h["loss"] for h in trainer.state.log_history if "loss" in h],
               flops=flops_per_token(model, out["mean_context"]), threads=torch.get_num_threads())
    return {"summary": out, "model": model, "tokenizer": tokenizer}


def train_medsweep(records, cfg, hw, workdir: Path) -> dict[str, Any]:
    """medsweep's own path, as medsweep/run.py calls it (train.fast_kernels=false in `cfg`: the plain library
    computations in place of medsweep.kernels and medsweep.attention)."""
    import torch

    from medsweep import models, prompts, train

    with PeakRSS() as mem:
        tokenizer, base, load_s = load_model_timed(cfg, hw)
        model = models.add_lora(base, cfg.lora, cfg.model)
        tokenizer.padding_side = "right"
        t0 = time.perf_counter()
        dataset, stats = prompts.tokenize(records, tokenizer, prompts.PromptStyle.of(cfg), cfg.train.max_seq_length)
        tokenize_s = time.perf_counter() - t0
        args = train.training_args(cfg.train, cfg.profile, hw, workdir / "medsweep")
        args.train_sampling_strategy = "sequential"  # `records` already are medsweep's batches (epoch_batches)
        timer = train.StepTimer()
        trainer = train.build_trainer(model, tokenizer, dataset, args, [timer], fast_kernels=cfg.train.fast_kernels)
        steps_cb = Steps(trainer.data_collator, cfg.train.grad_accum)
        trainer.data_collator = steps_cb
        trainer.add_callback(steps_cb.callback)
        warm_s = warm_up(trainer, steps_cb.collate, longest(dataset.to_list(), cfg.train.batch_size))
        trainer.train()
    out = steps_cb.summary()
    out.update(load_s=load_s, tokenize_s=tokenize_s, warm_up_s=warm_s, peak_rss_mb=mem.peak_mb, precision=hw.precision,
               loss=[h["loss"] for h in train.loss_history(trainer)], tokenized=stats,
               flops=flops_per_token(model, out["mean_context"]), threads=torch.get_num_threads())
    return {"summary": out, "model": model, "tokenizer": tokenizer}


# ---------------------------------------------------------------------------------------------- evaluation


def eval_naive(model, tokenizer, records, cfg, max_new_tokens: int) -> dict[str, Any]:
    """One question at a time: model.generate on the prompt, greedy, stopping at the model's EOS."""
    import torch

    from medsweep import metrics
    from medsweep.prompts import prompt_ids

    model.eval()
    answers, seconds, cpu = [], [], []
    with PeakRSS() as mem, torch.no_grad():
        for r in records:
            ids = torch.tensor([prompt_ids(tokenizer, r, cfg.data.instruction, cfg.model.prompt_format,
                                           cfg.model.system_prompt)])
            t0, c0 = time.perf_counter(), time.process_time()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
            seconds.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    corpus, _ = metrics.score_corpus(answers, [r["answer"] for r in records])
    return {"answers": answers, "seconds": seconds, "wall_s": sum(seconds), "cpu_s": sum(cpu),
            "peak_rss_mb": mem.peak_mb, "quality": {k: corpus[k] for k in ("f1", "rougeL", "bleu") if k in corpus}}


def eval_medsweep(model, tokenizer, records, cfg, hw) -> dict[str, Any]:
    """medsweep.evaluate.evaluate as run.py calls it (generation, metrics, and perplexity by default)."""
    from medsweep import evaluate

    cpu = [0.0]
    generate = model.generate

    def timed_generate(*args, **kwargs):  # CPU time of the generation calls (instrumentation only)
        c0 = time.process_time()
        try:
            return generate(*args, **kwargs)
        finally:
            cpu[0] += time.process_time() - c0

    model.generate = timed_generate
    try:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            result, rows = evaluate.evaluate(model, tokenizer, records, cfg, hw)
            wall = time.perf_counter() - t0
    finally:
        del model.generate
    seconds = [r["seconds"] for r in rows]
    return {"answers": [r["generated"] for r in rows], "seconds": seconds, "wall_s": sum(seconds), "cpu_s": cpu[0],
            "evaluate_wall_s": wall, "peak_rss_mb": mem.peak_mb, "perplexity": result.get("perplexity"),
            "quality": {k: result[k] for k in ("f1", "rougeL", "bleu") if k in result}}


def answer_check(model, tokenizer, records, cfg, hw, fast_answers: list[str]) -> dict[str, Any]:
    """The plain path on the same model: one question per generate call, adapter not folded in."""
    from omegaconf import OmegaConf

    from medsweep import evaluate
    from medsweep.prompts import PromptStyle

    one = OmegaConf.merge(cfg.eval, {"batch_size": 1})
    slow, _, _ = evaluate.generate(model, tokenizer, records, PromptStyle.of(cfg), one, hw, fold_lora=False)
    same = [a == b for a, b in zip(fast_answers, slow, strict=True)]
    return {"identical": sum(same), "n": len(same), "one_at_a_time": slow}


def eval_summary(e: dict[str, Any]) -> dict[str, Any]:
    s = sorted(e["seconds"])
    q = (lambda p: statistics.quantiles(s, n=100, method="inclusive")[p - 1]) if len(s) > 1 else (lambda p: s[0])
    return {"answers_per_s": len(s) / e["wall_s"], "p50_s": q(50), "p95_s": q(95),
            "cpu_s_per_answer": e["cpu_s"] / len(s) if e.get("cpu_s") else None}


# ---------------------------------------------------------------------------------------------- start-up

STARTUP_WRAPPER = r"""
import sys, time
print("BENCH interpreter", time.time(), flush=True)
from medsweep import run  # what the job imports anyway (earlier than the CLI would), run first as the CLI does
from medsweep import models, train
print("BENCH imports", time.time(), flush=True)
_load = models.load_model
def load_model(*a, **k):
    out = _load(*a, **k)
    print("BENCH model_loaded", time.time(), flush=True)
    return out
models.load_model = load_model
_begin, _step, _end = train.StepTimer.on_train_begin, train.StepTimer.on_step_begin, train.StepTimer.on_step_end
def on_train_begin(self, *a, **k):
    print("BENCH train_begin", time.time(), flush=True)
    return _begin(self, *a, **k)
def on_step_begin(self, *a, **k):
    first = self.first_step_begin is None
    out = _step(self, *a, **k)
    if first:
        print("BENCH first_step_begin", time.time(), flush=True)
    return out
def on_step_end(self, *a, **k):
    print("BENCH first_step_end", time.time(), flush=True)
    return _end(self, *a, **k)
train.StepTimer.on_train_begin, train.StepTimer.on_step_begin = on_train_begin, on_step_begin
train.StepTimer.on_step_end = on_step_end
sys.argv = ["medsweep", *sys.argv[1:]]
from medsweep.cli import main
main()
"""


def startup(model: str, data_path: Path, extra: list[str], timeout: float = 900) -> dict[str, Any]:
    """`python -m medsweep` with the default config (model cached): seconds from process start to each mark;
    the process is stopped once its first training step ends."""
    out_root = Path(tempfile.mkdtemp(prefix="medsweep-bench-startup-"))
    cmd = [sys.executable, "-c", STARTUP_WRAPPER, f"model={model}", "data=local", f"data.path={data_path}",
           "train.max_steps=1", "eval.num_examples=1", "eval.perplexity=false", f"output_root={out_root}", *extra]
    marks: dict[str, float] = {}
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    try:
        for line in proc.stdout:
            if line.startswith("BENCH "):
                _, name, when = line.split()
                marks[name] = float(when) - t0
                if name == "first_step_end":
                    break
            if time.time() - t0 > timeout:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(out_root, ignore_errors=True)
    return marks


# ---------------------------------------------------------------------------------------------- report


def ratio(a, b):
    return a / b if a and b else None


def table(res: dict[str, Any]) -> str:
    n, m = res["naive"], res["medsweep"]
    nt, mt, ne, me = n["train"], m["train"], n["eval"], m["eval"]
    st = res.get("startup") or {}

    def f(x, fmt="{:.3g}"):
        return "–" if x is None else fmt.format(x)

    ref = res.get("medsweep_reference", {}).get("train", {})
    rows = [
        ("precision (compute)", nt["precision"], mt["precision"], ""),
        ("train: real tokens/s", f(nt["real_tokens_per_s"]), f(mt["real_tokens_per_s"]),
         f(ratio(mt["real_tokens_per_s"], nt["real_tokens_per_s"]), "{:.2f}×")),
        ("train: padded tokens/s", f(nt["padded_tokens_per_s"]), f(mt["padded_tokens_per_s"]), ""),
        ("train: real / padded tokens", f(nt["real_fraction"], "{:.0%}"), f(mt["real_fraction"], "{:.0%}"), ""),
        ("train: step time median (s)", f(nt["step_s_median"]), f(mt["step_s_median"]),
         f(ratio(nt["step_s_median"], mt["step_s_median"]), "{:.2f}×")),
        ("train: CPU-s per 1k real tokens (less load-sensitive)", f(nt["cpu_s_per_1k_real_tokens"]),
         f(mt["cpu_s_per_1k_real_tokens"]),
         f(ratio(nt["cpu_s_per_1k_real_tokens"], mt["cpu_s_per_1k_real_tokens"]), "{:.2f}×")),
        ("train: first step (s)", f(nt["first_step_s"]), f(mt["first_step_s"]), ""),
        ("train: peak RSS (MB)", f(nt["peak_rss_mb"], "{:.0f}"), f(mt["peak_rss_mb"], "{:.0f}"),
         "RSS sampled every 10 ms during the phase"),
        ("train: loss first → last", f"{nt['loss'][0]:.3f} → {nt['loss'][-1]:.3f}",
         f"{mt['loss'][0]:.3f} → {mt['loss'][-1]:.3f}", "naive: whole sequence"),
        ("train: loss curve vs fp32 + library kernels, same batches", "",
         "" if "loss_curve_max_abs_diff" not in res else f"max abs Δloss {res['loss_curve_max_abs_diff']:.4f}",
         "" if not ref else "reference: " + " ".join(f"{x:.3f}" for x in ref["loss"])),
        ("train: real tokens/s with library kernels (ablation)", "", f(ref.get("real_tokens_per_s")),
         f(ratio(mt["real_tokens_per_s"], ref.get("real_tokens_per_s")), "{:.2f}× from medsweep.kernels + attention")),
        ("train: FLOPs / real token (M)", f(nt["flops"]["per_token"] / 1e6, "{:.0f}"),
         f(mt["flops"]["per_token"] / 1e6, "{:.0f}"), ""),
        ("train: MFU vs measured peak", f(nt["mfu"], "{:.1%}"), f(mt["mfu"], "{:.1%}"),
         f"peak {res['peak_used']['gflops_best']:.0f} GFLOP/s {res['peak_used']['dtype']}"),
        ("eval: answers/s (generation)", f(ne["answers_per_s"]), f(me["answers_per_s"]),
         f(ratio(me["answers_per_s"], ne["answers_per_s"]), "{:.2f}×")),
        ("eval: CPU-s per answer (less load-sensitive)", f(ne.get("cpu_s_per_answer")), f(me.get("cpu_s_per_answer")),
         f(ratio(ne.get("cpu_s_per_answer"), me.get("cpu_s_per_answer")), "{:.2f}×")),
        ("eval: s/answer p50", f(ne["p50_s"]), f(me["p50_s"]), "medsweep: batch time / batch size"),
        ("eval: s/answer p95", f(ne["p95_s"]), f(me["p95_s"]), ""),
        ("eval: evaluate() wall incl. perplexity (s)", "–", f(me.get("evaluate_wall_s")), ""),
        ("eval: F1 / ROUGE-L", f"{ne['quality'].get('f1', 0):.3f} / {ne['quality'].get('rougeL', 0):.3f}",
         f"{me['quality'].get('f1', 0):.3f} / {me['quality'].get('rougeL', 0):.3f}", "same questions"),
        *([("eval: answers identical to one-at-a-time", "", f"{me['answer_check']['identical']}/"
             f"{me['answer_check']['n']}", "greedy, same model")] if me.get("answer_check") else []),
        ("model load: first / cached (s)", "", f"{f(res['load'].get('cold_s'))} / {f(res['load']['cached_s'])}",
         "first = empty cache (GGUF dequantized)"),
        ("start-up: process → first step begins (s), tokenized set cached", "", f(st.get("first_step_begin_median")),
         f"median of {max(1, len(st.get('runs', [])) - 1)}; imports {f(st.get('imports_median'))} s, model loaded "
         f"at {f(st.get('model_loaded_median'))} s"),
        ("start-up: the same, tokenizing (train.cache_tokenized=false)", "",
         f((st.get("tokenizing") or {}).get("first_step_begin")),
         f"imports {f((st.get('tokenizing') or {}).get('imports'))} s"),
    ]
    lines = ["| | naive | medsweep | medsweep vs naive |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2_135m", help="smollm2_135m (default) | tiny_random (quick)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MedQuAD JSONL (default ../shared/data/...)")
    p.add_argument("--steps", type=int, default=8,
                   help="optimizer steps per recipe, on the same steps x batch pairs (8)")
    p.add_argument("--eval-questions", type=int, default=16, help="held-out questions generated (16)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (medsweep default: 64)")
    p.add_argument("--seq", type=int, default=None, help="max_seq_length (medsweep default: 512)")
    p.add_argument("--batch", type=int, default=None, help="batch size (medsweep default: 4)")
    p.add_argument("--startup-runs", type=int, default=3,
                   help="`python -m medsweep` start-up timings with the tokenized set cached, the first not counted, "
                        "then one tokenizing (3; 0: skip)")
    p.add_argument("--no-cold-load", action="store_true", help="skip the empty-cache model load")
    p.add_argument("--skip-naive-eval", action="store_true", help="skip the slow one-at-a-time generation")
    p.add_argument("--answer-check", action="store_true",
                   help="also generate one question at a time, adapter unmerged, with medsweep's trained model: "
                        "how many greedy answers the fast path reproduces exactly")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override for medsweep (repeat)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/bench/<timestamp>.json)")
    args = p.parse_args(argv)

    import torch

    from medsweep import data, hardware

    cfg = compose(args.model, args.data, args.steps, args.seq, args.batch, args.override)
    hw = hardware.resolve(cfg.profile)
    hardware.apply_threads(hw)
    seq, batch = cfg.train.max_seq_length, cfg.train.batch_size
    max_new = args.max_new_tokens or cfg.eval.max_new_tokens
    if args.max_new_tokens:
        from omegaconf import OmegaConf

        cfg = OmegaConf.merge(cfg, {"eval": {"max_new_tokens": max_new}})
    res: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                           "machine": machine_info(torch.get_num_threads()),
                           "config": {"model": args.model, "steps": args.steps, "seq": seq, "batch": batch,
                                      "eval_questions": args.eval_questions, "max_new_tokens": max_new,
                                      "eval_batch_size": cfg.eval.batch_size, "medsweep_precision": hw.precision}}
    log = lambda *a: print(f"[bench {time.time() - T_PROCESS:6.0f}s load {loadavg():.1f}]", *a, flush=True)  # noqa: E731

    log("matmul peaks")
    res["peak"] = {d: matmul_peak(d) for d in ("fp32", "bf16")}
    for d, v in res["peak"].items():
        log(f"  {d}: {v['gflops_best']:.1f} GFLOP/s best, {v['gflops_median']:.1f} median ({v['n']}²)")

    splits = data.build(cfg.data, eval_size=cfg.train.eval_split, train_size=cfg.train.train_size)
    records = epoch_batches(splits.train, cfg, args.steps)
    eval_records = splits.eval[: args.eval_questions]
    res["data"] = {"path": str(args.data), "train_pairs": len(records), "train_pairs_available": len(splits.train),
                   "eval_questions": len(eval_records)}

    res["load"] = {}
    if not args.no_cold_load:
        log("model load with an empty cache")
        res["load"]["cold_s"] = cold_load_s(cfg, hw)
    _, m, res["load"]["first_in_process_s"] = load_model_timed(cfg, hw)
    del m
    _, m, res["load"]["cached_s"] = load_model_timed(cfg, hw)
    del m

    workdir = Path(tempfile.mkdtemp(prefix="medsweep-bench-"))
    try:
        log(f"naive training: {args.steps} steps, batch {batch}, padded to {seq}, fp32")
        torch.manual_seed(0)
        naive = train_naive(records, cfg, hardware.Hardware("cpu", "fp32", hw.threads), seq, batch, args.steps,
                            workdir)
        log(f"  {naive['summary']['step_s_median']:.2f} s/step, {naive['summary']['real_tokens_per_s']:.1f} real tok/s")
        if args.skip_naive_eval:
            ne = {"answers": [], "seconds": [float("nan")], "wall_s": float("nan"), "quality": {}}
        else:
            log(f"naive evaluation: {len(eval_records)} questions one at a time")
            ne = eval_naive(naive["model"], naive["tokenizer"], eval_records, cfg, max_new)
        naive_train = naive.pop("summary")
        del naive
        gc.collect()

        log(f"medsweep training: {args.steps} steps, default config ({hw.precision})")
        ms = train_medsweep(records, cfg, hw, workdir)
        log(f"  {ms['summary']['step_s_median']:.2f} s/step, {ms['summary']['real_tokens_per_s']:.1f} real tok/s")
        log(f"medsweep evaluation: {len(eval_records)} questions")
        me = eval_medsweep(ms["model"], ms["tokenizer"], eval_records, cfg, hw)
        if args.answer_check:
            log("answer check: the same model, one question at a time, adapter unmerged")
            me["answer_check"] = answer_check(ms["model"], ms["tokenizer"], eval_records, cfg, hw, me["answers"])
            log(f"  {me['answer_check']['identical']}/{len(eval_records)} identical answers")
        ms_train = ms.pop("summary")
        del ms
        gc.collect()
        # Reference loss curve: the same recipe, batches and seed in fp32 with the library kernels (the model's
        # own cross-entropy over full logits, torch's dropout, SDPA) instead of medsweep.kernels and .attention.
        log("medsweep training in fp32 with library kernels (reference loss curve and ablation)")
        ref_cfg = compose(args.model, args.data, args.steps, args.seq, args.batch,
                          [*args.override, "profile.precision=fp32", "train.fast_kernels=false"])
        ref = train_medsweep(records, ref_cfg, hardware.resolve(ref_cfg.profile), workdir)
        reference = ref.pop("summary")
        log(f"  {reference['step_s_median']:.2f} s/step, {reference['real_tokens_per_s']:.1f} real tok/s")
        del ref
        gc.collect()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    peak = res["peak"]["bf16" if hw.precision == "bf16" else "fp32"]
    res["peak_used"] = peak
    for t in (naive_train, ms_train):
        peak_t = res["peak"]["bf16" if t["precision"] == "bf16" else "fp32"]
        t["mfu"] = t["flops"]["per_token"] * t["real_tokens_per_s"] / (peak_t["gflops_best"] * 1e9) \
            if t["real_tokens_per_s"] else None
    res["naive"] = {"train": naive_train, "eval": {**ne, **eval_summary(ne)} if ne["answers"] else
                    {"answers_per_s": None, "p50_s": None, "p95_s": None, "quality": {}}}
    res["medsweep"] = {"train": ms_train, "eval": {**me, **eval_summary(me)}}
    if reference:
        res["medsweep_reference"] = {"train": reference}
        pairs = list(zip(ms_train["loss"], reference["loss"], strict=False))
        res["loss_curve_max_abs_diff"] = max(abs(a - b) for a, b in pairs) if pairs else None

    # Start-up with the model cached: runs whose tokenized training set is in the cache (a sweep's jobs after
    # the first; the first run here stores it if it is not there yet), and one run that tokenizes.
    res["startup"] = {"runs": [], "tokenizing": None}
    for i in range(args.startup_runs):
        log(f"start-up run {i + 1}/{args.startup_runs}: python -m medsweep model={args.model} train.max_steps=1")
        res["startup"]["runs"].append(startup(args.model, args.data, args.override))
        log(f"  {res['startup']['runs'][-1]}")
    for mark in ("imports", "model_loaded", "train_begin", "first_step_begin", "first_step_end"):
        values = [r[mark] for r in res["startup"]["runs"][1:] or res["startup"]["runs"] if mark in r]
        if values:
            res["startup"][f"{mark}_median"] = statistics.median(values)
    if args.startup_runs:
        log("start-up run with train.cache_tokenized=false (tokenizes)")
        res["startup"]["tokenizing"] = startup(args.model, args.data, [*args.override, "train.cache_tokenized=false"])
        log(f"  {res['startup']['tokenizing']}")

    res["machine"]["loadavg_end"] = loadavg()
    res["table"] = table(res)
    out = args.out or ROOT / "results" / "bench" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    mach = res["machine"]
    print(f"\n{mach['cpu']}, {mach['usable_cores']} cores, {mach['torch_threads']} torch threads, "
          f"ISA {'/'.join(mach['isa'])}, native bf16: {mach['native_bf16']}, torch {mach['torch']}, "
          f"load average {mach['loadavg_start']:.1f} → {mach['loadavg_end']:.1f}")
    print(f"{args.model}, MedQuAD, seq {seq}, batch {batch}, {args.steps} steps over the same {len(records)} pairs, "
          f"{len(eval_records)} eval questions × {max_new} new tokens\n")
    print(res["table"])
    print(f"\nwrote {out}")
    return res


if __name__ == "__main__":
    main()
