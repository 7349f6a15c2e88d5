"""Value fits of the diagnosis: relations between the checked entries' values, no evaluations.

Each function here looks at the checked entries of one failing parameter (analytic ``a``,
numeric ``n``, parameter value ``w``, the entry's allowance ``allowed``) and returns a
:class:`~gradprobe.report.model.Diagnosis` when its relation explains the failure, else None:

- :func:`zero_fit`: ``a == 0`` where ``n`` is not (the gradient is never written);
- :func:`unused_fit`: ``|n| <= allowed`` (numeric 0 within its round-off floor) where ``a`` is
  not: the loss does not read those entries;
- :func:`linear_fit`: ``a - n = k * w`` (missing-term), ``a = -n`` (sign), ``a = c * n`` (scale);
- :func:`partial_factor_fit`: ``a = c_s * n`` on each slice ``s`` along the leading or trailing
  axis, ``c_s`` 1 or a simple ratio ``p/q`` (``|p|, q <= 4``).

A fit must leave at most :data:`MAX_RESIDUAL` of the discrepancy ``||a - n||`` unexplained;
:func:`confidence` turns the residual and the number of supporting entries into a number.
Positional patterns (transpose, swap, shift, confinement) are :mod:`.patterns`' job.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..report.model import Diagnosis

__all__ = [
    "MAX_RESIDUAL",
    "confidence",
    "linear_fit",
    "partial_factor_fit",
    "unused_fit",
    "zero_fit",
]

#: A fitted hypothesis must leave at most this fraction of the discrepancy unexplained.
MAX_RESIDUAL = 0.1
#: Share of the failing entries a zero or unused pattern must cover.
MIN_SHARE = 0.9
#: A per-slice factor is snapped to p/q with |p|, q up to this, within SNAP_RTOL of it.
MAX_FACTOR_TERM = 4
SNAP_RTOL = 0.02
#: Resolvable entries (|n| above its allowance) a slice needs for its factor to count.
MIN_SLICE_ENTRIES = 2
#: Slices and indices listed in a detail (the evidence keeps a few more).
SHOW = 6
KEEP = 16


def confidence(residual: float, support: int) -> float:
    """``(1 - residual) * (1 - 2**-support)``, rounded to 3 digits."""
    return float(round(max(0.0, 1.0 - residual) * (1.0 - 0.5**support), 3))


def _lstsq(columns: list[np.ndarray], target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    A = np.stack(columns, axis=1)
    coef, *_ = np.linalg.lstsq(A, target, rcond=None)
    return coef, target - A @ coef


def first_indices(flat: np.ndarray, shape: tuple[int, ...], k: int = 3) -> list[list[int]]:
    """The first ``k`` of the flat indices ``flat`` (sorted) as index lists."""
    flat = np.sort(np.asarray(flat, dtype=np.int64))[:k]
    return [[int(i) for i in np.unravel_index(int(f), shape)] for f in flat]


def zero_fit(name: str, a_f: np.ndarray, support: int) -> Diagnosis | None:
    """``a == 0`` at >= 90% of the failing entries (``a_f``)."""
    n_zero = int(np.count_nonzero(a_f == 0.0))
    if n_zero < MIN_SHARE * a_f.size:
        return None
    return Diagnosis(
        "zero",
        f"the analytic gradient of {name} is 0 at {n_zero} of {a_f.size} failing entries where "
        "the numeric one is not: the backward pass never writes it (left at zeros) or the path "
        "to it is cut",
        confidence(0.0, support),
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
    """The numeric gradient is 0 within its round-off floor (``|n| <= allowed``) at >= 90% of
    the failing entries while the analytic one is not (a failing entry's ``|a - n|`` exceeds
    ``allowed``). Entries whose step crossed a kink never count as numeric zeros."""
    unused = (np.abs(n_f) <= allowed_f) & reusable_f
    k = int(np.count_nonzero(unused))
    if k < MIN_SHARE * a_f.size:
        return None
    d = a_f - n_f
    resid = float(np.linalg.norm(d[~unused]) / np.linalg.norm(d))
    first = first_indices(flat[unused], shape)
    return Diagnosis(
        "unused",
        f"the numeric gradient of {name} is 0 (within its round-off floor) at {k} of "
        f"{a_f.size} failing entries (first at {first}) where the analytic one is not: the loss "
        "does not depend on these entries but the gradient says it does. A mask, dropout or "
        "padding the forward pass applies (so it never reads them) is missing from the backward "
        "pass, or the gradient has a term only in the backward pass",
        confidence(resid, support),
        {"n_unused": k, "n_failing": int(a_f.size), "residual": resid, "first_index": first},
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


def linear_fit(
    name: str, a: np.ndarray, n: np.ndarray, w: np.ndarray, support: int
) -> Diagnosis | None:
    """Missing-term, sign and scale: linear relations between a, n and w."""
    d = a - n
    dn = float(np.linalg.norm(d))
    if dn == 0.0 or a.size == 0:
        return None
    has_w = bool(np.any(w != 0))
    if has_w:
        (k,), res = _lstsq([w], d)
        resid = float(np.linalg.norm(res)) / dn
        if resid <= MAX_RESIDUAL:
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
            return Diagnosis(
                "missing-term",
                detail,
                confidence(resid, support),
                {"coefficient": float(k), "residual": resid, "n_entries": int(a.size)},
            )
    (c,), res = _lstsq([n], a)
    resid = float(np.linalg.norm(res)) / dn
    k = 0.0
    if resid > MAX_RESIDUAL and has_w:
        (c, k), res = _lstsq([n, w], a)
        resid = float(np.linalg.norm(res)) / dn
    if resid > MAX_RESIDUAL or abs(c) < 1e-3:
        return None
    evidence = {"c": float(c), "residual": resid, "n_entries": int(a.size)}
    if abs(c + 1.0) <= 0.02 and abs(k) <= 1e-12:
        return Diagnosis(
            "sign",
            f"analytic = -numeric for {name}: a sign is flipped in its backward path (a "
            "derivative written (h**2 - 1) for (1 - h**2), a residual taken as target - output, "
            "gradient ascent instead of descent)",
            confidence(resid, support),
            evidence,
        )
    if abs(c - 1.0) <= 0.01:
        return None
    extra = ""
    if k:
        evidence["term_coefficient"] = float(k)
        extra = f"; the term {k:.3g} * {name} outside the factor suggests an unscaled penalty"
    return Diagnosis(
        "scale",
        f"analytic = {c:.6g} x numeric for {name}: {scale_hint(c)}{extra}",
        confidence(resid, support),
        evidence,
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
    others; the fit must explain >= 90% of ``||a - n||``. Arrays are the checked entries
    (finite, not kinks); ``failing`` marks the failing ones."""
    if len(shape) < 2 or not np.any(failing):
        return None
    dn = float(np.linalg.norm(a - n))
    if dn == 0.0:
        return None
    multi = np.unravel_index(flat, shape)
    resolvable = np.abs(n) > allowed
    best: tuple[float, int, np.ndarray] | None = None
    for axis in sorted({0, len(shape) - 1}):
        s = np.asarray(multi[axis], dtype=np.int64)
        factors = _slice_factors(s, shape[axis], a, n, resolvable, failing)
        if factors is None:
            continue
        resid = float(np.linalg.norm(a - factors[s] * n)) / dn
        if resid <= MAX_RESIDUAL and (best is None or resid < best[0]):
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
        confidence(resid, support),
        {
            "axis": int(axis),
            "factors": {
                _factor_text(f): slices[:KEEP]
                for f, slices in sorted(groups.items(), key=lambda kv: -len(kv[1]))
            },
            "n_slices": counted,
            "residual": resid,
        },
    )
