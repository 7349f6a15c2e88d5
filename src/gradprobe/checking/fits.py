"""Value fits of the diagnosis: relations between the checked entries' values, no evaluations.

Each function here looks at the checked entries of one failing parameter (analytic ``a``,
numeric ``n``, parameter value ``w``, the entry's allowance ``allowed``) and returns a
:class:`~gradprobe.report.model.Diagnosis` when its relation explains the failure, else None:

- :func:`zero_fit`: ``a == 0`` where ``n`` is not (the gradient is never written);
- :func:`unused_fit`: ``|n| <= allowed`` (numeric 0 within its round-off floor) where ``a`` is
  not: the loss does not read those entries;
- :func:`clipped_fit`: ``a = clip(n, -cap, cap)``;
- :func:`linear_fits`: ``a - n = k * w`` (missing-term), ``a = -n`` (sign), ``a = c * n`` (scale);
- :func:`partial_factor_fit`: ``a = c_s * n`` on each slice ``s`` along the leading or trailing
  axis, ``c_s`` 1 or a simple ratio ``p/q`` (``|p|, q <= 4``).

A relation is the cause only when it explains *every* entry it speaks of within that entry's
error allowance (:func:`explained`: the pass rule's round-off + truncation estimate): what it
leaves unexplained must be numeric error, not a part of the bug. A relation that explains most
of the discrepancy but not each entry names nothing (:mod:`.measured` then says what the
evidence shows). The confidence is the measured rate at which such a diagnosis is right
(:mod:`.calibration`). Positional patterns (transpose, swap, shift, confinement) are
:mod:`.patterns`' job.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..report.model import Diagnosis
from .calibration import calibrated

#: Room for the fitted constants' own error: a relation's prediction may miss an entry by
#: this many times the entry's allowance.
FIT_MARGIN = 3.0
#: Failing entries a clipping needs (one capped entry is no pattern).
MIN_CLIPPED = 2
#: A per-slice factor is snapped to p/q with |p|, q up to this, within SNAP_RTOL of it.
MAX_FACTOR_TERM = 4
SNAP_RTOL = 0.02
#: Resolvable entries (|n| above its allowance) a slice needs for its factor to count.
MIN_SLICE_ENTRIES = 2
#: Slices and indices listed in a detail (the evidence keeps a few more).
SHOW = 6
KEEP = 16


def _lstsq(columns: list[np.ndarray], target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    A = np.stack(columns, axis=1)
    coef, *_ = np.linalg.lstsq(A, target, rcond=None)
    return coef, target - A @ coef


def first_indices(flat: np.ndarray, shape: tuple[int, ...], k: int = 3) -> list[list[int]]:
    """The first ``k`` of the flat indices ``flat`` (sorted) as index lists."""
    flat = np.sort(np.asarray(flat, dtype=np.int64))[:k]
    return [[int(i) for i in np.unravel_index(int(f), shape)] for f in flat]


def zero_fit(name: str, a_f: np.ndarray, support: int) -> Diagnosis | None:
    """``a == 0`` at every failing entry (``a_f``)."""
    n_zero = int(np.count_nonzero(a_f == 0.0))
    if n_zero < a_f.size:
        return None
    return Diagnosis(
        "zero",
        f"the analytic gradient of {name} is 0 at {n_zero} of {a_f.size} failing entries where "
        "the numeric one is not: the backward pass never writes it (left at zeros) or the path "
        "to it is cut",
        calibrated("zero", support),
        {"n_zero": n_zero, "n_failing": int(a_f.size)},
    )


def unused_fit(
    name: str,
    shape: tuple[int, ...],
    flat: np.ndarray,
    a_f: np.ndarray,
    n_f: np.ndarray,
    allowed_f: np.ndarray,
    reusable_f: np.ndarray,
    support: int,
) -> Diagnosis | None:
    """The numeric gradient is 0 within its round-off floor (``|n| <= allowed``) at every
    failing entry while the analytic one is not (a failing entry's ``|a - n|`` exceeds
    ``allowed``). Entries whose step crossed a kink never count as numeric zeros."""
    unused = (np.abs(n_f) <= allowed_f) & reusable_f
    k = int(np.count_nonzero(unused))
    if k < a_f.size:
        return None
    first = first_indices(flat[unused], shape)
    return Diagnosis(
        "unused",
        f"the numeric gradient of {name} is 0 (within its round-off floor) at {k} of "
        f"{a_f.size} failing entries (first at {first}) where the analytic one is not: the loss "
        "does not depend on these entries but the gradient says it does. A mask, dropout or "
        "padding the forward pass applies (so it never reads them) is missing from the backward "
        "pass, or the gradient has a term only in the backward pass",
        calibrated("unused", support),
        {"n_unused": k, "n_failing": int(a_f.size), "first_index": first},
    )


def scale_hint(c: float) -> str:
    """What a constant factor ``c`` between the analytic and numeric gradients suggests."""
    r = round(c)
    if abs(c) >= 1.5 and abs(c - r) <= 0.01 * abs(c):
        return (
            f"c = {r}: if {abs(r)} is your batch size, the loss averages over the batch but the "
            f"gradient sums over it (divide the gradient by {abs(r)})"
        )
    if abs(c) < 1 and c != 0:
        inv = 1.0 / c
        ri = round(inv)
        if abs(inv) >= 1.5 and abs(inv - ri) <= 0.01 * abs(inv):
            return (
                f"c = 1/{ri}: the gradient is divided by {abs(ri)} once too often (a summed loss "
                "with an averaged gradient, or a mean taken twice)"
            )
    if abs(abs(c) - 2.0) < 0.02 or abs(abs(c) - 0.5) < 0.01:
        return "a factor 2 or 1/2, as from the derivative of a square (0.5 * x**2 vs x**2)"
    return "a constant factor missing or extra (a temperature, a loss weight, a 1/N)"


def explained(
    a: np.ndarray, predicted: np.ndarray, allowed: np.ndarray, factor: float = 1.0
) -> np.ndarray:
    """Entries a relation explains: its prediction is within the entry's error allowance (the
    pass rule's round-off + truncation estimate, scaled by the factor that multiplies the
    numeric value), with :data:`FIT_MARGIN` room for the fitted constants' own error."""
    with np.errstate(invalid="ignore"):
        return np.abs(a - predicted) <= FIT_MARGIN * max(1.0, abs(factor)) * allowed


