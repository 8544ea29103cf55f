"""What a reader needs to know to read each figure of the report, under it in report.md and report.html (by the
figure file's name, as figures.py writes it)."""

from __future__ import annotations

from pathlib import Path

CAPTIONS = {  # by the file name's start: what a reader needs to know to read the figure
    "metric_vs_epoch": "One line per configuration (mean over its seeds); band: 95% Student-t interval over "
                       "seeds; a configuration with a single run has a 95% bootstrap interval over eval examples "
                       "at its last epoch (the per-epoch records keep no per-example scores).",
    "heatmap": "Mean over the runs of each cell; marks of the paired tests (the tables' `best` column): * best, "
               "every other cell worse; *= best, tied with the cells marked †; *? best, untested.",
    "quality_vs_cost": "One point per configuration (mean, 95% interval); the Pareto front joins the "
                       "configurations no other one beats on both quality and cost, and names them.",
    "latency_by_profile": "Mean seconds per answer of the runs of each profile and model; error bars: 95% "
                          "Student-t interval over the runs (cut at 0); dots: the runs.",
}


def caption(path) -> str:
    """The caption of a figure written by write_figures (by its file name), or ''."""
    stem = Path(path).stem
    return next((text for start, text in CAPTIONS.items() if stem.startswith(start)), "")
