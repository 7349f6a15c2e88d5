"""The warnings a check gives about its own precision: a loss coarser or noisier than its
parameters, parameters below float64 (with the advice that makes the check tighter)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..layout import ParamLayout
from ..numerics.tolerances import precision_dtype
from .context import ParamCheck

#: Measured noise this many times above ``EPS * max(1, |L|)`` is not floating-point round-off.
NOISY_LOSS_RATIO = 1e6


def precision_warnings(
    contexts: Mapping[str, ParamCheck], sigma: float, base_value: float, loss_eps: float
) -> list[str]:
    """A warning when the loss is computed more coarsely than its parameters, or is noisy."""
    first = next(iter(contexts.values()))
    precision = first.tolerance.loss_eps
    if precision > loss_eps:
        like = precision_dtype(precision)
        return [
            f"the loss is computed in lower precision than its parameters: it stays flat when "
            f"they move by a few of their ulps and resolves only ~{precision:.2g} relative "
            f"(like {like}); a float32 cast inside the loss, a float32 return value, or "
            f"rounding. The check used the step and tolerance of that precision (step "
            f"{first.relative_step:.3g}, rtol {first.tolerance.rtol:g}, measured noise "
            f"{sigma:.3g}); compute the loss in the parameters' precision for a tighter check."
        ]
    roundoff = loss_eps * max(1.0, abs(base_value))
    if not sigma > NOISY_LOSS_RATIO * roundoff:
        return []
    return [
        f"the loss is noisy near the base point: values a few ulps apart differ by ~{sigma:.3g}, "
        f"far above floating-point round-off (~{roundoff:.3g}); a rounded or integer-valued "
        "loss, or randomness that the pre-flight repeat did not catch. Differences below that "
        "noise cannot be resolved, so entries passing 'at noise floor' are unverified: return "
        "the unrounded float loss."
    ]


#: How the float32 warning says to check in float64; an adapter whose framework needs another
#: step first (JAX without x64) replaces it with the form that works there.
PROMOTE_ADVICE = "check(..., promote=True) casts them for the check"


def dtype_warnings(layout: ParamLayout) -> list[str]:
    """A warning per dtype below float64 among the parameters, naming them."""
    out = []
    for dtype in sorted({dt for dt in layout.dtypes if np.finfo(dt).bits < 64}, key=str):
        names = [n for n, dt in zip(layout.names, layout.dtypes, strict=True) if dt == dtype]
        # Central differences reach ~EPS**(2/3) relative accuracy at best.
        digits = int(-np.log10(float(np.finfo(dtype).eps) ** (2.0 / 3.0)))
        out.append(
            f"parameters {names} are {dtype}, lower than float64 precision: finite differences "
            f"in {dtype} resolve only ~{digits} significant digits, so tolerances are loosened; "
            f"check in float64 when the loss allows it ({PROMOTE_ADVICE})."
        )
    return out
