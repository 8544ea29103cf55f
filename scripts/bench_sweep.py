#!/usr/bin/env python
"""A sweep three ways: the notebooks' recipe, medsweep's solo jobs, and medsweep's packed jobs (pack=K).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/bench_sweep.py                   # the 8-config grid
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/bench_sweep.py --grid small --max-steps 4 --eval-n 6

The grid: lora.r in {4,16} x lora.alpha in {8,32} x lora.dropout in {0,0.1} (`--grid small`: r in {4,16} x
dropout in {0,0.1}, alpha 32; `--grid pair`: r in {4,16}, alpha 32, dropout 0.1) on the embedded SmolLM2 with
experiment=demo (baseline on), one job at a time:
  (a) notebooks  one process per configuration: HF Trainer, every example padded to train.max_seq_length, the loss
                 over the whole sequence, one-question-at-a-time generation (scripts/bench.py's naive recipe),
                 the baseline generated with the adapter disabled;
  (b) solo       `medsweep -m <grid>`: one medsweep job per configuration, each scoring its own baseline
                 (eval.cache_baseline=false: the jobs as they were before the baseline cache);
  (c) packed     `medsweep -m <grid> pack=<grid size>`: one job training every configuration on one base model,
                 the baseline evaluated once (by the pack itself: eval.cache_baseline=false here too, so that
                 neither way reuses a baseline another run left in the cache), the adapters evaluated in turn;
  (d) mixed      (c) with pack_eval=mixed: the adapters' answers generated in shared batches (medsweep/mixed.py).
Printed: wall time, configurations per hour, start-up share (process start -> first training step, summed over
the processes, over the wall time) and, for (b) vs (c) and (b) vs (d), the largest difference of each
configuration's adapter and quality metrics. `--ways bcd` runs only those. Everything lands under --out (default
results/bench_sweep/).
"""

from __future__ import annotations

import time

T_PROCESS = time.time()  # noqa: E402

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


GRIDS = {"full": ((4, 16), (8, 32), (0, 0.1)), "small": ((4, 16), (32,), (0, 0.1)), "pair": ((4, 16), (32,), (0.1,))}


def grid(kind: str) -> list[list[str]]:
    return [[f"lora.r={r}", f"lora.alpha={a}", f"lora.dropout={d}"] for r, a, d in itertools.product(*GRIDS[kind])]


def sweep_overrides(kind: str) -> list[str]:
    return [f"lora.{key}={','.join(map(str, values))}" for key, values in zip(("r", "alpha", "dropout"), GRIDS[kind],
                                                                              strict=True)]


