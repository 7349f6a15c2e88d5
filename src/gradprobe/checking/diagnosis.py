"""The likely cause of a failing parameter, named in words a person can act on.

:func:`diagnose` looks at the checked entries of each failing parameter (analytic value ``a``,
numeric value ``n``, parameter value ``w``) and tests, in this order, hypotheses that each
point at one classic backprop mistake; the first that holds is the diagnosis:

``nonfinite``
    the gradient has NaN/inf entries where the loss is finite;
``zero``
    ``a == 0`` where ``n != 0`` (>= 90% of the failing entries): the backward pass never writes
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
    none of the above; the hint names where to start looking: the failing parameter with the
    largest relative error ``||a - n|| / ||n||`` over its checked entries (not kinks; within
    1% of the largest counts as a tie, taken closest to the loss).

Fits are judged by the residual relative to the discrepancy ``|a - n|`` (a hypothesis must
explain at least 90% of it); confidence grows with the residual's smallness and the number of
entries supporting it (``1 - 2**-k``), and is lower for the catch-all ``mismatch``. The value
fits live in :mod:`.fits`, the positional patterns in :mod:`.patterns`; this module holds their
order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..report.model import Diagnosis
from .context import ParamCheck
from .entries import EntryResults
from .fits import linear_fit, partial_factor_fit, unused_fit, zero_fit
from .patterns import confined_pattern, shifted_pattern, swapped_pattern, transpose_pattern

__all__ = ["diagnose", "diagnose_parameter", "rank_failing", "relative_error"]


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
    feed the ``mismatch`` hint (:func:`diagnose` ranks the failing parameters).
    """
    name, shape = ctx.name, ctx.shape
    if nonfinite is not None and nonfinite.size:
        return _nonfinite(name, shape, nonfinite)
    e = entries[name]
    # Confirmations at other positions reuse only plain derivative estimates
    # (EntryResults.reusable).
    ok = _checked(e)
    fail = e.failed & ok
    support = int(np.count_nonzero(fail))
    if support:
        a, n, flat = e.analytic, e.numeric, e.flat_index
        w = ctx.base_flat[flat[ok]].astype(np.float64)
        hypotheses = (
            lambda: zero_fit(name, a[fail], support),
            lambda: unused_fit(
                name,
                shape,
                flat[fail],
                a[fail],
                n[fail],
                e.allowed[fail],
                e.reusable[fail],
                support,
            ),
            lambda: linear_fit(name, a[ok], n[ok], w, support),
            lambda: transpose_pattern(ctx, e, fail),
            lambda: swapped_pattern(ctx, e, fail, contexts, entries),
            lambda: shifted_pattern(ctx, e, fail),
            lambda: partial_factor_fit(
                name, shape, flat[ok], a[ok], n[ok], e.allowed[ok], fail[ok], support
            ),
            lambda: confined_pattern(ctx, e, fail, ok),
        )
        for hypothesis in hypotheses:
            found = hypothesis()
            if found is not None:
                return found
    return _mismatch(name, support, start_with or name, relative_errors or {})


def _mismatch(
    name: str, support: int, start: str, relative_errors: Mapping[str, float]
) -> Diagnosis:
    r = relative_errors.get(start)
    size = "" if r is None or not np.isfinite(r) else f", {r:.3g}"
    return Diagnosis(
        "mismatch",
        f"no simple pattern (scale, sign, transpose, zero, unused, missing term, swap, shift, "
        f"partial factor, confined rows) explains {name}'s error: suspect a wrong activation "
        "derivative or a wrong cached tensor; check one layer at a time, starting from the "
        f"failing parameter with the largest relative error ||a - n|| / ||n|| over its checked "
        f"entries ({start!r}{size})",
        0.5 if support else 0.3,
        {
            "n_failing": support,
            "start_with": start,
            "relative_errors": {k: float(v) for k, v in relative_errors.items()},
        },
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
    start, errors = rank_failing(entries, failing)
    return {
        name: diagnose_parameter(
            contexts[name], contexts, entries, nonfinite.get(name), start, errors
        )
        for name in failing
        if name in entries or name in nonfinite
    }
