"""The likely cause of a failing parameter, named in words a person can act on.

:func:`diagnose` looks at the checked entries of each failing parameter (analytic value ``a``,
numeric value ``n``, parameter value ``w``) and tests, in order, hypotheses that each point at
one classic backprop mistake:

``nonfinite``
    the gradient has NaN/inf entries where the loss is finite;
``zero``
    ``a == 0`` where ``n != 0``: the backward pass never writes this gradient;
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
    ``a`` matches the numeric gradient of another parameter of the same shape (a few extra
    evaluations);
``mismatch``
    none of the above; the hint names where to start looking.

Fits are judged by the residual relative to the discrepancy ``|a - n|`` (a hypothesis must
explain at least 90% of it); confidence grows with the residual's smallness and the number of
entries supporting it (``1 - 2**-k``), and is lower for the catch-all ``mismatch``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..evaluate import Evaluator
from ..numerics.tolerances import Tolerance
from ..report.model import Diagnosis, ParamReport
from .entries import EntryResults, numeric_entries

__all__ = ["DIAGNOSIS_KINDS", "diagnose", "diagnose_parameter"]

DIAGNOSIS_KINDS = (
    "nonfinite",
    "zero",
    "missing-term",
    "sign",
    "scale",
    "transpose",
    "swapped",
    "mismatch",
)

#: A fitted hypothesis must leave at most this fraction of the discrepancy unexplained.
MAX_RESIDUAL = 0.1
#: Entries confirmed at transposed positions or against another parameter.
CONFIRM_ENTRIES = 12
#: Same-shape parameters tried as the other half of a swap.
MAX_SWAP_CANDIDATES = 4


def _confidence(residual: float, support: int) -> float:
    return float(round(max(0.0, 1.0 - residual) * (1.0 - 0.5**support), 3))


def _lstsq(columns: list[np.ndarray], target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    A = np.stack(columns, axis=1)
    coef, *_ = np.linalg.lstsq(A, target, rcond=None)
    return coef, target - A @ coef


def _scale_hint(c: float) -> str:
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


def _fits(name: str, a: np.ndarray, n: np.ndarray, w: np.ndarray, support: int) -> Diagnosis | None:
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
                _confidence(resid, support),
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
            _confidence(resid, support),
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
        f"analytic = {c:.6g} x numeric for {name}: {_scale_hint(c)}{extra}",
        _confidence(resid, support),
        evidence,
    )


def _matches(a: np.ndarray, n: np.ndarray, noise: np.ndarray, tol: Tolerance) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        allowed = np.maximum(tol.rtol * np.maximum(1e-8, np.abs(a) + np.abs(n)), noise) + tol.atol
        return np.abs(a - n) <= allowed


def _numeric_at(
    evaluator: Evaluator,
    q: int,
    flat: np.ndarray,
    known: EntryResults | None,
    relative_step: float,
    tol: Tolerance,
    method: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Numeric gradient of parameter ``q`` at ``flat``: reused where checked, else evaluated."""
    numeric = np.full(flat.size, np.nan)
    noise = np.zeros(flat.size)
    todo = np.ones(flat.size, dtype=bool)
    if known is not None and known.size:
        where = {int(f): j for j, f in enumerate(known.flat_index)}
        for r, f in enumerate(flat):
            j = where.get(int(f))
            if j is not None and not known.kink[j]:
                numeric[r] = known.numeric[j]
                # The kept numeric came with its tolerance: recover its noise share from it.
                noise[r] = known.allowed[j]
                todo[r] = False
    if np.any(todo):
        nn, ns = numeric_entries(evaluator, q, flat[todo], relative_step, tol, method)
        numeric[todo], noise[todo] = nn, ns
    return numeric, noise