def notebook_job(overrides: list[str], out: Path) -> None:
    """(a): one configuration the notebooks' way, in this process."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench  # scripts/bench.py: the naive recipe
    from hydra import compose, initialize_config_dir

    from medsweep import data, hardware
    from medsweep import run as run_module

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=demo", *overrides])
    run = run_module.config_schema.typed(cfg)
    hw = hardware.resolve(run.profile, mode="cpu")
    hardware.apply_threads(hw)
    splits = data.build(run.data, eval_size=run.train.eval_split, train_size=run.train.train_size)
    records = splits.train
    steps = run.train.max_steps if run.train.max_steps > 0 else -(-len(records) // run.train.batch_size)
    trained = bench.train_naive(records, cfg, hw, run.train.max_seq_length, run.train.batch_size, steps,
                                out.parent / "work")
    summary = trained["summary"]
    # process start -> first training step: what is left after the timed steps and bench.py's warm-up pass
    startup = time.time() - T_PROCESS - sum(summary["step_s"]) - summary["warm_up_s"]
    model, tokenizer = trained["model"], trained["tokenizer"]
    held_out = splits.eval[: run.eval.num_examples]
    with model.disable_adapter():
        baseline = bench.eval_naive(model, tokenizer, held_out, cfg, run.eval.max_new_tokens)
    tuned = bench.eval_naive(model, tokenizer, held_out, cfg, run.eval.max_new_tokens)
    out.write_text(json.dumps({"wall_s": time.time() - T_PROCESS, "baseline": baseline["quality"],
                               "metrics": tuned["quality"], "steps": steps, "startup_s": startup}))


def medsweep_sweep(overrides: list[str], out: Path, name: str, extra: list[str]) -> float:
    t0 = time.time()
    cmd = [sys.executable, "-m", "medsweep", "-m", "experiment=demo", *overrides, f"output_root={out}",
           f"sweep_name={name}", "site.max_parallel=1", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"{name} sweep failed: {proc.stderr[-2000:]}")
    return time.time() - t0


def records(out: Path, name: str) -> dict[str, dict[str, Any]]:
    jobs = json.loads((out / "sweeps" / name / "sweep_jobs.json").read_text())
    found = {}
    for job in jobs:
        rec = json.loads((Path(job["run_dir"]) / "metrics.json").read_text())
        found[Path(job["run_dir"]).name] = rec
    return found


def adapter_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x = load_file(a / "adapter" / "adapter_model.safetensors")
    y = load_file(b / "adapter" / "adapter_model.safetensors")
    return max(float((x[k] - y[k]).abs().max()) for k in x)


PACKED = (("c", "(c) medsweep pack", "packed", ["pack={n}"]),
          ("d", "(d) medsweep pack, mixed evaluation", "mixed", ["pack={n}", "pack_eval=mixed"]))


def _versus_solo(solo: dict[str, dict[str, Any]], packed: dict[str, dict[str, Any]], way: str, solo_train: float,
                 config_steps: int, quality_metrics: tuple[str, ...]) -> list[str]:
    """The training loops' time and each configuration's adapter and quality-metric differences, (b) vs a pack."""
    diffs, per_metric = [], {}
    for run_name, rec in solo.items():
        other = packed[run_name]
        quality = {k: abs(v - other["metrics"][k]) for k, v in rec["metrics"].items()
                   if k in (*quality_metrics, "perplexity") and isinstance(v, (int, float)) and k in other["metrics"]}
        for k, v in quality.items():
            per_metric[k] = max(per_metric.get(k, 0.0), v)
        diffs.append((run_name, adapter_diff(Path(rec["run_dir"]), Path(other["run_dir"])), max(quality.values())))
    pack_train = next(iter(packed.values()))["train"]["train_time_s"]  # the pack's one loop, in each record
    return [f"training loops: (b) {solo_train:.0f} s, ({way}) {pack_train:.0f} s for {config_steps} configuration-"
            f"steps ({solo_train / config_steps:.2f} vs {pack_train / config_steps:.2f} s each: "
            f"{solo_train / pack_train:.2f}x)",
            f"(b) vs ({way}), per configuration: max |adapter difference|, max |quality metric difference| "
            "(scores on their own scales: BLEU 0-100, perplexity)",
            *[f"  {n}: {a:.3g}, {q:.3g}" for n, a, q in diffs],
            "  per metric, the largest over the configurations: "
            + ", ".join(f"{k} {v:.3g}" for k, v in sorted(per_metric.items())), ""]


def main() -> None:
    from medsweep import metrics

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=tuple(GRIDS), default="full")
    parser.add_argument("--max-steps", type=int, default=0, help="0: the demo schedule (one epoch)")
    parser.add_argument("--eval-n", type=int, default=0, help="0: the demo's held-out questions")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0: the demo's")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_sweep")
    parser.add_argument("--ways", default="abcd", help="which of the ways (a)-(d) to run; (b) is always run")
    parser.add_argument("--notebook-configs", type=int, default=0,
                        help="run (a) for only this many configurations, spread over the grid, and scale its wall "
                             "time to the whole grid (its processes are independent and cost alike); 0: all")
    parser.add_argument("--notebook-job", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    extra = ["eval.cache_baseline=false"] + ([f"train.max_steps={args.max_steps}"] if args.max_steps else []) + \
        ([f"eval.num_examples={args.eval_n}"] if args.eval_n else []) + \
        ([f"eval.max_new_tokens={args.max_new_tokens}"] if args.max_new_tokens else [])
    if args.notebook_job is not None:
        notebook_job(args.notebook_job, args.json)
        return
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    configs = grid(args.grid)
    rows = []
    if "a" in args.ways:
        t0, startup = time.time(), 0.0
        (out / "a").mkdir(exist_ok=True)
        n = args.notebook_configs or len(configs)
        picked = sorted({round(i * (len(configs) - 1) / max(1, n - 1)) for i in range(n)})
        for k in picked:
            overrides = configs[k]
            target = out / "a" / f"{k}.json"
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--json", str(target), "--notebook-job",
                            *overrides, *extra], cwd=ROOT, check=True, capture_output=True)
            startup += json.loads(target.read_text())["startup_s"]
        measured = time.time() - t0
        wall = measured * len(configs) / len(picked)  # the grid's processes, each as long as the measured ones
        label = f"(a) notebooks, {len(configs)} processes" + (
            f" ({len(picked)} measured: {measured:.0f} s, scaled x{len(configs) / len(picked):g})"
            if len(picked) < len(configs) else "")
        rows.append((label, wall, startup / measured))
    packs = [(way, label, name, [m.format(n=len(configs)) for m in more]) for way, label, name, more in PACKED
             if way in args.ways]
    for _, label, name, more in (("b", "(b) medsweep solo jobs", "solo", []), *packs):
        wall = medsweep_sweep(sweep_overrides(args.grid), out, name, extra + more)
        recs = records(out, name)
        starts = {r["train"]["startup_s"] for r in recs.values()} if more else \
            [r["train"]["startup_s"] for r in recs.values()]
        rows.append((label, wall, sum(s or 0.0 for s in starts) / wall))
    solo = records(out, "solo")
    lines = ["| way | wall s | configs/hour | start-up share |", "|---|---|---|---|"]
    for label, wall, share in rows:
        lines.append(f"| {label} | {wall:.0f} | {len(configs) * 3600 / wall:.1f} | {share:.0%} |")
    by = {label[:3]: wall for label, wall, _ in rows}
    lines.append("")
    solo_train = sum(r["train"]["train_time_s"] for r in solo.values())
    config_steps = sum(r["train"]["steps"] for r in solo.values())
    for way, _, name, _ in packs:
        versus = f"({way}) vs (a): {by['(a)'] / by[f'({way})']:.2f}x faster; " if "(a)" in by else ""
        lines.append(f"{versus}({way}) vs (b): {by['(b)'] / by[f'({way})']:.2f}x")
        lines += _versus_solo(solo, records(out, name), way, solo_train, config_steps, metrics.QUALITY)
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