def _holds(a, predicted, allowed, factor: float = 1.0) -> bool:
    return bool(np.all(explained(a, predicted, allowed, factor)))


def linear_fits(
    name: str,
    a: np.ndarray,
    n: np.ndarray,
    w: np.ndarray,
    allowed: np.ndarray,
    support: int,
) -> list[Diagnosis]:
    """Missing-term, sign and scale: linear relations between a, n and w that explain every
    checked entry within its allowance (:func:`explained`); all that hold, simplest first
    (two that hold equally are both listed by the caller)."""
    found: list[Diagnosis] = []
    if a.size == 0 or not np.any(a != n):
        return found
    has_w = bool(np.any(w != 0))
    if has_w:
        (k,), _ = _lstsq([w], a - n)
        if k != 0.0 and _holds(a, n + k * w, allowed):
            if k < 0:
                detail = (
                    f"analytic - numeric = {k:.4g} x {name}: a term {-k:.4g} * {name} is missing "
                    f"from the gradient (e.g. the L2 penalty 0.5 * lambda * sum({name}**2) with "
                    f"lambda = {-k:.4g}, in the loss but not in the backward pass)"
                )
            else:
                detail = (
                    f"analytic - numeric = {k:.4g} x {name}: an extra term {k:.4g} * {name} in "
                    "the gradient (the L2 term added twice, or a penalty the loss does not have)"
                )
            found.append(
                Diagnosis(
                    "missing-term",
                    detail,
                    calibrated("missing-term", support),
                    {"coefficient": float(k), "n_entries": int(a.size)},
                )
            )
    (c,), _ = _lstsq([n], a)
    if abs(c) >= 1e-3 and c != 1.0 and _holds(a, c * n, allowed, c):
        evidence = {"c": float(c), "n_entries": int(a.size)}
        if abs(c + 1.0) <= 0.02:
            found.append(
                Diagnosis(
                    "sign",
                    f"analytic = -numeric for {name}: a sign is flipped in its backward path (a "
                    "derivative written (h**2 - 1) for (1 - h**2), a residual taken as target - "
                    "output, gradient ascent instead of descent)",
                    calibrated("sign", support),
                    evidence,
                )
            )
        else:
            found.append(
                Diagnosis(
                    "scale",
                    f"analytic = {c:.6g} x numeric for {name}: {scale_hint(c)}",
                    calibrated("scale", support),
                    evidence,
                )
            )
    if not found and has_w:
        (c, k), _ = _lstsq([n, w], a)
        if abs(c) >= 1e-3 and abs(c - 1.0) > 0.0 and _holds(a, c * n + k * w, allowed, c):
            sign = abs(c + 1.0) <= 0.02
            what = (
                "a sign is flipped in its backward path, on the data term only"
                if sign
                else scale_hint(c)
            )
            found.append(
                Diagnosis(
                    "sign" if sign else "scale",
                    f"analytic = {c:.6g} x numeric + {k:.3g} x {name} for {name}: {what}; the "
                    f"term {k:.3g} * {name} outside the factor is a penalty the factor does not "
                    "reach (an L2 term added after the flip or scaling)",
                    calibrated("sign" if sign else "scale", support),
                    {"c": float(c), "term_coefficient": float(k), "n_entries": int(a.size)},
                )
            )
    return found


