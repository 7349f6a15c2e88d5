"""PNG pictures of reports: per-parameter distributions of relative error on a log axis.

Needs matplotlib (the optional ``plot`` extra, imported only here and only when drawing).
Each parameter gets a column of its checked entries' relative errors (jittered points and a box),
the pass threshold ``rtol`` drawn across it, and failing parameters in red.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .files import replacing

#: A :class:`~gradprobe.report.model.Report`, read by attribute: plot never imports the model
#: (the model's ``plot`` method calls in here), so they make no circle.
Report = Any


#: Relative errors of exactly 0 are drawn here (a log axis has no 0).
ZERO_FLOOR = 1e-17
PASS_COLOR, FAIL_COLOR, THRESH_COLOR = "#1f77b4", "#d62728", "#555555"


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            'plotting needs matplotlib: pip install "gradprobe[plot]" (or pip install matplotlib).'
        ) from None
    return plt


def _draw(ax: Any, report: Report, title: str) -> None:
    params = list(report.params.values())
    ax.set_yscale("log")
    rng = np.random.default_rng(0)  # jitter only; fixed so the picture is reproducible
    for x, p in enumerate(params):
        color = PASS_COLOR if p.passed else FAIL_COLOR
        values = np.asarray(p.rel_errors, dtype=float)
        if values.size == 0 and p.n_checked:
            values = np.array([p.max_rel_error])  # report read from JSON: only the max is known
        values = np.where(np.isfinite(values), values, np.nan)
        values = np.clip(values, ZERO_FLOOR, None)
        shown = values[np.isfinite(values)]
        if shown.size:
            jitter = rng.uniform(-0.18, 0.18, shown.size)
            ax.scatter(x + jitter, shown, s=10, alpha=0.6, color=color, edgecolors="none", zorder=2)
            if shown.size >= 5:
                # Percentile whiskers: invariant under the log scale, unlike 1.5 IQR.
                ax.boxplot(
                    shown,
                    positions=[x],
                    widths=0.5,
                    whis=(5, 95),
                    showfliers=False,
                    manage_ticks=False,
                    medianprops={"color": color},
                    boxprops={"color": color},
                    whiskerprops={"color": color},
                    capprops={"color": color},
                )
        ax.hlines(p.rtol, x - 0.4, x + 0.4, colors=THRESH_COLOR, linestyles="--", zorder=3)
    ax.set_yscale("log")
    ax.set_xticks(range(len(params)))
    ax.set_xticklabels([f"{p.name}\n{'ok' if p.passed else 'FAIL'}" for p in params], fontsize=8)
    for label, p in zip(ax.get_xticklabels(), params, strict=True):
        label.set_color(PASS_COLOR if p.passed else FAIL_COLOR)
    ax.set_xlim(-0.6, len(params) - 0.4)
    ax.set_ylabel("relative error |a - n| / (|a| + |n|)")
    status = "passed" if report.passed else "FAILED"
    if not report.complete:
        status += " (incomplete)"
    ax.set_title(f"{title}{': ' if title else ''}{status}", fontsize=10)
    ax.grid(axis="y", which="major", alpha=0.3)


def plot_reports(reports: Mapping[str, Report], path: str | Path, *, dpi: int = 110) -> Path:
    """Write one PNG with a panel per report.

    Parameters
    ----------
    reports : mapping of str to Report
        Panel titles to reports (e.g. a suite's checks).
    path : str or Path
        Where to write the PNG.
    dpi : int
        Resolution.

    Returns
    -------
    Path
        ``path``.
    """
    plt = _pyplot()
    fig = _figure(reports)
    out = Path(path)
    try:
        with replacing(out) as tmp:  # whole or not at all: a failed write keeps the old file
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return out


def _figure(reports: Mapping[str, Report]) -> Any:
    """The figure :func:`plot_reports` saves (a pyplot figure; the caller closes it)."""
    if not reports:
        raise InvalidInputError("plot: expected at least one report, found none.")
    plt = _pyplot()
    from matplotlib.lines import Line2D

    n = len(reports)
    cols = min(n, 2)
    rows = -(-n // cols)
    widest = max(len(r.params) for r in reports.values())
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(max(4.5, 0.7 * widest + 2.0) * cols, 3.6 * rows),
        squeeze=False,
    )
    for ax, (title, report) in zip(axes.flat, reports.items(), strict=False):
        _draw(ax, report, title)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], marker="o", ls="", color=PASS_COLOR, label="entries of a passing parameter"),
        Line2D([], [], marker="o", ls="", color=FAIL_COLOR, label="entries of a failing parameter"),
        Line2D([], [], ls="--", color=THRESH_COLOR, label="pass threshold rtol"),
    ]
    _legend_and_footnote(fig, handles)
    return fig


#: Footnote under the legend (wrapped to two lines on narrow figures).
FOOTNOTE = (
    "Entries above rtol may still pass when their difference is below the round-off floor; "
    f"exact zeros drawn at {ZERO_FLOOR:g}."
)


def _legend_and_footnote(fig: Any, handles: list[Any]) -> None:
    """The legend and the footnote stacked under the panels, placed in inches from the bottom
    edge so they never overlap each other or the axes, whatever the figure's size."""
    width, height = fig.get_size_inches()
    lines = 1 if width >= 7.5 else 2
    note = FOOTNOTE if lines == 1 else FOOTNOTE.replace("; ", ";\n", 1)
    pad, line_h, legend_h = 0.06, 0.13, 0.28  # inches
    fig.text(0.5, pad / height, note, ha="center", va="bottom", fontsize=7, color=THRESH_COLOR)
    legend_at = (pad + lines * line_h + 0.04) / height
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, legend_at),
        ncol=3 if width >= 6 else 1,
        fontsize=8,
        frameon=False,
        borderaxespad=0.0,
    )
    legend_h = legend_h if width >= 6 else 3 * 0.19
    bottom = legend_at + (legend_h + 0.05) / height
    fig.tight_layout(rect=(0, bottom, 1, 1))


def plot_report(report: Report, path: str | Path, *, title: str = "", dpi: int = 110) -> Path:
    """Write a PNG of one report (see :func:`plot_reports`)."""
    return plot_reports({title: report}, path, dpi=dpi)
