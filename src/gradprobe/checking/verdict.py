"""THE verdict step: one parameter's evidence (and diagnosis) in, its :class:`ParamReport` out.

Whether a parameter passed is decided here and nowhere else (:func:`passes`), ``bad_indices``
is capped here (:data:`~gradprobe.report.model.MAX_BAD_INDICES`), and the coverage statement is
written here, so the table, the failure block and the coverage line read the same evidence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from ..layout import unravel
from ..numerics.stats import CONFIDENCE, upper_bound_wrong_fraction
from ..report.model import (
    MAX_BAD_INDICES,
    MAX_SHOWN_ENTRIES,
    Coverage,
    Diagnosis,
    EntryCheck,
    ParamReport,
)
from .context import ParamCheck
from .diagnosis import with_jumps
from .parameter import Evidence
from .probes import ProbeOutcome

#: A passing parameter with at least this share of its checked entries at the round-off floor
#: was hardly verified: the report says so.
UNVERIFIED_SHARE = 0.9


def passes(evidence: Evidence) -> bool:
    """THE verdict: no checked entry fails (kinks excluded), the probes did not find a
    disagreement beyond ``rtol`` too widespread or too frequent to localize, and the analytic
    gradient is finite everywhere; a parameter whose check was stopped has no verdict (False).
    Probes only raise suspicions: entries are failed by the
    per-entry rule, so the verdict honours ``rtol`` whatever ``samples=`` is."""
    outcome = evidence.outcome
    widespread = outcome is not None and (outcome.widespread or outcome.capped)
    return (
        evidence.finished
        and not bool(np.any(evidence.entries.failed))
        and not widespread
        and evidence.nonfinite.size == 0
    )


def floor_warnings(reports: Mapping[str, ParamReport]) -> list[str]:
    """A warning for each passing parameter whose checked entries sit (almost) all at the
    round-off floor: nothing was verified there."""
    out = []
    for r in reports.values():
        if r.passed and r.n_checked and r.n_at_floor >= UNVERIFIED_SHARE * r.n_checked:
            out.append(
                f"{r.name}: {r.n_at_floor} of {r.n_checked} checked entries are at the round-off "
                "floor, where an error cannot be told from noise: it passed, but nothing was "
                "verified there. The loss hardly changes with it (an upstream gradient of ones "
                "that cancels, a tiny weight) or its precision is too low: use a random upstream "
                "gradient, float64 (promote=True), or a larger batch."
            )
    return out


def _bad_indices(ctx: ParamCheck, evidence: Evidence) -> tuple[tuple[int, ...], ...]:
    """Entries localized as wrong, then non-finite analytic entries; at most MAX_BAD_INDICES."""
    e = evidence.entries
    flat = np.concatenate([e.flat_index[e.failed], evidence.nonfinite]).astype(np.int64)
    flat = np.asarray(list(dict.fromkeys(flat.tolist()))[:MAX_BAD_INDICES], dtype=np.int64)
    return tuple(unravel(f, ctx.shape) for f in flat)


def build_report(
    ctx: ParamCheck, evidence: Evidence, diagnosis: Diagnosis | None = None
) -> ParamReport:
    """The parameter's report, built once from its evidence and diagnosis.

    Entries the diagnosis found to be jumps on a grid finer than the step (its evidence's
    ``"jumps"``: :func:`~gradprobe.checking.diagnosis.finer_jumps`) are jumps here, not
    failures; a parameter they leave passing has no diagnosis.
    """
    finer = np.asarray((diagnosis.evidence if diagnosis else {}).get("jumps", ()), np.int64)
    if finer.size:
        entries = with_jumps(evidence.entries, finer)
        in_sample = np.isin(entries.flat_index, evidence.sample.flat_index)
        evidence = dataclasses.replace(
            evidence,
            entries=entries,
            n_failed_sampled=int(np.count_nonzero(entries.failed & in_sample)),
        )
        if passes(evidence):
            diagnosis = None
    entries, outcome, sample = evidence.entries, evidence.outcome, evidence.sample
    passed = passes(evidence)
    order = entries.worst_order()
    worst = tuple(
        EntryCheck(
            index=unravel(entries.flat_index[j], ctx.shape),
            analytic=float(entries.analytic[j]),
            numeric=float(entries.numeric[j]),
            rel_error=float(entries.rel_error[j]),
            allowed=float(entries.allowed[j]),
            step=float(entries.step[j]),
            passed=bool(entries.passed[j]),
            kink=bool(entries.kink[j]),
        )
        for j in order[:MAX_SHOWN_ENTRIES]
    )
    tol = ctx.tolerance
    resolved = tol.within_rtol(entries.analytic, entries.numeric, entries.allowed) & ~entries.kink
    coverage = build_coverage(
        n_total=ctx.size,
        n_sampled=sample.size,
        n_failed_sampled=evidence.n_failed_sampled,
        strata=sample.strata,
        n_probed=ctx.size if outcome is not None else 0,
        n_probes=outcome.n_probes if outcome is not None else 0,
        n_probe_kinks=outcome.n_kinks if outcome is not None else 0,
        n_unverified=int(np.count_nonzero(~resolved & ~entries.kink & ~entries.failed)),
        unfinished=not evidence.finished,
        jump_note=jump_note(entries, ctx.shape, finer),
        passed=passed,
        probe_note=(
            probe_note(outcome, ctx.shape)
            if evidence.finished
            else "unfinished: the check stopped while this parameter was being checked (the "
            "entries above are those finished by then; no probe covered the rest)"
        ),
    )
    return ParamReport(
        name=ctx.name,
        shape=ctx.shape,
        dtype=str(ctx.base_flat.dtype),
        n_total=ctx.size,
        n_checked=entries.size,
        sampling=sample.kind,
        max_rel_error=float(entries.rel_error.max()) if entries.size else 0.0,
        max_rel_error_resolved=(
            float(entries.rel_error[resolved].max()) if resolved.any() else math.nan
        ),
        n_at_floor=int(np.count_nonzero(~resolved & ~entries.kink)),
        worst_index=worst[0].index if worst else None,
        passed=passed,
        n_failed=int(np.count_nonzero(entries.failed)),
        worst_entries=worst,
        rtol=tol.rtol,
        atol=tol.atol,
        step=ctx.relative_step,
        method=ctx.method,
        rel_errors=entries.rel_error,
        n_kinks=int(np.count_nonzero(entries.kink & ~_jumps(entries))),
        bad_indices=_bad_indices(ctx, evidence),
        widespread=outcome is not None and outcome.widespread,
        capped=outcome is not None and outcome.capped,
        coverage=coverage,
        diagnosis=diagnosis,
        n_evaluations=evidence.n_evaluations,
        finished=evidence.finished,
    )


def _jumps(entries) -> np.ndarray:
    return np.zeros(entries.size, dtype=bool) if entries.jump is None else entries.jump


def jump_note(entries, shape: tuple[int, ...], finer: np.ndarray | None = None) -> str:
    """Where the loss jumps, in words ('' where it does not); ``finer``: the entries found
    flat at steps finer than the check's (a staircase finer than the step)."""
    if entries.jump is None and (finer is None or not finer.size):
        return ""
    jumps = entries.flat_index[_jumps(entries)]
    finer = np.empty(0, np.int64) if finer is None else finer
    at_step = jumps[~np.isin(jumps, finer)]
    notes = []
    if at_step.size:
        notes.append(
            f"the loss jumps at {_where(at_step, shape)}: its change across the step does not "
            "shrink with the step, so the function is piecewise constant or discontinuous "
            "there; no derivative to check, not a failure"
        )
    if finer.size:
        notes.append(
            f"the loss is piecewise constant on a grid finer than the step at "
            f"{_where(finer, shape)}: the step spans several of its jumps, whose staircase "
            "reads as a slope, while at steps finer than the grid the loss does not change at "
            "all on one side, as the zero gradient says; jumps, not failures"
        )
    return "; ".join(notes)


