"""How fast `medsweep -m ... --plan` plans a sweep: jobs/s for grids of 100, 1,000 and 10,000 jobs.

Each grid is a sweep over existing keys (model x profile: 4 structures; LoRA rank, alpha and dropout; train.seed;
train.lr), planned by the console script in a subprocess (imports, pre-flight, Hydra's sweeper, the launcher's
plan and its table: what a user waits for), with `output_root` in a temporary directory. Nothing is submitted.

    python scripts/plan_bench.py                         # 100, 1000, 10000 jobs
    python scripts/plan_bench.py --sizes 100 1000 --no-cache
    python scripts/plan_bench.py --sizes 100 --baseline /tmp/medsweep-before   # another checkout, same grids
    python scripts/plan_bench.py --first-submit --sizes 1000                    # local launcher, until the first job

--no-cache plans as before the composition cache: MEDSWEEP_PLAN_CACHE=0 and Hydra's basic sweeper (every job
composed twice). --baseline DIR runs the medsweep checkout at DIR (e.g. `git archive <commit>` of an older one)
on the same grids, after this one. --timeout stops a size that runs longer (it is reported, the larger ones skipped).

--first-submit: the seconds from the command's start to the launcher's first `submitted as` line of a real sweep
(no --plan) on the local launcher, on the same grids with the CPU profile (`profile=local_cpu` in place of the two GPU
profiles, and two sequence lengths to keep the job count). submitit's executor is replaced by a stand-in that takes the
jobs without starting them, and the process ends at that first line: imports, pre-flight, the plan of every job, the
table, the grouping into arrays, the first array handed over.
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


# `python -c` driver of --first-submit: the console script with submitit's executor replaced; exits at the first
# `submitted as` line (a logging filter on the launcher's logger sees it before any handler prints it)
FIRST_SUBMIT = """
import logging, os, sys
import submitit

class Handle:
    def __init__(self, i):
        self.job_id = str(i)

class Executor:
    def __init__(self, folder, cluster=None, **kwargs):
        pass
    def update_parameters(self, **kwargs):
        pass
    def submit(self, fn, *args):
        return Handle(args[2])
    def map_array(self, fn, *arrays):
        return [Handle(i) for i in arrays[2]]

def first(record):
    if "submitted as" in record.getMessage():
        print("FIRST-SUBMIT", record.getMessage(), flush=True)
        os._exit(0)
    return True

submitit.AutoExecutor = Executor
logging.getLogger("medsweep.launcher").addFilter(first)
sys.argv = ["medsweep", *sys.argv[1:]]
from medsweep.cli import main
main()
"""


def cpu_grid(size: int) -> list[str]:
    """GRIDS[size] on the CPU profile: the two GPU profiles become one, two sequence lengths keep the job count."""
    return [o if not o.startswith("profile=") else "profile=local_cpu" for o in GRIDS[size]] + [
        "train.max_seq_length=256,512"]


def plan(src: Path, size: int, cache: bool, timeout: float, first_submit: bool = False) -> tuple[float, str]:
    """Seconds of one `medsweep -m <grid> --plan` of `src` (or, first_submit, of a launch until its first
    submission); and '' or why it did not finish."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    extra = []
    if not cache:
        env["MEDSWEEP_PLAN_CACHE"] = "0"
        extra = ["hydra/sweeper=basic"]
    with tempfile.TemporaryDirectory(prefix="plan_bench_") as out:
        if first_submit:
            cmd = [sys.executable, "-c", FIRST_SUBMIT, "-m", *cpu_grid(size), *extra, f"output_root={out}"]
        else:
            cmd = [sys.executable, "-m", "medsweep", "-m", *GRIDS[size], *extra, f"output_root={out}", "plan=true"]
        tic = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return time.perf_counter() - tic, f"stopped after {timeout:.0f} s"
        seconds = time.perf_counter() - tic
    summary = re.search(r"^(\d+) jobs: ", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or not summary or int(summary.group(1)) != size \
            or (first_submit and "FIRST-SUBMIT" not in proc.stdout):
        return seconds, f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:200]}"
    return seconds, ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=sorted(GRIDS), choices=sorted(GRIDS))
    p.add_argument("--no-cache", action="store_true", help="every job composed by Hydra, twice (the old way)")
    p.add_argument("--baseline", type=Path, help="also plan with the medsweep checkout in this directory")
    p.add_argument("--timeout", type=float, default=600, help="seconds one plan may take")
    p.add_argument("--first-submit", action="store_true",
                   help="a local-launcher sweep (CPU profile) until its first submission, instead of --plan")
    args = p.parse_args()
    runs = [("this checkout" + (", no cache" if args.no_cache else ""), ROOT, not args.no_cache)]
    if args.baseline:
        runs.append((f"baseline {args.baseline}", args.baseline.resolve(), True))
    print(f"{'until the first submission' if args.first_submit else 'planned by':40} {'jobs':>6} {'seconds':>8} "
          f"{'jobs/s':>8}")
    for label, src, cache in runs:
        for size in args.sizes:
            seconds, failed = plan(src, size, cache, args.timeout, args.first_submit)
            rate = f"{size / seconds:8.1f}" if not failed else f"{'-':>8}"
            print(f"{label:40} {size:6d} {seconds:8.1f} {rate} {failed}".rstrip(), flush=True)
            if failed:
                break


if __name__ == "__main__":
    main()
