"""``promote="auto"``: a float32 check that leaves (almost) all its checked entries at the round-off floor is checked
again in float64, where the loss runs with float64 parameters.

In float32 a finite difference resolves ~4 significant digits: an entry whose error is below
that floor passes without evidence (a single entry 50% wrong in a 64 x 512 parameter hides
under it). :func:`verify_in_float64` reruns the check with the parameters cast to float64
(``promote=True``) when a passing parameter below float64 left entries at the floor, and
returns the float64 report, which says so. A float64 verdict that fails a parameter the float32
check passed stands only with a wrong entry localized (a failure on probes alone is no
evidence about the entries at the floor). Where the rerun cannot run (the loss or grad
refuses float64 arrays, the time is up), the float32 report is kept and a warning says which
entries were not verified.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..errors import CheckAborted, GradCheckError
from ..report.model import Report
from .verdict import UNVERIFIED_SHARE


def floor_left(report: Report) -> dict[str, int]:
    """Passing parameters below float64 whose checked entries sit (almost) all at the round-off
    floor (the share :data:`~gradprobe.checking.verdict.UNVERIFIED_SHARE` that the report
    warns about: nothing was verified there): name -> count."""
    return {
        p.name: p.n_at_floor
        for p in report.params.values()
        if p.passed
        and p.n_checked
        and p.n_at_floor >= UNVERIFIED_SHARE * p.n_checked
        and p.dtype not in ("float64", "complex128")
    }


def verify_in_float64(report: Report, rerun: Callable[[], Report]) -> Report:
    """The float64 report when ``report`` (a float32 check, ``promote="auto"``) left entries at
    the round-off floor and the rerun in float64 succeeds; else ``report``, with a warning
    naming what was not verified."""
    left = floor_left(report)
    if not left or not report.complete:
        return report
    what = ", ".join(f"{name} ({k:,} entries)" for name, k in left.items())
    try:
        promoted = rerun()
    except (GradCheckError, CheckAborted, TypeError, ValueError) as exc:
        note = (
            f"promote='auto': entries of {what} sit at the float32 round-off floor and are NOT "
            f"verified: the check in float64 could not run ({type(exc).__name__}: {exc}). Make "
            "the loss and grad accept float64 arrays, or check in float64 yourself."
        )
        return dataclasses.replace(report, warnings=(*report.warnings, note))
    vague = [
        p.name
        for p in promoted.params.values()
        if not p.passed and not p.bad_indices and report.params[p.name].passed
    ]
    if vague:
        note = (
            f"promote='auto': entries of {what} sit at the float32 round-off floor and are NOT "
            f"verified: the check in float64 failed {vague} on probes alone, with no wrong entry "
            "localized (no evidence either way). Check in float64 yourself (promote=True) to see "
            "that report."
        )
        return dataclasses.replace(report, warnings=(*report.warnings, note))
    note = (
        f"promote='auto': the float32 check left entries of {what} at the round-off floor, "
        "unverified, so the check was run again with the parameters cast to float64 (the loss "
        "and grad received float64 arrays): this report is the float64 one. Pass promote=False "
        "to keep the float32 check."
    )
    return dataclasses.replace(promoted, warnings=(note, *promoted.warnings))
