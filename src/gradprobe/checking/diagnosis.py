"""The likely cause of a failing parameter, named in words a person can act on.

:func:`diagnose` looks at the checked entries of each failing parameter (analytic value ``a``,
numeric value ``n``, parameter value ``w``) and tests, in this order, hypotheses that each
point at one classic backprop mistake; the first that holds is the diagnosis:

``nonfinite``
    the gradient has NaN/inf entries where the loss is finite;
``zero``
    ``a == 0`` where ``n != 0`` (every failing entry): the backward pass never writes
    this gradient;
``unused``
    ``n`` is 0 within its round-off floor (``|n| <= allowed``) where ``a`` is not (>= 90% of
    the failing entries): the loss does not read those entries (a mask, dropout or padding the
    forward pass applies and the backward pass does not; a term only in the backward pass);
``missing-term``
    ``a - n = k * w``: a term proportional to the parameter (an L2 penalty) is missing (k < 0)
    or extra (k > 0); the coefficient is reported;
``sign``
    ``a = -n``;
``clipped``
    ``a = clip(n, -cap, cap)``: the backward pass clips the gradient; the cap is reported;
``scale``
    ``a = c * n`` (possibly plus ``k * w``: an unscaled L2 term); ``c`` is reported, e.g. the
    batch size when the loss averages over the batch but the gradient sums;
``transpose``
    ``a[i, j] = n[j, i]``, confirmed at transposed positions (a few extra evaluations);
``swapped``
    ``a`` matches the numeric gradient of another parameter of the same shape and that one's
    analytic gradient matches this numeric one (symmetric; a few extra evaluations);
``shifted``
    ``a[i] = n[i + k]`` along the leading or trailing axis for one offset ``k`` (a padding
    offset, an off-by-one in a convolution or a stride); confirmed at shifted positions, the
    axis and offset are reported;
``partial-factor``
    ``a = c * n`` with ``c`` a simple ratio (1/2, 2, -1, ...) on some rows (or columns) and
    ``a = n`` on the others, e.g. 1/2 on the rows of an embedding whose index appears twice
    when the backward pass scatters with a buffered ``W[idx] += g``; rows and factors reported;
``confined``
    every failure lies in at most a quarter of the rows (or columns) checked while at least two
    others pass: the rows (columns) are reported, look at how the backward pass indexes them;
``mismatch``
    none of the above: no cause is named; the detail states the share and layout of the
    failing entries, the range of ``a / n`` and whether the error follows the value, and
    where to start looking: the failing parameter with the largest relative error ``||a - n|| / ||n||`` over its checked entries (not kinks; within
    1% of the largest counts as a tie, taken closest to the loss).

Before any hypothesis, failing entries of zero analytic value are tried at steps finer than
the check's (:func:`finer_jumps`, five evaluations each, float32 and coarser parameters only):
where the loss is flat there, it is piecewise constant on a grid finer than the step, and the
entry is a jump (``evidence["jumps"]``; the verdict lists it as such, not as a failure). The
hypotheses then read the entries left failing.

A value fit is the cause only when it explains every checked entry within that entry's
error allowance (:func:`gradprobe.checking.fits.explained`); two fits that both do are both
listed. Where nothing holds, ``mismatch`` names no cause and states what was measured instead
(:mod:`.measured`). The confidence is the rate at which a diagnosis of that kind, on that many
supporting entries, was right on the calibration corpus (:mod:`.calibration`). The value fits
live in :mod:`.fits`, the positional patterns in :mod:`.patterns`; this module holds their
order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ..numerics.steps import in_dtype
from ..report.model import Diagnosis
from .calibration import calibrated
from .context import ParamCheck
from .fits import clipped_fit, linear_fits, partial_factor_fit, unused_fit, zero_fit
from .kinks import flat, flat_steps
from .measured import describe
from .noise import resolution
from .patterns import confined_pattern, shifted_pattern, swapped_pattern, transpose_pattern
from .results import EntryResults


def _checked(e: EntryResults) -> np.ndarray:
    """Entries the fits take: finite, not a kink (a failing entry whose step crossed one
    carries its nearest one-sided difference, still a slope)."""
    return ~e.kink & np.isfinite(e.numeric) & np.isfinite(e.analytic)


def relative_error(e: EntryResults) -> float:
    """``||a - n|| / ||n||`` over the checked entries that are not kinks (inf when ``n`` is 0
    there and ``a`` is not; NaN when no entry is usable)."""
    ok = _checked(e)
    if not np.any(ok):
        return float("nan")
    d = float(np.linalg.norm(e.analytic[ok] - e.numeric[ok]))
    n = float(np.linalg.norm(e.numeric[ok]))
    if n == 0.0:
        return 0.0 if d == 0.0 else float("inf")
    return d / n


def _nonfinite(name: str, shape: tuple[int, ...], nonfinite: np.ndarray) -> Diagnosis:
    first = [int(i) for i in np.unravel_index(int(nonfinite[0]), shape)]
    return Diagnosis(
        "nonfinite",
        f"the gradient of {name} has {nonfinite.size} NaN/inf entries (first at {first}) "
        "where the loss is finite: look for log(0), 0/0, sqrt at 0 or an overflowing exp in "
        "its backward path",
        1.0,
        {"n_entries": int(nonfinite.size), "first_index": first},
    )


def diagnose_parameter(
    ctx: ParamCheck,
    contexts: Mapping[str, ParamCheck],
    entries: Mapping[str, EntryResults],
    nonfinite: np.ndarray | None = None,
    start_with: str | None = None,
    relative_errors: Mapping[str, float] | None = None,
) -> Diagnosis:
    """The likely cause of the failure of ``ctx``'s parameter (see the module docstring).

    ``contexts`` and ``entries`` hold every parameter's context and checked entries (the
    swap hypothesis looks at same-shape parameters). ``start_with`` and ``relative_errors``
    feed the ``mismatch`` hint (:func:`diagnose` ranks the failing parameters). The
    confidence is the calibrated rate of the diagnosis' kind (``"ambiguous"`` when it lists
    alternatives) on as many failing entries (``evidence["support"]``).
    """
    found = _find(ctx, contexts, entries, nonfinite, start_with, relative_errors)
    e = entries.get(ctx.name)
    support = int(np.count_nonzero(e.failed)) if e is not None else 0
    if nonfinite is not None:
        support += int(nonfinite.size)
    key = "ambiguous" if "alternatives" in found.evidence else found.kind
    return dataclasses.replace(
        found,
        confidence=calibrated(key, support),
        evidence={**found.evidence, "support": support},
    )


def _find(
    ctx: ParamCheck,
    contexts: Mapping[str, ParamCheck],
    entries: Mapping[str, EntryResults],
    nonfinite: np.ndarray | None,
    start_with: str | None,
    relative_errors: Mapping[str, float] | None,
) -> Diagnosis:
    name, shape = ctx.name, ctx.shape
    if nonfinite is not None and nonfinite.size:
        return _nonfinite(name, shape, nonfinite)
    e = entries[name]
    tied = _ties(name, shape, e, ctx)
    if tied is not None:
        return tied
    # Confirmations at other positions reuse only plain derivative estimates
    # (EntryResults.reusable).
    ok = _checked(e)
    if e.crossed is not None and np.any(e.failed & ok & ~e.crossed):
        # A failing entry whose step crossed a kink carries a one-sided difference, not the
        # derivative at the point: no relation can be asked to predict it exactly.
        ok &= ~e.crossed
    fail = e.failed & ok
    support = int(np.count_nonzero(fail))
    a, n, flat, allowed = e.analytic, e.numeric, e.flat_index, e.allowed
    w = ctx.base_flat[flat[ok]].astype(np.float64)
    if support:
        first = (
            lambda: zero_fit(name, a[fail], support),
            lambda: unused_fit(
                name, shape, flat[fail], a[fail], n[fail], allowed[fail], e.reusable[fail], support
            ),
            lambda: clipped_fit(name, a[ok], n[ok], allowed[ok], fail[ok], support),
        )
        for hypothesis in first:
            found = hypothesis()
            if found is not None:
                return found
        fits = linear_fits(name, a[ok], n[ok], w, allowed[ok], support)
        if len(fits) > 1:
            return _ambiguous(name, fits, support)
        if fits:
            return fits[0]
        rest = (
            lambda: transpose_pattern(ctx, e, fail),
            lambda: swapped_pattern(ctx, e, fail, contexts, entries),
            lambda: shifted_pattern(ctx, e, fail),
            lambda: partial_factor_fit(
                name, shape, flat[ok], a[ok], n[ok], allowed[ok], fail[ok], support
            ),
            lambda: confined_pattern(ctx, e, fail, ok),
        )
        for hypothesis in rest:
            found = hypothesis()
            if found is not None:
                return found
    return describe(
        name,
        shape,
        flat[ok],
        a[ok],
        n[ok],
        w,
        allowed[ok],
        fail[ok],
        start_with or name,
        relative_errors or {},
    )


def _ties(name: str, shape: tuple[int, ...], e: EntryResults, ctx: ParamCheck):
    """Every failing entry belongs to a tie that failed when moved together."""
    if e.tie_group is None or not np.any(e.failed):
        return None
    in_tie = e.tie_group >= 0
    if np.any(e.failed & ~in_tie):
        return None
    groups = [
        [[int(i) for i in np.unravel_index(int(f), shape)] for f in e.flat_index[e.tie_group == k]]
        for k in np.unique(e.tie_group[in_tie])
    ]
    values = [
        float(ctx.base_flat[e.flat_index[e.tie_group == k][0]])
        for k in np.unique(e.tie_group[in_tie])
    ]
    shown = "; ".join(f"{g} (value {v:.6g})" for g, v in zip(groups[:4], values, strict=False))
    more = f" and {len(groups) - 4} more" if len(groups) > 4 else ""
    support = int(np.count_nonzero(in_tie))
    return Diagnosis(
        "ties",
        f"{name} has tied entries ({shown}{more}) whose gradient is valid for each entry alone "
        "but not for the tied entries together: moving them together changes the loss by less "
        "than the gradient predicts. The backward pass of a max/min/sort over ties gives every "
        "tied entry the full gradient; give it to one of them, or split it between them",
        calibrated("ties", support),
        {"groups": groups[:16], "values": values[:16], "n_groups": len(groups)},
    )


def _ambiguous(name: str, fits: Sequence[Diagnosis], support: int) -> Diagnosis:
    """Two or more relations explain every entry equally well: all are listed, the first
    (simplest) gives the kind, and the confidence is that of an ambiguous diagnosis."""
    return Diagnosis(
        fits[0].kind,
        f"{len(fits)} relations explain {name}'s entries equally well (the evidence cannot "
        "tell them apart): " + "; or ".join(f"{d.kind}: {d.detail}" for d in fits),
        calibrated("ambiguous", support),
        {**fits[0].evidence, "alternatives": [d.to_dict() for d in fits[1:]]},
    )


#: Relative errors within this fraction of the largest count as tied for ``start_with``.
RANK_MARGIN = 0.01


def rank_failing(
    entries: Mapping[str, EntryResults], failing: Sequence[str]
) -> tuple[str | None, dict[str, float]]:
    """The failing parameter to start with, and every failing parameter's relative error
    (:func:`relative_error`). The start has the largest; errors within :data:`RANK_MARGIN` of
    it are ties (so a last-ulp difference cannot flip the hint), broken by layout order from
    the loss back (the last one listed first). Parameters without usable entries come last."""
    errors = {name: relative_error(entries[name]) for name in failing if name in entries}
    usable = {nm: r for nm, r in errors.items() if not np.isnan(r)}
    if not usable:
        return (failing[-1] if failing else None), errors
    top = max(usable.values())
    tied = [
        nm
        for nm in failing
        if nm in usable
        and (usable[nm] == top or (np.isfinite(top) and usable[nm] >= (1 - RANK_MARGIN) * top))
    ]
    return tied[-1], errors


def diagnose(
    contexts: Mapping[str, ParamCheck],
    entries: Mapping[str, EntryResults],
    failing: Sequence[str],
    nonfinite: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Diagnosis]:
    """Diagnose each parameter named in ``failing`` (in layout order); name -> Diagnosis.

    May spend a few loss evaluations on transposed and shifted positions and on entries of
    same-shape parameters: ``CONFIRM_ENTRIES`` positions per transposed or shifted
    hypothesis, up to ``MAX_SWAP_CANDIDATES`` parameters at that many each for a swap.
    """
    nonfinite = nonfinite or {}
    finer = {n: finer_jumps(contexts[n], entries[n]) for n in failing if n in entries}
    finer = {n: f for n, f in finer.items() if f.size}
    entries = {**entries, **{n: with_jumps(entries[n], f) for n, f in finer.items()}}
    start, errors = rank_failing(entries, failing)
    found = {}
    for name in failing:
        if name not in entries and name not in nonfinite:
            continue
        if name in finer and not np.any(entries[name].failed) and name not in nonfinite:
            found[name] = _jumps_only(name, contexts[name].shape, finer[name])
            continue
        d = diagnose_parameter(contexts[name], contexts, entries, nonfinite.get(name), start, errors)
        if name in finer:
            d = dataclasses.replace(d, evidence={**d.evidence, "jumps": finer[name].tolist()})
        found[name] = d
    return found


def finer_jumps(ctx: ParamCheck, e: EntryResults) -> np.ndarray:
    """Flat indices of failing entries of zero analytic value where the loss is flat at steps
    finer than the check's (:func:`gradprobe.checking.kinks.flat`): piecewise constant on a
    grid finer than the step, a jump rather than a wrong gradient. Five evaluations each
    (none for entries where no such step is finer than the check's: float64 parameters)."""
    none = np.empty(0, dtype=np.int64)
    if ctx.method == "complex-step":
        return none
    pos = np.flatnonzero(e.failed & (e.analytic == 0.0) & np.isfinite(e.numeric) & (e.numeric != 0))
    if pos.size == 0:
        return none
    x = ctx.base_flat[e.flat_index[pos]]
    xf = x.astype(np.float64)
    base = ctx.evaluator.base_loss()
    # The steps by the loss's own epsilon: the grid one value lies on says little (its last
    # bits may be zeros by chance); that of all the values the flatness is judged on does.
    rounding = ctx.tolerance.loss_eps * abs(base) + ctx.tolerance.loss_noise
    fine, coarse, usable = flat_steps(e.numeric[pos], xf, rounding, ctx.relative_step)
    if not np.any(usable):
        return none
    pos, x, xf, fine, coarse = pos[usable], x[usable], xf[usable], fine[usable], coarse[usable]
    cols = np.stack(
        [x] + [in_dtype(xf + t, x.dtype) for t in (fine, coarse, -fine, -coarse)], axis=1
    )
    losses = np.asarray(
        ctx.evaluator.entry_losses(ctx.param, e.flat_index[pos], cols), dtype=np.float64
    )
    taken = np.abs(cols[:, 1:].astype(np.float64) - xf[:, None])
    keep = flat(losses, taken, e.numeric[pos], _rounding(ctx, [base, *losses.reshape(-1)]))
    return e.flat_index[pos[keep]]


def _rounding(ctx: ParamCheck, values: Sequence[float]) -> float:
    """The loss's rounding near ``values``: an epsilon of their largest (the loss's, or the
    coarser grid they lie on: a loss computed in float16 changes in its steps), plus its
    measured noise."""
    eps = resolution(values, ctx.tolerance.loss_eps)
    return eps * float(np.max(np.abs(values))) + ctx.tolerance.loss_noise


def with_jumps(e: EntryResults, flat_index: np.ndarray) -> EntryResults:
    """``e`` with the entries ``flat_index`` marked as jumps (kinks: not failures)."""
    at = np.isin(e.flat_index, flat_index)
    jump = at if e.jump is None else e.jump | at
    crossed = at if e.crossed is None else e.crossed | at
    return dataclasses.replace(e, kink=e.kink | at, jump=jump, crossed=crossed)


def _jumps_only(name: str, shape: tuple[int, ...], flat_index: np.ndarray) -> Diagnosis:
    where = [[int(i) for i in np.unravel_index(int(f), shape)] for f in flat_index[:5]]
    return Diagnosis(
        "jumps",
        f"every entry of {name} that failed one by one is a jump: the loss is piecewise "
        f"constant there on a grid finer than the step (first at {where}), not a wrong "
        "gradient; what fails is the random-direction probes, whose step spans jumps too",
        1.0,
        {"jumps": flat_index.tolist()},
    )