def clipped_fit(
    name: str, a: np.ndarray, n: np.ndarray, allowed: np.ndarray, fail: np.ndarray, support: int
) -> Diagnosis | None:
    """``a = clip(n, -cap, cap)``: the failing entries' analytic magnitudes all equal one
    constant below the numeric magnitudes, with the numeric sign, and every entry is explained
    by the clipped numeric gradient (the passing ones lie within the cap)."""
    if int(np.count_nonzero(fail)) < MIN_CLIPPED:
        return None
    mag = np.abs(a[fail])
    cap = float(np.median(mag))
    if cap <= 0.0 or not np.all(np.abs(n[fail]) > cap):
        return None
    if np.any(np.sign(a[fail]) != np.sign(n[fail])):
        return None
    if not _holds(a, np.clip(n, -cap, cap), allowed):
        return None
    return Diagnosis(
        "clipped",
        f"the analytic gradient of {name} is capped at +-{cap:.6g} where the numeric one is "
        f"larger ({support} entries, numeric up to {float(np.max(np.abs(n[fail]))):.4g}): the "
        "backward pass clips it (np.clip(g, -cap, cap), gradient clipping inside the gradient "
        "function); clip in the optimizer step instead, after the check",
        calibrated("clipped", support),
        {"cap": cap, "n_clipped": support, "max_numeric": float(np.max(np.abs(n[fail])))},
    )


def snap_factor(c: float) -> Fraction | None:
    """``c`` as a simple ratio ``p/q`` other than 1 (``|p|, q <= MAX_FACTOR_TERM``), or None
    when no such ratio lies within :data:`SNAP_RTOL` of it."""
    if not np.isfinite(c) or c == 0.0:
        return None
    best = Fraction(c).limit_denominator(MAX_FACTOR_TERM)
    if best == 1 or best == 0 or abs(best.numerator) > MAX_FACTOR_TERM:
        return None
    return best if abs(c - float(best)) <= SNAP_RTOL * abs(float(best)) else None


