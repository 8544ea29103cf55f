"""How fast `medsweep -m ... --plan` plans a sweep: jobs/s for grids of 100, 1,000 and 10,000 jobs.

Each grid is a sweep over existing keys (model x profile: 4 structures; LoRA rank, alpha and dropout; train.seed;
train.lr), planned by the console script in a subprocess (imports, pre-flight, Hydra's sweeper, the launcher's
plan and its table: what a user waits for), with `output_root` in a temporary directory. Nothing is submitted.

    python scripts/plan_bench.py                         # 100, 1000, 10000 jobs
    python scripts/plan_bench.py --sizes 100 1000 --no-cache
    python scripts/plan_bench.py --sizes 100 --baseline /tmp/medsweep-before   # another checkout, same grids

--no-cache plans as before the composition cache: MEDSWEEP_PLAN_CACHE=0 and Hydra's basic sweeper (every job
composed twice). --baseline DIR runs the medsweep checkout at DIR (e.g. `git archive <commit>` of an older one)
on the same grids, after this one. --timeout stops a size that runs longer (it is reported, the larger ones skipped).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STRUCTURE = ["model=distilgpt2,smollm2_135m", "profile=1cpu_1a100,2cpu_1a100"]  # 4 compositions by Hydra
GRIDS = {
    100: [*STRUCTURE, "lora.r=4,8,16,32,64", "lora.alpha=8,16,32,64,128"],
    1000: [*STRUCTURE, "lora.r=4,8,16,32,64", "lora.alpha=8,16,32,64,128", "train.seed=0,1,2,3,4,5,6,7,8,9"],
    10000: [*STRUCTURE, "lora.r=4,8,16,32,64", "lora.alpha=8,16,32,64,128", "lora.dropout=0,0.1,0.25,0.5",
            "train.seed=0,1,2,3,4", "train.lr=1e-4,2e-4,3e-4,5e-4,1e-3"],
}


def jobs_of(grid: list[str]) -> int:
    n = 1
    for override in grid:
        n *= len(override.split("=", 1)[1].split(","))
    return n


for size, grid in GRIDS.items():
    assert jobs_of(grid) == size, (size, jobs_of(grid))


def plan(src: Path, size: int, cache: bool, timeout: float) -> tuple[float, str]:
    """Seconds of one `medsweep -m <grid> --plan` of `src`; and '' or why it did not finish."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    extra = []
    if not cache:
        env["MEDSWEEP_PLAN_CACHE"] = "0"
        extra = ["hydra/sweeper=basic"]
    with tempfile.TemporaryDirectory(prefix="plan_bench_") as out:
        cmd = [sys.executable, "-m", "medsweep", "-m", *GRIDS[size], *extra,
               f"output_root={out}", "plan=true"]
        tic = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return time.perf_counter() - tic, f"stopped after {timeout:.0f} s"
        seconds = time.perf_counter() - tic
    summary = re.search(r"^(\d+) jobs: ", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or not summary or int(summary.group(1)) != size:
        return seconds, f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:200]}"
    return seconds, ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=sorted(GRIDS), choices=sorted(GRIDS))
    p.add_argument("--no-cache", action="store_true", help="every job composed by Hydra, twice (the old way)")
    p.add_argument("--baseline", type=Path, help="also plan with the medsweep checkout in this directory")
    p.add_argument("--timeout", type=float, default=600, help="seconds one plan may take")
    args = p.parse_args()
    runs = [("this checkout" + (", no cache" if args.no_cache else ""), ROOT, not args.no_cache)]
    if args.baseline:
        runs.append((f"baseline {args.baseline}", args.baseline.resolve(), True))
    print(f"{'planned by':40} {'jobs':>6} {'seconds':>8} {'jobs/s':>8}")
    for label, src, cache in runs:
        for size in args.sizes:
            seconds, failed = plan(src, size, cache, args.timeout)
            rate = f"{size / seconds:8.1f}" if not failed else f"{'-':>8}"
            print(f"{label:40} {size:6d} {seconds:8.1f} {rate} {failed}".rstrip(), flush=True)
            if failed:
                break


if __name__ == "__main__":
    main()
