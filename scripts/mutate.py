"""Mutation testing of medsweep's outer modules with mutmut: does a green suite mean the features work?

    make mutate                                   # all outer modules, their own tests
    .venv/bin/python scripts/mutate.py report fit # some modules
    .venv/bin/python scripts/mutate.py fit --show # print the diff of every unexplained survivor

mutmut copies the code into `<workdir>/mutants/`, changes one operator, constant or call at a time, and runs the
tests that cover the changed function. A mutant the tests do not notice "survives". Survivors that cannot change
behaviour (equivalent mutants) are named, with the reason, in tests/equivalent_mutants.txt; every other survivor
is a test to write. The score per module is killed / (mutants - named equivalents).

The work happens in a scratch copy (default results/mutation/), so the checkout and its `mutants/` stay clean and
two runs over different modules can go on side by side with different --workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENTS = ROOT / "tests" / "equivalent_mutants"
COPIED = ("medsweep", "conf", "hydra_plugins", "scripts", "tests", "pyproject.toml")

# Which tests may kill the mutants of each module; mutmut narrows them further to the tests that call each function.
# Tests that need the live SLURM or a Label Studio server are left out (mutmut runs thousands of short test runs).
TESTS: dict[str, list[str]] = {
    "report": ["tests/test_report.py"],
    "synth": ["tests/test_synth.py"],
    "synth_text": ["tests/test_synth.py"],  # split out of synth: the cleaning and grounding rules
    "generators": ["tests/test_synth.py"],  # split out of synth: the local and OpenAI-compatible generators
    # the decode loop evaluation and synth share: evaluate.generate's tests (test_zoo: the stop token ends and
    # counts) and the local generator's
    # and the judge's next-token probabilities (test_judge: the tiny Llama's shared-prefix and batching tests), and
    # a pack's copies of each batch (test_mixed); test_generation: positions, special tokens, the cache keyword
    "generation": ["tests/test_generation.py", "tests/test_evaluate.py", "tests/test_speed_paths.py",
                   "tests/test_zoo.py", "tests/test_synth.py", "tests/test_judge.py", "tests/test_mixed.py"],
    "sweep": ["tests/test_sweep.py", "tests/test_launcher.py"],
    # test_typedjobs: the plan table of a long sweep (plan_table with PLAN_ROWS lowered)
    "launcher": ["tests/test_launcher.py", "tests/test_launcher_local_gpus.py", "tests/test_cli.py",
                 "tests/test_typedjobs.py"],
    "fit": ["tests/test_fit.py", "tests/test_launcher.py"],  # launcher: the plan of the published grid
    "record": ["tests/test_run_ids.py", "tests/test_errors.py", "tests/test_record.py", "tests/test_cli.py"],
    "labelstudio": ["tests/test_labelstudio.py"],
    "export": ["tests/test_export.py", "tests/test_synth.py"],  # synth's generators load a model dir through export
    "gguf_writer": ["tests/test_export.py"],  # split out of export: the GGUF files export writes
    "ollama": ["tests/test_export.py"],  # split out of export: the Modelfile
    # the sweep's planning and detached submission (issue 16's modules)
    "compose": ["tests/test_compose.py", "tests/test_typedjobs.py"],
    "typedjobs": ["tests/test_typedjobs.py", "tests/test_compose.py", "tests/test_launcher.py"],
    "submit": ["tests/test_submit.py", "tests/test_launcher.py", "tests/test_progress.py"],
    "slurm": ["tests/test_slurm_queries.py", "tests/test_status.py"],
    "verdict": ["tests/test_verdict.py", "tests/test_status.py"],
    "status": ["tests/test_status.py"],
    "progress_file": ["tests/test_progress.py", "tests/test_status.py"],
}
# Modules whose mutation runs leave out the tests marked `slow` (pytest -m "not slow"): the end-to-end runs of
# medsweep-export and medsweep-synth (a training run and the command in subprocesses, SmolLM2 generating), which
# mutmut would otherwise run for every mutant of the functions they call in-process. The fast tests of these modules
# check what those check (a mutant only the slow tests would notice shows up as a survivor); `make test` runs all.
FAST_ONLY = {"export", "gguf_writer", "ollama", "synth", "synth_text", "generators", "generation"}
# mutmut's exit codes; -11: the mutant crashed the test process (SIGSEGV inside torch), which the tests notice
STATUS = {1: "killed", 3: "killed", -11: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 37: "killed",
          None: "not checked"}


def equivalents() -> dict[str, str]:
    """tests/equivalent_mutants/<module>.txt: `<mutant name>  # why it cannot change behaviour`, one per line."""
    named: dict[str, str] = {}
    for path in sorted(EQUIVALENTS.glob("*.txt")):
        for line in path.read_text().splitlines():
            name, _, why = line.partition("#")
            if name.strip():
                named[name.strip()] = why.strip()
    return named


def is_package(module: str) -> bool:
    return (ROOT / "medsweep" / module / "__init__.py").is_file()


def sources(module: str) -> str:
    """The files of a module as an only_mutate pattern: medsweep/<module>.py, or for a package medsweep/<module>/
    all of its files (mutmut matches with fnmatch, whose * also spans folders: subpackages included)."""
    return f"medsweep/{module}/*.py" if is_package(module) else f"medsweep/{module}.py"


def metas(workdir: Path, module: str) -> list[Path]:
    """mutmut's result files of a module: mutants/medsweep/<module>.py.meta, or one per file of a package."""
    if is_package(module):
        return sorted((workdir / "mutants" / "medsweep" / module).rglob("*.py.meta"))
    meta = workdir / "mutants" / "medsweep" / f"{module}.py.meta"
    return [meta] if meta.exists() else []


