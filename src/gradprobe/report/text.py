"""Reports as text a person reads in seconds: the summary line, the per-parameter table and,
for each failing parameter, a block in the style of ``numpy.testing.assert_allclose``.

Output is bounded: at most ``max_shown`` entries per failing parameter, whatever its size. This
module renders what it is given and never imports :mod:`gradprobe.report.model`, not even
for typing (the model's methods call in here; the limits arrive as arguments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: What is rendered: a :class:`~gradprobe.report.model.Report` and its
#: :class:`~gradprobe.report.model.ParamReport` rows, read by attribute only. They are named by
#: these aliases, not imported, so the model (which calls in here) and its text make no circle.
Report = Any
ParamReport = Any


def _fmt(x: float) -> str:
    return f"{x:.6g}" if math.isfinite(x) else str(x)


def _index_str(index: tuple[int, ...] | None) -> str:
    if index is None:
        return "-"
    return "[" + ", ".join(str(i) for i in index) + "]"


def align_columns(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, each line indented by two (the first row is the
    header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def summary_line(report: Report) -> str:
    """One line: passed, FAILED (a mismatch was found) or INCOMPLETE (the check stopped before
    finding one, with the reason), how many parameters failed, seed, evaluations, seconds."""
    n_fail = len(report.failures)
    meta = []
    if not report.complete and not n_fail:
        # Nothing failed, but the check did not finish: not a verdict on the gradient.
        parts = [f"gradprobe: gradient check INCOMPLETE: {report.incomplete_reason}"]
        k = report.n_finished
        meta.append(f"{k} parameter{'s' * (k != 1)} finished")
    else:
        status = "passed" if report.passed else "FAILED"
        parts = [f"gradprobe: gradient check {status}"]
        if n_fail:
            parts.append(f" — {n_fail} of {len(report.params)} parameters mismatched")
        if not report.complete:
            parts.append(f" (INCOMPLETE: {report.incomplete_reason})")
    total = report.timings.get("total")
    meta += [f"seed {report.seed}", f"{report.n_evaluations:,} loss evaluations"]
    if total is not None:
        meta.append(f"{total:.3g} s")
    return "".join(parts) + " (" + ", ".join(meta) + ")"


def _rel_cell(p: ParamReport) -> str:
    """The table's relative error: the classic maximum for a failure; for a pass, the maximum
    over entries resolvable above the round-off floor ("-" when none is)."""
    r = p.headline_rel_error
    return f"{r:.2e}" if not math.isnan(r) else "-"


def _verdict_cell(p: ParamReport) -> str:
    if not p.finished and not p.n_failed:
        return "unfinished"
    if not p.passed:
        return "FAIL" if p.diagnosis is None else f"FAIL ({p.diagnosis.kind})"
    notes = [f"{p.n_kinks} kinks"] if p.n_kinks else []
    if p.n_at_floor:
        notes.append(f"{p.n_at_floor} at noise floor")
    return f"ok ({', '.join(notes)})" if notes else "ok"


def param_table(report: Report) -> str:
    """The per-parameter table: shape, entries checked, max relative error, worst index, verdict."""
    if not report.params:
        return "  (no parameter was finished)"
    rows = [("parameter", "shape", "checked", "max rel err", "worst index", "verdict")]
    for p in report.params.values():
        checked = f"{p.n_checked:,} / {p.n_total:,}"
        if p.coverage is not None and p.coverage.n_probed:
            checked += " +probes"
        rows.append(
            (
                p.name,
                str(p.shape),
                checked,
                _rel_cell(p),
                _index_str(p.worst_index),
                _verdict_cell(p),
            )
        )
    return align_columns(rows)


def failure_block(p: ParamReport, *, max_shown: int, max_bad_indices: int) -> str:
    """The ``assert_allclose``-style block for a failing parameter (empty when it passed).

    The "Max absolute/relative difference" lines are over the entries shown below them (the
    report keeps at most ``max_shown`` entries, worst first), not over every violation.
    """
    if p.passed:
        return ""
    lines = [
        f"{p.name}: Not equal to tolerance rtol={p.rtol:g}, atol={p.atol:g} "
        f"(or the round-off floor; {p.method} differences, step {p.step:.3g})",
    ]
    if p.n_checked:
        pct = 100.0 * p.n_failed / p.n_checked
        lines.append(f"Mismatched elements: {p.n_failed} / {p.n_checked} checked ({pct:.3g}%)")
    if p.widespread:
        lines.append("Probes disagree across most of the parameter (widespread).")
    elif p.capped:
        lines.append(
            f"Probes disagree in more places than localization covers: more than "
            f"{len(p.bad_indices)} wrong entries (bad_indices keeps the first ones found)."
        )
    shown = list(p.failing_entries[:max_shown])
    if shown:
        lines.append(
            "Max absolute difference among the shown entries: "
            + _fmt(max(e.abs_error for e in shown))
            + "\nMax relative difference among the shown entries: "
            + _fmt(max(e.rel_error for e in shown))
        )
        for e in shown:
            lines.append(
                f"  {_index_str(e.index)}: analytic={_fmt(e.analytic)}, "
                f"numeric={_fmt(e.numeric)}, rel_err={e.rel_error:.3g}"
            )
    shown_indices = {e.index for e in shown}
    extra = [i for i in p.bad_indices if i not in shown_indices]
    if extra:
        more = ", ".join(_index_str(i) for i in extra[:max_shown])
        if len(extra) > max_shown:
            kept = len(p.bad_indices) >= max_bad_indices
            more += f", ... ({len(extra) - max_shown} more in bad_indices" + (
                f", which keeps the first {max_bad_indices})" if kept else ")"
            )
        lines.append(f"  other wrong entries (sampled or localized by probes): {more}")
    if p.diagnosis is not None:
        lines.append(
            f"  likely cause: {p.diagnosis.kind} — {p.diagnosis.detail} "
            f"(confidence {p.diagnosis.confidence:.0%})"
        )
    return "\n".join(lines)


def report_text(report: Report) -> str:
    """``str(report)``: summary line, table, failure blocks, coverage statements, warnings."""
    blocks = [summary_line(report), "", param_table(report)]
    for p in report.failures:
        blocks += ["", p.failure_text()]
    covered = [p for p in report.params.values() if p.coverage is not None]
    if covered:
        blocks += ["", "coverage:"] + [f"  {p.name}: {p.coverage.statement}" for p in covered]
    if report.warnings:
        blocks += ["", "warnings:"] + [f"  - {w}" for w in report.warnings]
    return "\n".join(blocks)


def failure_message(
    report: Report, *, title: str | None = None, table: bool = False, footer: str | None = None
) -> str:
    """The message of a :class:`GradientMismatchError`: the summary line, optionally the table,
    each failing parameter's block, and why the check did not complete when nothing failed.

    ``title`` goes first and ``footer`` last, each set apart by a blank line.
    """
    blocks = [] if title is None else [title, ""]
    blocks.append(summary_line(report))
    if table:
        blocks += ["", param_table(report)]
    for p in report.failures:
        blocks += ["", p.failure_text()]
    if not report.failures and not report.complete:
        blocks += ["", f"The check did not complete: {report.incomplete_reason}."]
    if footer is not None:
        blocks += ["", footer]
    return "\n".join(blocks)


def shown_failure_message(report: Report) -> str:
    """:meth:`Report.raise_for_failures`'s message for a report already shown: the summary
    line and each failing parameter with its likely cause, not their blocks again."""
    lines = [summary_line(report)]
    for p in report.failures:
        cause = "" if p.diagnosis is None else f" (likely cause: {p.diagnosis.kind})"
        lines.append(f"  {p.name}: {p.n_failed:,} of {p.n_checked:,} checked entries wrong{cause}")
    if not report.failures and not report.complete:
        lines.append(f"The check did not complete: {report.incomplete_reason}.")
    lines.append(
        "The report printed before this error shows each failure in full (str(report); "
        "report.failures holds them)."
    )
    return "\n".join(lines)


# -- notices ----------------------------------------------------------------------------------
def cost_notice(
    predicted: float, planned: int, seconds: float, timeout: float | None, budget: int | None
) -> str:
    """What a long check says before it starts: its predicted time and how to bound it, naming
    only the limits not already set (or that a limit that is set will stop it)."""
    head = (
        f"gradprobe: this check will take about {_duration(predicted)} "
        f"({planned:,} loss evaluations of ~{seconds * 1e3:.3g} ms); "
    )
    stop = None
    if timeout is not None and timeout < predicted:
        stop = f"its timeout={timeout:g}"
    elif budget is not None and budget < planned:
        stop = f"its budget={budget:,}"
    if stop is not None:
        return (
            f"{head}{stop} stops it before then, with a partial report; pass samples= (fewer "
            "entries) to finish within it."
        )
    hints = ["samples="] + [
        f"{name}=" for name, value in (("timeout", timeout), ("budget", budget)) if value is None
    ]
    listed = hints[0] if len(hints) == 1 else f"{', '.join(hints[:-1])} or {hints[-1]}"
    return f"{head}pass {listed} to bound it."


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
