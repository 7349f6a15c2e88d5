"""Tolerances, as data: a small table keyed by dtype, with user overrides merged over it.

An entry passes when ``|a - n| <= max(rtol * (|a| + |n|), noise) + atol`` where ``noise`` is
the round-off floor of the central difference: a loss computed in floating point carries an
error of a few ``EPS * |L|``, which the division by the step magnifies to
``~ EPS * (|L(x+h)| + |L(x-h)|) / ((x+h) - (x-h))``. A disagreement below that floor is noise,
not evidence. The tolerances are not scaled with the parameter's size (jax's habit), so a single
wrong entry in a large array still fails.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_RTOL", "NOISE_FACTOR", "Tolerance", "loss_epsilon", "tolerance_for"]

# Relative tolerance on |a - n| / (|a| + |n|) per dtype. Central differences with the default
# step reach ~EPS**(2/3) relative accuracy on well-scaled functions (float64: ~4e-11), so these
# leave ample room for curvature while catching a relative error of 1e-4 (rel err 5e-5) in
# float64 and of a few percent in float32.
DEFAULT_RTOL: dict[np.dtype, float] = {
    np.dtype(np.float16): 5e-2,
    np.dtype(np.float32): 2e-3,
    np.dtype(np.float64): 1e-5,
    np.dtype(np.longdouble): 1e-5,
}

# Multiplier on EPS * |L| / step: summing many terms makes a loss's round-off several EPS.
NOISE_FACTOR = 16.0


@dataclass(frozen=True)
class Tolerance:
    """The pass rule for one parameter: relative, absolute and the loss's precision."""

    rtol: float
    atol: float
    loss_eps: float

    def noise_floor(self, f_plus: np.ndarray, f_minus: np.ndarray, taken: np.ndarray) -> np.ndarray:
        """Round-off floor of ``(f_plus - f_minus) / taken`` for each entry."""
        return NOISE_FACTOR * self.loss_eps * (np.abs(f_plus) + np.abs(f_minus)) / np.abs(taken)


def loss_epsilon(dtypes: Iterable[np.dtype]) -> float:
    """Machine epsilon the loss is assumed to be computed in: the coarsest parameter dtype."""
    return max(float(np.finfo(dt).eps) for dt in dtypes)


def tolerance_for(
    dtype: np.dtype, loss_eps: float, rtol: float | None = None, atol: float | None = None
) -> Tolerance:
    """Tolerance for a parameter of ``dtype``, with user overrides merged over the table."""
    default = DEFAULT_RTOL.get(np.dtype(dtype), DEFAULT_RTOL[np.dtype(np.float64)])
    return Tolerance(
        rtol=default if rtol is None else rtol,
        atol=0.0 if atol is None else atol,
        loss_eps=loss_eps,
    )