def _where(flat: np.ndarray, shape: tuple[int, ...]) -> str:
    where = ", ".join(str(list(unravel(f, shape))) for f in flat[:5])
    more = f" and {flat.size - 5} more" if flat.size > 5 else ""
    return f"{flat.size} {'entry' if flat.size == 1 else 'entries'} ({where}{more})"


def _pct(p: float) -> str:
    pct = 100.0 * p
    if pct >= 10:
        return f"{pct:.0f}%"
    if pct >= 0.1:
        return f"{pct:.2g}%"
    return f"{pct:.1g}%"


def build_coverage(
    *,
    n_total: int,
    n_sampled: int,
    n_failed_sampled: int,
    strata: Mapping[str, int],
    n_probed: int = 0,
    n_probes: int = 0,
    n_probe_kinks: int = 0,
    n_unverified: int = 0,
    probe_note: str = "",
    jump_note: str = "",
    confidence: float = CONFIDENCE,
    unfinished: bool = False,
    passed: bool | None = None,
) -> Coverage:
    """Assemble a :class:`~gradprobe.Coverage` and its statement in words: what was
    checked, how, and what that guarantees.

    ``n_unverified`` counts entries that passed only within the round-off floor (no evidence
    either way). ``n_probe_kinks`` counts probes passed as kinks (their step crossed a
    non-differentiable point and the analytic slope is a valid subgradient). ``probe_note``
    is appended to the statement (what bisection found, or why probes were inconclusive).
    ``unfinished``: the check stopped part-way through the parameter; its finished entries
    are no random draw (bisection's are chosen for failing), so no bound. ``passed`` (default:
    no sampled entry failed): the bound on the wrong fraction is stated for a passing
    parameter only (``upper_bound`` holds it either way).
    """
    passed = n_failed_sampled == 0 if passed is None else passed
    n_agree = n_sampled - min(n_failed_sampled, n_sampled)
    # Entries at the round-off floor passed without evidence: they count for no bound.
    n_unverified = min(n_unverified, n_agree)
    n_verified = n_sampled - n_unverified
    if n_unverified and n_unverified == n_agree:
        floor = " (only within round-off: unverified)"
    elif n_unverified:
        floor = f" ({n_unverified:,} only within round-off: unverified)"
    else:
        floor = ""
    if n_failed_sampled:
        agree = f"{n_agree:,} agree{'s' * (n_agree == 1)}{floor}"
        found = f"{n_failed_sampled:,} wrong" + (f", {agree}" if n_agree else "")
    else:
        found = f"all agree{floor}"
    parts = []
    if unfinished:
        upper = 1.0
        parts.append(
            f"{n_sampled:,} of {n_total:,} entries compared one by one with finite differences "
            f"before the check stopped: {found}; nothing is claimed for the others (no bound)"
        )
    elif n_sampled >= n_total:
        upper = (n_failed_sampled + n_unverified) / n_total if n_total else 1.0
        parts.append(
            f"all {n_total:,} entries compared one by one with finite differences: {found}"
        )
    else:
        upper = upper_bound_wrong_fraction(
            n_verified, min(n_failed_sampled, n_verified), confidence
        )
        kind = " (a stratified sample)" if len(strata) > 1 else ""
        if n_sampled:
            parts.append(
                f"{n_sampled:,} of {n_total:,} entries{kind} compared one by one with finite "
                f"differences: {found}"
            )
        else:
            parts.append(f"none of {n_total:,} entries compared one by one")
    if n_probed:
        kinks = f", {n_probe_kinks} of them across kinks" if n_probe_kinks else ""
        verdict = " agree" if not probe_note else ""
        parts.append(
            f"{n_probes} random-direction probes{kinks} over all {n_probed:,} entries{verdict}"
        )
    if jump_note:
        parts.append(jump_note)
    if probe_note:
        parts.append(probe_note)
    if passed and not unfinished and n_sampled < n_total and upper < 1.0:
        parts.append(
            f"so fewer than {_pct(upper)} of the entries are wrong (at {confidence:.0%} confidence)"
        )
    return Coverage(
        n_probed=int(n_probed),
        n_probes=int(n_probes),
        n_sampled=int(n_sampled),
        strata=dict(strata),
        n_failed_sampled=int(n_failed_sampled),
        upper_bound=float(upper),
        statement="; ".join(parts),
    )


