"""Logging the report to Weights & Biases: the Table 4 view and the full run table as two ``wandb.Table`` objects
of one run with ``job_type="report"`` (``medsweep-report --wandb``). Named so as not to shadow the ``wandb`` package;
wandb is imported on use, and a missing package or a failed ``wandb.init`` is a one-line MedsweepError.
"""

from __future__ import annotations

import os

import pandas as pd

from medsweep.errors import MedsweepError
from medsweep.report.tables import by_model, runs_table


def log_wandb(df: pd.DataFrame, metric: str = "f1") -> None:
    """Log the Table 4 view and the full run table to one W&B run (job_type="report")."""
    try:
        import wandb
    except ImportError as e:
        raise MedsweepError("--wandb needs the wandb package (pip install wandb)") from e

    def table(view: pd.DataFrame):
        view = view.reset_index() if view.index.names[0] is not None else view
        return wandb.Table(dataframe=view.astype(object).where(view.notna(), None))

    try:
        run = wandb.init(job_type="report",
                         project=os.environ.get("WANDB_PROJECT", "medsweep"))
    except Exception as e:  # e.g. online mode without a login
        raise MedsweepError(f"wandb.init failed (set WANDB_MODE=offline?): {e}") from e
    run.log({"by_model": table(by_model(df, metric)), "runs": table(runs_table(df))})
    run.finish()