def _pick(e: EntryResults, mask: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` positions of ``mask``, the most disagreeing first."""
    pos = np.flatnonzero(mask)
    order = np.argsort(-np.nan_to_num(e.abs_error[pos] / e.allowed[pos], nan=np.inf), kind="stable")
    return pos[order[:k]]


def diagnose_parameter(
    evaluator: Evaluator,
    p: int,
    entries: Mapping[str, EntryResults],
    analytic: Sequence[np.ndarray],
    tolerance: Tolerance,
    relative_step: float,
    method: str,
    nonfinite: np.ndarray | None = None,
    downstream: str | None = None,
) -> Diagnosis:
    """The likely cause of parameter ``p``'s failure (see the module docstring)."""
    layout = evaluator.layout
    name, shape = layout.names[p], layout.shapes[p]
    if nonfinite is not None and nonfinite.size:
        first = [int(i) for i in np.unravel_index(int(nonfinite[0]), shape)]
        return Diagnosis(
            "nonfinite",
            f"the gradient of {name} has {nonfinite.size} NaN/inf entries (first at {first}) "
            "where the loss is finite: look for log(0), 0/0, sqrt at 0 or an overflowing exp in "
            "its backward path",
            1.0,
            {"n_entries": int(nonfinite.size), "first_index": first},
        )
    e = entries[name]
    ok = ~e.kink & np.isfinite(e.numeric) & np.isfinite(e.analytic)
    fail = e.failed & ok
    support = int(np.count_nonzero(fail))
    if support:
        a_f = e.analytic[fail]
        if np.count_nonzero(a_f == 0.0) >= 0.9 * a_f.size:
            return Diagnosis(
                "zero",
                f"the analytic gradient of {name} is 0 at {np.count_nonzero(a_f == 0.0)} of "
                f"{a_f.size} failing entries where the numeric one is not: the backward pass "
                "never writes it (left at zeros) or the path to it is cut",
                _confidence(0.0, support),
                {"n_zero": int(np.count_nonzero(a_f == 0.0)), "n_failing": int(a_f.size)},
            )
        w = evaluator.base[p].reshape(-1)[e.flat_index[ok]].astype(np.float64)
        fit = _fits(name, e.analytic[ok], e.numeric[ok], w, support)
        if fit is not None:
            return fit
        found = _transpose(evaluator, p, e, fail, tolerance, relative_step, method)
        if found is not None:
            return found
        found = _swapped(evaluator, p, e, fail, entries, tolerance, relative_step, method)
        if found is not None:
            return found
    start = downstream or name
    return Diagnosis(
        "mismatch",
        f"no simple pattern (scale, sign, transpose, zero, missing term, swap) explains {name}'s "
        "error: suspect a wrong activation derivative or a wrong cached tensor; check one layer "
        f"at a time, starting from the failing parameter closest to the loss ({start!r}, "
        "taking parameters as listed input to output)",
        0.5 if support else 0.3,
        {"n_failing": support, "start_with": start},
    )


def _transpose(
    evaluator: Evaluator,
    p: int,
    e: EntryResults,
    fail: np.ndarray,
    tol: Tolerance,
    relative_step: float,
    method: str,
) -> Diagnosis | None:
    shape = evaluator.layout.shapes[p]
    if len(shape) != 2 or shape[0] != shape[1]:
        return None
    rows, cols = np.unravel_index(e.flat_index, shape)
    pos = _pick(e, fail & (rows != cols), CONFIRM_ENTRIES)
    if pos.size == 0:
        return None
    flat_t = np.ravel_multi_index((cols[pos], rows[pos]), shape).astype(np.int64)
    n_t, noise = _numeric_at(evaluator, p, flat_t, e, relative_step, tol, method)
    confirmed = _confirmed(_matches(e.analytic[pos], n_t, noise, tol))
    if confirmed is None:
        return None
    name = evaluator.layout.names[p]
    return Diagnosis(
        "transpose",
        f"the analytic gradient of {name} equals the numeric one transposed at "
        f"{confirmed} of {pos.size} entries checked at transposed positions: "
        f"return d{name} = X.T @ delta, not its transpose (or swap the operands of the product)",
        _confidence(0.0, confirmed),
        {"n_confirmed": confirmed, "n_tried": int(pos.size)},
    )


def _confirmed(match: np.ndarray) -> int | None:
    """How many entries confirm a hypothesis, or None when fewer than 90% of them do."""
    n = int(np.count_nonzero(match))
    return n if n >= max(1, int(np.ceil(0.9 * match.size))) else None


def _swapped(
    evaluator: Evaluator,
    p: int,
    e: EntryResults,
    fail: np.ndarray,
    entries: Mapping[str, EntryResults],
    tol: Tolerance,
    relative_step: float,
    method: str,
) -> Diagnosis | None:
    layout = evaluator.layout
    shape = layout.shapes[p]
    others = [q for q in range(len(layout.names)) if q != p and layout.shapes[q] == shape]
    pos = _pick(e, fail, CONFIRM_ENTRIES)
    for q in others[:MAX_SWAP_CANDIDATES]:
        other = layout.names[q]
        n_q, noise = _numeric_at(
            evaluator, q, e.flat_index[pos], entries.get(other), relative_step, tol, method
        )
        confirmed = _confirmed(_matches(e.analytic[pos], n_q, noise, tol))
        if confirmed is not None:
            name = layout.names[p]
            return Diagnosis(
                "swapped",
                f"the analytic gradient of {name} matches the numeric gradient of {other} (same "
                f"shape {shape}) at {confirmed} of {pos.size} entries: the "
                f"gradients of {name} and {other} are returned under each other's names",
                _confidence(0.0, confirmed),
                {"other": other, "n_confirmed": confirmed},
            )
    return None


def diagnose(
    evaluator: Evaluator,
    reports: Mapping[str, ParamReport],
    entries: Mapping[str, EntryResults],
    analytic: Sequence[np.ndarray],
    loss_eps: float,
    nonfinite: Mapping[str, np.ndarray] | None = None,
    *,
    loss_noise: float = 0.0,
) -> dict[str, Diagnosis]:
    """Diagnose every failing parameter of ``reports``; returns name -> :class:`Diagnosis`.

    May spend a few loss evaluations (through ``evaluator``) on transposed positions and on
    entries of same-shape parameters, at most ``2 * CONFIRM_ENTRIES`` per hypothesis.
    ``loss_noise`` is the loss's measured noise level (see :mod:`gradprobe.tolerances`).
    """
    nonfinite = nonfinite or {}
    names = evaluator.layout.names
    failing = [n for n in names if n in reports and not reports[n].passed]
    downstream = failing[-1] if failing else None
    out: dict[str, Diagnosis] = {}
    for name in failing:
        r = reports[name]
        p = names.index(name)
        tol = Tolerance(rtol=r.rtol, atol=r.atol, loss_eps=loss_eps, loss_noise=loss_noise)
        if name not in entries and name not in nonfinite:
            continue
        out[name] = diagnose_parameter(
            evaluator,
            p,
            entries,
            analytic,
            tol,
            r.step,
            r.method,
            nonfinite.get(name),
            downstream,
        )
    return out