def _factor_text(f: Fraction) -> str:
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def _slice_factors(
    s: np.ndarray,
    length: int,
    a: np.ndarray,
    n: np.ndarray,
    resolvable: np.ndarray,
    failing: np.ndarray,
) -> np.ndarray | None:
    """One factor per slice (``s``: each entry's slice): 1 for slices without a failing entry,
    a snapped simple ratio for the others; None when a failing slice has no such factor."""
    num = np.bincount(s, weights=a * n, minlength=length)
    den = np.bincount(s, weights=n * n, minlength=length)
    n_res = np.bincount(s, weights=resolvable.astype(np.float64), minlength=length)
    factors = np.ones(length)
    for j in np.unique(s[failing]):
        if n_res[j] < MIN_SLICE_ENTRIES or den[j] == 0.0:
            return None
        f = snap_factor(float(num[j] / den[j]))
        if f is None:
            return None
        factors[j] = float(f)
    return factors


def partial_factor_fit(
    name: str,
    shape: tuple[int, ...],
    flat: np.ndarray,
    a: np.ndarray,
    n: np.ndarray,
    allowed: np.ndarray,
    failing: np.ndarray,
    support: int,
) -> Diagnosis | None:
    """``a = c_s * n`` on each slice ``s`` (rows along the leading axis, or columns along the
    trailing one) with ``c_s`` a simple ratio on the slices holding failures and 1 on the
    others; the fit must explain every entry (:func:`explained`). Arrays are the checked entries
    (finite, not kinks); ``failing`` marks the failing ones."""
    if len(shape) < 2 or not np.any(failing):
        return None
    dn = float(np.linalg.norm(a - n))
    if dn == 0.0:
        return None
    multi = np.unravel_index(flat, shape)
    resolvable = np.abs(n) > allowed
    best: tuple[float, int, np.ndarray] | None = None
    scale = float(np.max(np.abs(a - n)))
    for axis in sorted({0, len(shape) - 1}):
        s = np.asarray(multi[axis], dtype=np.int64)
        factors = _slice_factors(s, shape[axis], a, n, resolvable, failing)
        if factors is None:
            continue
        predicted = factors[s] * n
        if not np.all(explained(a, predicted, allowed * np.maximum(1.0, np.abs(factors[s])))):
            continue
        resid = float(np.max(np.abs(a - predicted))) / scale
        if best is None or resid < best[0]:
            best = (resid, axis, factors)
    if best is None:
        return None
    resid, axis, factors = best
    word = "rows" if axis == 0 else "columns"
    groups: dict[Fraction, list[int]] = {}
    for j in np.flatnonzero(factors != 1.0):
        groups.setdefault(Fraction(factors[j]).limit_denominator(MAX_FACTOR_TERM), []).append(
            int(j)
        )
    parts = []
    for f, slices in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        more = f" and {len(slices) - SHOW} more" if len(slices) > SHOW else ""
        parts.append(f"{_factor_text(f)} x numeric on {word} {slices[:SHOW]}{more}")
    repeated = sorted(f for f in groups if f.numerator == 1 and f.denominator > 1)[::-1]
    why = (
        f"on {word} whose index appears {', '.join(str(f.denominator) for f in repeated)} "
        "times, a buffered scatter-add (W[idx] += g in numpy) keeps one of the repeated "
        "contributions: use np.add.at(W, idx, g)"
        if repeated
        else "a factor applied to only part of the gradient (a branch or an index range that "
        "scales, or forgets to scale, its share)"
    )
    counted = sum(len(v) for v in groups.values())
    return Diagnosis(
        "partial-factor",
        f"analytic = {'; '.join(parts)} of {name} ({counted} of {shape[axis]} {word}), = numeric "
        f"on the others: {why}",
        calibrated("partial-factor", support),
        {
            "axis": int(axis),
            "factors": {
                _factor_text(f): slices[:KEEP]
                for f, slices in sorted(groups.items(), key=lambda kv: -len(kv[1]))
            },
            "n_slices": counted,
        },
    )