def probe_note(outcome: ProbeOutcome | None, shape: tuple[int, ...]) -> str:
    """What the probes found, in words, for the coverage statement ('' when they passed)."""
    if outcome is None or outcome.passed:
        return ""
    worst = outcome.worst
    excess = f"by up to {worst.excess:.3g}x the allowance" if worst is not None else "beyond it"
    if outcome.widespread:
        return (
            f"they disagree ({excess}) across the whole parameter and most entries compared "
            f"one by one fail: the error is widespread (bisection stopped after "
            f"{outcome.bisection_depth} levels)"
        )
    if outcome.capped:
        found = (
            f"{outcome.localized.size} wrong entries localized by bisection before it stopped"
            if outcome.localized.size
            else "bisection stopped before localizing single entries"
        )
        return (
            f"they disagree ({excess}) beyond rtol in more places than localization covers: "
            f"{found} ({outcome.n_evaluations} evaluations)"
        )
    if outcome.within_rtol:
        return (
            f"they disagree ({excess}) across the parameter, but no more than errors within "
            "rtol at every entry can add up to: not a failure"
        )
    if outcome.localized.size:
        where = ", ".join(
            "[" + ", ".join(str(i) for i in unravel(f, shape)) + "]" for f in outcome.localized[:5]
        )
        more = f" and {outcome.localized.size - 5} more" if outcome.localized.size > 5 else ""
        return (
            f"one disagreed ({excess}); bisection localized {outcome.localized.size} wrong "
            f"{'entry' if outcome.localized.size == 1 else 'entries'}: {where}{more} "
            f"({outcome.n_evaluations} evaluations)"
        )
    return (
        f"one disagreed ({excess}) but bisection found no entry that fails one by one (a kink "
        "crossed by the probe step, or many small errors): not counted as a failure"
    )
