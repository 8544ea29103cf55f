"""Reporting: collect the run records of a sweep into tables, figures and a Markdown report. ``collect`` finds and
reads run directories into a DataFrame (one row per run; unfinished and corrupt runs are listed as failures, never
crash the report), ``stats`` computes 95% confidence intervals (Student-t over seeds, or a percentile bootstrap over
eval examples for a single run), ``tables`` builds and writes the views (Table 4: the best configuration per model;
all configurations; a pivot; latency by profile; failures; the stages of a continued fine-tuning chain),
``figures`` draws the PNG figures, ``wandb_upload`` logs the tables to W&B, and ``cli`` is the ``medsweep-report``
command (``main``) and ``report_sweep`` (collect + figures + tables of one sweep, returns its report.md). Every
function is re-exported here, so ``medsweep.report.X`` is the one name to call and to replace: the CLI, the W&B
upload and the figures' plot functions (for ``_save``) look the functions they call up on this package.
"""

from medsweep.report.cli import _parser as _parser
from medsweep.report.cli import _print_markdown as _print_markdown
from medsweep.report.cli import main, report_sweep
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
from medsweep.report.collect import _as_dict as _as_dict
from medsweep.report.collect import _eval_set as _eval_set
from medsweep.report.collect import _expand as _expand
from medsweep.report.collect import _integral_to_int as _integral_to_int
from medsweep.report.collect import _number as _number
from medsweep.report.collect import _related as _related
from medsweep.report.figures import _epoch_frame as _epoch_frame
from medsweep.report.figures import _figure as _figure
from medsweep.report.figures import _save as _save
from medsweep.report.figures import (
    plot_heatmap,
    plot_latency_by_profile,
    plot_metric_vs_epoch,
    write_figures,
)
from medsweep.report.stats import _T975 as _T975
from medsweep.report.stats import N_BOOT, bootstrap_interval, summarize, t_critical, t_interval
from medsweep.report.stats import _ci_label as _ci_label
from medsweep.report.stats import _delta as _delta
from medsweep.report.stats import _interval as _interval
from medsweep.report.stats import _per_example as _per_example
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
from medsweep.report.tables import _atomic_write as _atomic_write
from medsweep.report.tables import _cell as _cell
from medsweep.report.tables import _check_axes as _check_axes
from medsweep.report.tables import _check_metric as _check_metric
from medsweep.report.tables import _mark_best as _mark_best
from medsweep.report.tables import _num as _num
from medsweep.report.tables import _present as _present
from medsweep.report.tables import _summary_line as _summary_line
from medsweep.report.wandb_upload import log_wandb

__all__ = [
    "CI_NOTE", "LATENCY", "NOT_AXES", "N_BOOT", "SCALE", "SEED", "TABLE4",
    "axis_columns", "bootstrap_interval", "by_config", "by_model", "by_profile", "collect", "complete",
    "config_axes", "display", "failures", "find_run_dirs", "log_wandb", "main", "malformed", "pivot",
    "plot_heatmap", "plot_latency_by_profile", "plot_metric_vs_epoch", "read_run", "report_sweep", "runs_table",
    "stage_chain", "stages", "summarize", "t_critical", "t_interval", "to_latex", "to_markdown", "varying_axes",
    "views", "write_figures", "write_tables",
]
