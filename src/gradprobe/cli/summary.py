"""The text of a run: each check's outcome, ``--verbose`` details, the summary table and the
closing verdict with a command that reruns each check that did not pass."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..report.text import align_columns
from .console import Console


def outcome_text(console: Console, outcome: Any, i: int, n: int) -> str:
    """One check's header line, its message (a crash's trimmed traceback...) and report."""
    head = f"── [{i}/{n}] {outcome.name} ({outcome.target}): {console.status(outcome.status)} ──"
    parts = [head]
    if outcome.message:
        parts.append(outcome.message)
    if outcome.report is not None:
        parts.append(str(outcome.report))
    if console.verbose and outcome.report is not None:
        parts.append(verbose_details(outcome.report, outcome.duration))
    return "\n".join(parts) + "\n"


def _seconds(x: Any) -> str:
    return f"{float(x):.3g} s"


def verbose_details(report: Any, duration: float | None = None) -> str:
    """``--verbose``: each parameter's settings and coverage, then where the time went."""
    lines = ["details:"]
    timings: Mapping[str, Any] = report.timings
    for p in report.params.values():
        probes = p.coverage.n_probes if p.coverage is not None else 0
        lines.append(
            f"  {p.name} {p.shape} {p.dtype}: {p.n_checked:,} of {p.n_total:,} entries checked "
            f"one by one ({p.sampling}), {probes} directional probes; {p.method} differences, "
            f"relative step {p.step:.3g}, rtol {p.rtol:g}, atol {p.atol:g}; "
            f"{p.n_evaluations:,} loss evaluations in "
            f"{_seconds(timings.get(f'param:{p.name}', math.nan))}: "
            f"{'ok' if p.passed else 'FAIL'}"
        )
    if not report.params:
        lines.append("  no parameter finished")
    settings: Mapping[str, Any] = report.settings
    measured: Mapping[str, Any] = report.measured
    total = timings.get("total")
    rate = ""
    if total:
        rate = f" ({report.n_evaluations / float(total):,.0f} per second)"
    told = ", ".join(f"{k} {_seconds(v)}" for k, v in timings.items() if not k.startswith("param:"))
    lines.append(
        f"  timings: {told or 'none recorded'}"
        + (f"; {duration:.2f} s with start-up" if duration is not None else "")
    )
    noise = measured.get("loss_noise")
    lines.append(
        f"  {report.n_evaluations:,} loss evaluations{rate}; executor "
        f"{measured.get('executor', '?')}, n_jobs {settings.get('n_jobs', '?')}; loss noise "
        + (f"{float(noise):.3g}" if isinstance(noise, (int, float)) else "not measured")
    )
    return "\n".join(lines)


def summary_table(console: Console, outcomes: Sequence[Any]) -> str:
    """One row per check: status, largest relative error shown, evaluations, time."""
    rows = [("check", "status", "max rel err", "evaluations", "time")]
    colored = []
    for o in outcomes:
        r = o.report
        if r is not None and r.params:
            shown = [p.headline_rel_error for p in r.params.values()]
            shown = [x for x in shown if not math.isnan(x)]
            mre = f"{max(shown):.2e}" if shown else "-"
        else:
            mre = "-"
        status = o.status.upper() if o.status != "passed" else o.status
        if r is not None and not r.complete and o.status != "passed":
            status += " (partial)"
        evals = f"{r.n_evaluations:,}" if r is not None else "-"
        rows.append((o.name, status, mre, evals, f"{o.duration:.2f} s"))
        colored.append(o.status)
    text = align_columns(rows)
    if not console.color:
        return text
    # Colour the status words after aligning (escape codes have no width).
    lines = text.split("\n")
    for k, status in enumerate(colored, 1):
        word = status if status == "passed" else status.upper()
        lines[k] = lines[k].replace(f"  {word}", "  " + console.status(status), 1)
    return "\n".join(lines)


def print_verdict(
    console: Console,
    result: Any,
    code: int,
    regressions: Mapping[str, Any] | Sequence[str],
    not_run: Sequence[str] = (),
    disappeared: Sequence[str] = (),
) -> None:
    """The count of each status, what the baseline flags (``regressions``: the checks that
    regressed; ``disappeared``: its checks that this run lacks), the exit code, and a command
    reproducing each failing check."""
    told = ", ".join(f"{n} {s}" for s, n in result.counts.items() if n)
    if regressions:
        names = ", ".join(regressions)
        told += f", {len(regressions)} regressed against the baseline ({names})"
    if disappeared:
        told += (
            f", {len(disappeared)} in the baseline missing from this run ({', '.join(disappeared)})"
        )
    if not_run:
        told += f", {len(not_run)} not run"
    console.out(f"\n{told or 'no checks'} — exit code {code}")
    if not_run:
        console.out(f"not run (interrupted): {', '.join(not_run)}")
    failing = [o for o in result.outcomes if o.status != "passed" or o.name in regressions]
    if failing:
        console.out("reproduce:")
        for o in failing:
            console.out(f"  {o.name}: {o.reproduce}")
