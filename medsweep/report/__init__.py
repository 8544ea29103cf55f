"""Reporting: collect the run records of a sweep into tables, figures and a Markdown report. ``collect`` finds and
reads run directories into a DataFrame (one row per run; unfinished and corrupt runs are listed as failures, never
crash the report), ``stats`` computes 95% confidence intervals (Student-t over seeds, or a percentile bootstrap over
eval examples for a single run), ``paired`` the paired sign-flip test, its bootstrap interval and Holm's adjustment,
``items`` reads the per-item scores of runs from their prediction files, ``signif`` adds the paired tests and the
best/tied marks to a table, ``definitions`` compares the runs' metric definitions (a table whose runs differ gets no
significance marks), ``agreement`` the rank correlation of the quality metrics across configurations, ``tables``
builds and writes the views (Table 4: the best configuration per model; all configurations; a pivot; latency by
profile; failures; the stages of a continued fine-tuning chain), ``style`` is the figures' one look, ``pareto`` draws
quality against cost with its Pareto front, ``figures`` the other PNG figures, ``answers`` picks the best and worst
answers of the best configurations, ``html`` writes the self-contained report.html, ``compare`` compares two runs or
configurations item by item, ``wandb_upload`` logs the tables to W&B, and ``cli`` is the ``medsweep-report`` command
(``main``) and ``report_sweep`` (collect + figures + tables of one sweep, returns its report.md). The public functions
are re-exported here (``medsweep.report.X``); the modules import each other directly, in that order, so the package
has no import cycle.
"""

from medsweep.report.agreement import metric_agreement
from medsweep.report.answers import Answer, Extremes, extremes
from medsweep.report.captions import caption
from medsweep.report.cli import main, report_sweep, write_report
from medsweep.report.collect import (
    LATENCY,
    NOT_AXES,
    SCALE,
    SEED,
    TABLE4,
    axis_columns,
    collect,
    complete,
    config_axes,
    find_run_dirs,
    malformed,
    read_run,
    stage_chain,
    varying_axes,
)
from medsweep.report.compare import Side, compare, run_compare, select, sides
from medsweep.report.definitions import Definitions
from medsweep.report.definitions import of as definitions_of
from medsweep.report.figures import (
    heatmap_cells,
    heatmap_pairs,
    plot_heatmap,
    plot_latency_by_profile,
    plot_metric_vs_epoch,
    write_figures,
)
from medsweep.report.html import write_html
from medsweep.report.items import ITEM_METRICS, TESTABLE, NoItems, NoPredictions, items_of, matched, read_items
from medsweep.report.paired import ALPHA, N_RESAMPLES, Paired, holm, paired_interval, paired_test, sign_flip_p
from medsweep.report.pareto import pareto_front, plot_quality_vs_cost
from medsweep.report.signif import NOTE as SIGNIF_NOTE
from medsweep.report.signif import annotate
from medsweep.report.stats import N_BOOT, bootstrap_interval, summarize, t_critical, t_interval
from medsweep.report.tables import (
    CI_NOTE,
    by_config,
    by_model,
    by_profile,
    display,
    failures,
    pivot,
    runs_table,
    stages,
    to_latex,
    to_markdown,
    views,
    write_tables,
)
from medsweep.report.wandb_upload import log_wandb

__all__ = [
    "ALPHA", "CI_NOTE", "ITEM_METRICS", "LATENCY", "NOT_AXES", "N_BOOT", "N_RESAMPLES", "SCALE", "SEED",
    "SIGNIF_NOTE", "TABLE4", "TESTABLE",
    "Answer", "Definitions", "Extremes", "NoItems", "NoPredictions", "Paired", "Side",
    "annotate", "caption", "definitions_of", "extremes", "heatmap_cells", "heatmap_pairs", "metric_agreement",
    "pareto_front", "plot_quality_vs_cost", "write_html", "write_report",
    "axis_columns", "bootstrap_interval", "by_config", "by_model", "by_profile", "collect", "compare",
    "complete", "config_axes", "display", "failures", "find_run_dirs", "holm", "items_of", "log_wandb", "main",
    "malformed", "matched", "paired_interval", "paired_test", "pivot", "plot_heatmap", "plot_latency_by_profile",
    "plot_metric_vs_epoch", "read_items", "read_run", "report_sweep", "run_compare", "runs_table", "select", "sides",
    "sign_flip_p", "stage_chain", "stages", "summarize", "t_critical", "t_interval", "to_latex", "to_markdown",
    "varying_axes", "views", "write_figures", "write_tables",
]
