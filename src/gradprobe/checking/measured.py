"""What the evidence of a failing parameter shows, in numbers, when no relation explains it.

:func:`describe` is the ``mismatch`` diagnosis: it names no cause. It states what was measured
on the checked entries (finite, not kinks): how many fail and how they lie (rows, columns or
positions), the range of the ratio ``a / n`` over the failing entries whose numeric value is
resolvable, whether the error ``a - n`` follows the parameter's value (its correlation with
``w``) and where to start looking (the failing parameter with the largest relative error).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..report.model import Diagnosis
from .calibration import calibrated

#: |correlation| of the error with the value above which the report says it follows it.
FOLLOWS = 0.9


def _layout(shape: tuple[int, ...], flat: np.ndarray, fail: np.ndarray) -> str:
    if not shape or not np.any(fail):
        return ""
    multi = np.unravel_index(flat, shape)
    if len(shape) == 1:
        first = [int(i) for i in np.sort(flat[fail])[:4]]
        more = "..." if np.count_nonzero(fail) > 4 else ""
        return f" at positions {first}{more}"
    rows = np.unique(multi[0][fail]).size
    cols = np.unique(multi[-1][fail]).size
    return (
        f" in {rows} of {np.unique(multi[0]).size} rows and {cols} of "
        f"{np.unique(multi[-1]).size} columns checked"
    )


def _corr(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 3 or np.std(x) == 0.0 or np.std(y) == 0.0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def describe(
    name: str,
    shape: tuple[int, ...],
    flat: np.ndarray,
    a: np.ndarray,
    n: np.ndarray,
    w: np.ndarray,
    allowed: np.ndarray,
    fail: np.ndarray,
    start: str,
    relative_errors: Mapping[str, float],
) -> Diagnosis:
    """The ``mismatch`` diagnosis: the measured facts (arrays: the checked entries of
    ``name``; ``fail`` marks the failing ones)."""
    support = int(np.count_nonzero(fail))
    evidence: dict = {"n_failing": support, "n_checked": int(a.size)}
    parts = [f"{support} of {a.size} checked entries of {name} fail{_layout(shape, flat, fail)}"]
    resolvable = fail & (np.abs(n) > allowed)
    if np.any(resolvable):
        ratio = a[resolvable] / n[resolvable]
        lo, hi = float(np.min(ratio)), float(np.max(ratio))
        evidence["ratio_range"] = [lo, hi]
        parts.append(
            f"a/n runs from {lo:.3g} to {hi:.3g} there"
            if hi - lo > 1e-3 * max(abs(lo), abs(hi))
            else f"a/n is {lo:.4g} there"
        )
    numeric_zero = fail & ~resolvable
    if np.any(numeric_zero):
        parts.append(
            f"the numeric gradient is 0 within its floor at {np.count_nonzero(numeric_zero)}"
        )
    r = _corr(w[fail], (a - n)[fail]) if support else None
    if r is not None:
        evidence["error_value_correlation"] = r
        follows = "follows" if abs(r) >= FOLLOWS else "does not follow"
        parts.append(f"the error a - n {follows} the value of {name} (correlation {r:.2f})")
    rel = relative_errors.get(start)
    size = "" if rel is None or not np.isfinite(rel) else f", {rel:.3g}"
    evidence.update(
        start_with=start, relative_errors={k: float(v) for k, v in relative_errors.items()}
    )
    return Diagnosis(
        "mismatch",
        "no relation (scale, sign, zero, unused, clipped, missing term, transpose, swap, "
        "shift, partial factor) explains each entry within its numeric error, so no cause is "
        f"named. Measured: {'; '.join(parts)}. Typical of a dropped product or chain-rule term, "
        "a wrong activation derivative or a wrong cached tensor: check one layer at a time, "
        "starting from the failing parameter with the largest relative error "
        f"||a - n|| / ||n|| over its checked entries ({start!r}{size})",
        calibrated("mismatch", support),
        evidence,
    )
