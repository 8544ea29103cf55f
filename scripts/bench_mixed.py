#!/usr/bin/env python
"""A pack's evaluation two ways: K adapters generating one after the other (pack_eval=in_turn, each as its solo run:
the adapter folded into the weights on a CPU) vs in shared batches (pack_eval=mixed, medsweep/mixed.py).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/bench_mixed.py                    # bf16 and fp32, K=8
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/bench_mixed.py --precision fp32 --adapters 4

The embedded SmolLM2 with experiment=demo's evaluation (its held-out questions, eval.batch_size, max_new_tokens)
and K LoRA adapters of the demo's settings whose B matrices are random (a fresh adapter's B is zero: every adapter
would answer as the base model). Printed per precision: the wall time of each way, the ratio, and how many of the
K x questions answers are identical.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def measure(precision: str, adapters: int) -> str:
    import torch
    from hydra import compose, initialize_config_dir

    from medsweep import data, evaluate, hardware, mixed, models
    from medsweep import run as run_module
    from medsweep.prompts import PromptStyle

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=demo", f"profile.precision={precision}"])
    run = run_module.config_schema.typed(cfg)
    hw = hardware.resolve(run.profile, mode="cpu")
    hardware.apply_threads(hw)
    records = data.build(run.data, eval_size=run.train.eval_split).eval[: run.eval.num_examples]
    tokenizer = models.load_tokenizer(run.model)
    model, _ = models.load_model(run.model, tokenizer, hw, seed=0)
    names = [f"m{k}" for k in range(adapters)]
    for k, name in enumerate(names):
        model = models.add_lora(model, run.lora, run.model, seed=k, adapter_name=name)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if "lora_B" in key:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    style = PromptStyle.of(run)
    t0 = time.perf_counter()
    alone = {}
    for name in names:
        model.set_adapter(name)
        alone[name] = evaluate.generate(model, tokenizer, records, style, run.eval, hw)[0]
    in_turn = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = mixed.generate_mixed(model, tokenizer, records, style, run.eval, hw, names)
    shared = time.perf_counter() - t0
    same = sum(a == b for name in names for a, b in zip(alone[name], together[name][0], strict=True))
    return (f"| {hw.precision} | {adapters} x {len(records)} | {in_turn:.1f} | {shared:.1f} | {in_turn / shared:.2f}x "
            f"| {same} / {adapters * len(records)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=("bf16", "fp32", "both"), default="both")
    parser.add_argument("--adapters", type=int, default=8)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    print("| precision | answers | in turn s | mixed s | in turn / mixed | identical answers |")
    print("|---|---|---|---|---|---|")
    for precision in (("bf16", "fp32") if args.precision == "both" else (args.precision,)):
        print(measure(precision, args.adapters), flush=True)


if __name__ == "__main__":
    main()
