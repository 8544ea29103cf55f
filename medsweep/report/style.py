"""The one look of the report's figures: a small rc dict applied around every figure function (``styled``), figure
sizes of a paper's column (3.5 in) or page (7 in), the PNG rendering, the value range of a metric's axis (never
zoomed onto noise: a minimum span of a tenth of the metric's full range, or of a fifth of its size when it has
none), and the labels of configurations and metrics that every figure writes the same way.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from medsweep import metrics as registry
from medsweep.report.tables import _num

COLUMN, PAGE = 3.5, 7.0  # inches: one column, the full width of a two-column paper
DPI = 200
# Okabe & Ito's palette: distinguishable with the common colour-vision deficiencies and in greyscale print.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
STYLE: dict[str, Any] = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "axes.grid.axis": "y", "grid.color": "#dddddd", "grid.linewidth": 0.5,
    "axes.axisbelow": True, "lines.linewidth": 1.3, "lines.markersize": 4, "errorbar.capsize": 2,
    "image.cmap": "viridis", "savefig.dpi": DPI, "savefig.bbox": "tight", "savefig.pad_inches": 0.03,
}
CMAP = "viridis"  # the heatmap's scale, whatever matplotlib's defaults say

F = TypeVar("F", bound=Callable[..., Any])


def styled(function: F) -> F:
    """Draw inside the report's rc settings: matplotlib reads them when an artist is made."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import matplotlib
        from cycler import cycler

        with matplotlib.rc_context(cast(Any, {**STYLE, "axes.prop_cycle": cycler(color=PALETTE)})):
            return function(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def new_figure(width: float, height: float, ncols: int = 1):
    """A Figure on the Agg canvas (no pyplot global state) and its axes (one, or a row of ``ncols``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=ncols == 1)


def png(fig) -> bytes:
    """The figure rendered as PNG (DPI and tight bounding box from STYLE)."""
    import matplotlib

    out = io.BytesIO()
    with matplotlib.rc_context(cast(Any, STYLE)):
        fig.savefig(out, format="png")
    return out.getvalue()


def metric_label(metric: str) -> str:
    """The metric's name in the registry (``F1``, ``EM %``), or the column name."""
    return registry.label(metric)


def scale(metric: str) -> float:
    """What the tables multiply the metric by (EM in percent); figures show the same numbers."""
    return registry.SCALE.get(metric, 1.0)


def value_limits(values: Iterable[float], metric: str) -> tuple[float, float]:
    """Axis limits around ``values`` (already scaled) of ``metric``: at least a tenth of its full range (F1: 0.1,
    BLEU: 10), or a fifth of the largest value for a metric without one, so that seed noise does not fill the
    figure; inside [0, full range] for registry metrics (all of them are non-negative)."""
    known = registry.BY_NAME.get(metric)
    upper = known.upper * scale(metric) if known is not None and known.upper is not None else None
    finite = [v for v in values if math.isfinite(v)]
    if known is not None:  # an interval reaching past what the metric can take is cut where the metric ends
        finite = [min(max(v, 0.0), upper if upper is not None else v) for v in finite]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    floor = 0.1 * upper if upper is not None else 0.2 * max(abs(lo), abs(hi)) or 1.0
    span = max(hi - lo, floor) * 1.1
    low, high = (lo + hi - span) / 2, (lo + hi + span) / 2
    if known is not None and low < 0 <= lo:
        low, high = 0.0, high - low
    if upper is not None and high > upper >= hi:
        low, high = max(0.0, low - (high - upper)), upper
    return low, high


def config_label(values: dict[str, Any]) -> str:
    """``axis=value`` pairs of a configuration (``lora.r=4, lora.alpha=16``); a model is named by itself."""
    return ", ".join(_num(v) if axis == "model" else f"{axis}={_num(v)}" for axis, v in values.items()) or "all runs"


def legend_if_many(ax, title: str | None = None, **where: Any) -> None:
    """A legend only when there is more than one labelled series: one series is named by the title."""
    _, labels = ax.get_legend_handles_labels()
    if len(labels) > 1:
        ax.legend(title=title, **where)