def prepare(workdir: Path, modules: list[str], fresh: bool) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    if fresh:
        shutil.rmtree(workdir / "mutants", ignore_errors=True)
    for name in COPIED:
        src, dst = ROOT / name, workdir / name
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    tests = sorted({t for m in modules for t in TESTS.get(m, []) if (ROOT / t).exists()})
    markers = "not slurm and not labelstudio" + (" and not slow" if set(modules) <= FAST_ONLY else "")
    settings = {
        "source_paths": ["medsweep/"],
        "only_mutate": [sources(m) for m in modules],
        "also_copy": ["conf/", "hydra_plugins/", "scripts/"],
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", "-m", markers],
        # each mutant's tests run in a process forked from one that has imported the tests but run none: forked
        # from mutmut's own process, which ran the whole suite first, a child's first torch operation could wait
        # forever on a lock a thread of the parent held (the export mutants' "timeouts")
        "process_isolation": "forkserver",
        # a mutant's wall-clock limit is (its tests' time on an idle machine + 1 s) x this (mutmut's default 15):
        # on this shared 2-core machine a busy neighbour stretched unchanged tests past 15x (false timeouts). A
        # looping mutant is still stopped by its CPU-time limit, twice this multiple of the same estimate.
        "timeout_multiplier": 60,
    }
    pyproject = (workdir / "pyproject.toml").read_text().split("\n[tool.mutmut]")[0]
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    (workdir / "pyproject.toml").write_text(pyproject.rstrip() + "\n" + "\n".join(lines) + "\n")


def results(workdir: Path, modules: list[str]) -> dict[str, dict[str, str]]:
    """mutant name -> status, per module, from mutmut's .meta files."""
    out: dict[str, dict[str, str]] = {}
    for module in modules:
        codes: dict[str, int | None] = {}
        for meta in metas(workdir, module):
            codes.update(json.loads(meta.read_text())["exit_code_by_key"])
        out[module] = {name: STATUS.get(code, "suspicious") for name, code in codes.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=list(TESTS), help="modules of medsweep/ (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "results" / "mutation")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep", action="store_true", help="reuse the previous run's verdicts where mutmut can")
    parser.add_argument("--report-only", action="store_true", help="summarise the last run without running")
    parser.add_argument("--show", action="store_true", help="print the diff of every unexplained survivor")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if not (ROOT / "medsweep" / f"{m}.py").exists() and not is_package(m)]
    if unknown:
        print(f"error: no module medsweep/{unknown[0]}.py or package medsweep/{unknown[0]}/", file=sys.stderr)
        return 2
    mutmut = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           # the copy under results/ has no ../shared/data of its own: tests that need the real data would skip
           "MEDSWEEP_SHARED_DATA": str(ROOT.parent / "shared" / "data")}
    if not args.report_only:
        prepare(args.workdir, args.modules, fresh=not args.keep)
        done = subprocess.run([str(mutmut), "run", "--max-children", str(args.max_children)], cwd=args.workdir,
                              env=env, stdout=subprocess.DEVNULL)
        if done.returncode:
            print(f"error: mutmut exited {done.returncode} (run it in {args.workdir} to see why)", file=sys.stderr)
            return done.returncode

    named = equivalents()
    unexplained: list[str] = []
    print(f"{'module':<12} {'mutants':>7} {'killed':>7} {'equiv.':>7} {'survived':>8} {'no tests':>8} "
          f"{'timeout':>7} {'score':>6}")
    for module, statuses in results(args.workdir, args.modules).items():
        counts = Counter(statuses.values())
        survivors = [n for n, s in statuses.items() if s in ("survived", "no tests")]
        equiv = [n for n in survivors if n in named]
        unexplained += [n for n in survivors if n not in named]
        scored = len(statuses) - len(equiv)
        score = f"{100 * counts['killed'] / scored:.0f}%" if scored else "-"
        print(f"{module:<12} {len(statuses):>7} {counts['killed']:>7} {len(equiv):>7} "
              f"{counts['survived'] - sum(statuses[n] == 'survived' for n in equiv):>8} "
              f"{counts['no tests'] - sum(statuses[n] == 'no tests' for n in equiv):>8} {counts['timeout']:>7} "
              f"{score:>6}")
    stale = [n for n in named if n.split(".")[1] in args.modules
             and all(n not in s for s in results(args.workdir, args.modules).values())]
    if stale:
        print(f"\n{len(stale)} named equivalent(s) no longer exist (code changed): {', '.join(stale[:5])} ...")
    if unexplained:
        print(f"\n{len(unexplained)} unexplained survivor(s):")
        for name in unexplained:
            print(f"  {name}")
            if args.show:
                shown = subprocess.run([str(mutmut), "show", name], cwd=args.workdir, env=env,
                                       capture_output=True, text=True)
                print("    " + shown.stdout.strip().replace("\n", "\n    "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
