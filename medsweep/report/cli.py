"""The ``medsweep-report`` command line and ``report_sweep``: collect the run records under the given paths, write
figures, tables, ``report.md`` and a self-contained ``report.html`` to ``<out>/report/`` (``write_report``), print
the report (rendered with rich on a terminal), optionally log it to W&B, print the base -> stage 1 -> stage 2 table
of a continued fine-tuning chain (``--stages``), or compare two runs or configurations item by item (``--compare``,
compare.py). User errors are one line on stderr with exit code 2 (or the error's own ``exit_code``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medsweep.errors import MedsweepError
from medsweep.report.answers import extremes
from medsweep.report.collect import collect
from medsweep.report.compare import TOP, run_compare
from medsweep.report.figures import write_figures
from medsweep.report.html import write_html
from medsweep.report.tables import _atomic_write, _check_metric, stages, to_markdown, views, write_tables
from medsweep.report.wandb_upload import log_wandb


def report_sweep(sweep_dir, metric: str = "f1") -> Path:
    """Collect a sweep, write figures, tables and report.html to ``sweep_dir/report``; return report.md."""
    return write_report(collect([str(sweep_dir)]), sweep_dir, metric=metric)


def write_report(df, out: Path | str, by: list[str] | None = None, metric: str = "f1") -> Path:
    """Figures, tables, report.md and report.html of the runs ``df`` in ``out/report``; return report.md."""
    figures = write_figures(df, out, metric, heat_axes=by)
    computed = views(df, by, metric)
    report = write_tables(df, out, by=by, metric=metric, figures=figures, computed=computed)[-1]
    write_html(df, out, computed, figures, extremes(df))
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medsweep-report", description="Tables and figures for medsweep run records.",
        epilog="examples: medsweep-report results/sweeps/s --compare lora.r=4 lora.r=16;  "
               "medsweep-report results/sweeps/s --compare base lora.r=16;  "
               "medsweep-report --compare results/runs/a results/runs/b")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="sweep dirs, run dirs or globs (searched recursively)")
    p.add_argument("--by", nargs="+", metavar="AXIS", help="axes of the pivot table/heatmap")
    p.add_argument("--metric", default="f1", help="metric for pivot, best config, figures")
    p.add_argument("--out", help="output dir (report/ is created in it); "
                                 "default: the first PATH if it is a directory")
    p.add_argument("--wandb", action="store_true", help="also log tables to W&B")
    p.add_argument("--stages", action="store_true", help="PATH is the last run of a continued fine-tuning chain "
                   "(train.init_adapter): print base -> stage 1 -> stage 2 on the same held-out questions")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="compare B with A item by item (difference B - A, 95%% interval, paired sign-flip p, the items "
                        "where they differ most); A and B are each a run dir (a dir of one configuration's seeds), "
                        "axis=value[,axis=value] selecting one configuration among the PATH runs (e.g. lora.r=16 "
                        "or model=smollm2_135m,lora.r=4), or 'base': the base model of the other side's runs. "
                        "Written to <out>/report/compare_<A>_vs_<B>.md when PATH is a sweep dir or --out is given")
    p.add_argument("--top", type=int, default=TOP, metavar="N",
                   help=f"--compare: show the N items where A and B differ most (default {TOP})")
    return p


def _print_markdown(text: str) -> None:
    """Rich rendering on a terminal, the plain markdown otherwise."""
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.markdown import Markdown
            Console().print(Markdown(text))
            return
        except ImportError:
            pass
    print(text)


def main(argv=None) -> int:
    """CLI entry point; returns 0 on success, 2 (one line on stderr) on a user error."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.paths and (args.stages or not args.compare):
        parser.error("the following arguments are required: PATH")
    if args.top < 1:
        parser.error(f"--top must be at least 1, got {args.top}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="medsweep-report: %(message)s")
    try:
        if args.stages:
            table = to_markdown(stages(args.paths[0]))
            print(table)
            if args.out:
                _atomic_write(Path(args.out) / "stages.md", table + "\n")
            return 0
        if args.compare:
            out = Path(args.out) if args.out else (
                Path(args.paths[0]) if args.paths and Path(args.paths[0]).is_dir() else None)
            a, b = args.compare
            text, written = run_compare(args.paths, a, b, metric=args.metric, top=args.top, out=out)
            _print_markdown(text)
            if written:
                print(f"medsweep-report: wrote {written}", file=sys.stderr)
            return 0
        df = collect(args.paths)
        _check_metric(df, args.metric)
        out = Path(args.out) if args.out else (
            Path(args.paths[0]) if Path(args.paths[0]).is_dir() else Path.cwd())
        report = write_report(df, out, by=args.by, metric=args.metric)
        _print_markdown(report.read_text(encoding="utf-8"))
        if args.wandb:
            log_wandb(df, args.metric)
    except MedsweepError as e:
        print(f"medsweep-report: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    print(f"medsweep-report: wrote {report}", file=sys.stderr)
    return 0
