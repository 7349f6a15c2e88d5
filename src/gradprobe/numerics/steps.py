"""Finite-difference step selection.

The relative step follows ``scipy.optimize._numdiff``: ``h = EPS**power * max(1, |x|)`` where
``power`` balances the scheme's truncation error against round-off (``~EPS/h``): ``1/3`` for
central differences (truncation ~h**2), ``1/5`` for the Richardson stencil (truncation ~h**4),
``1/2`` for the complex step (no subtraction, so any small step works; scipy's choice).
Perturbed values are rounded to the parameter's dtype and the divisor is the step actually
taken, ``(x + h) - (x - h)``, not ``2h``: the two differ by up to one ulp of ``x``, which for
``|x| >> h`` is a relative error far above the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Finite-difference schemes, in order of cost per entry (2, 4 and 1 loss evaluations).
METHODS = ("central", "richardson", "complex-step")
#: Loss evaluations per entry of each scheme (before any retry).
EVALUATIONS_PER_ENTRY = {"central": 2, "richardson": 4, "complex-step": 1}

# Power of the machine epsilon giving the optimal relative step for each method.
_STEP_POWER = {
    "central": 1.0 / 3.0,
    "richardson": 1.0 / 5.0,
    "complex-step": 1.0 / 2.0,
}

#: The retry of a disagreeing entry divides the step by this (see differences.py).
RETRY_FACTOR = 8.0
#: The coarsest precision a loss is taken to be computed in (float8 e4m3's epsilon: no float
#: format is coarser): a measured one above it (a loss of 0 at the base point with noise
#: around it has no relative precision) is capped here, so the step stays below ~0.5.
MAX_LOSS_EPS = 2.0**-3


def default_relative_step(
    dtype: np.dtype, method: str = "central", loss_eps: float | None = None
) -> float:
    """Default relative step ``EPS**power`` for ``dtype`` and finite-difference ``method``.

    ``loss_eps``, when coarser than ``dtype``'s epsilon, is the precision the loss is really
    computed in (a float32 loss of float64 parameters): the step balances truncation against
    that precision's round-off instead.
    """
    try:
        power = _STEP_POWER[method]
    except KeyError:
        raise ValueError(f"no default step for method {method!r}") from None
    eps = float(np.finfo(dtype).eps)
    if loss_eps is not None and loss_eps == loss_eps:  # NaN: not measured
        eps = max(eps, min(float(loss_eps), MAX_LOSS_EPS))
    return eps**power


def in_dtype(values: np.ndarray, dtype: np.dtype, *, overwrite: bool = False) -> np.ndarray:
    """``values`` (float64, computed from finite parameters) cast to a float ``dtype`` inside
    its range: one beyond it (float16 holds up to 65504), or an overflow to inf, becomes the
    largest finite value, so a step from a finite parameter never hands the loss an inf.
    ``overwrite``: ``values`` is a temporary that may be clipped in place (no copy)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        big = float(np.finfo(dtype).max)
        values = np.clip(values, -big, big, out=values if overwrite else None)
    return values.astype(dtype, copy=False)


@dataclass(frozen=True)
class CentralSteps:
    """Perturbed values of a set of entries, in the parameter's dtype.

    ``plus`` and ``minus`` are what the loss sees; ``taken`` is ``plus - minus`` computed
    exactly in float64 (the divisor of the central difference).
    """

    base: np.ndarray
    plus: np.ndarray
    minus: np.ndarray

    @property
    def taken(self) -> np.ndarray:
        return self.plus.astype(np.float64) - self.minus.astype(np.float64)

    @property
    def forward_taken(self) -> np.ndarray:
        return self.plus.astype(np.float64) - self.base.astype(np.float64)

    @property
    def backward_taken(self) -> np.ndarray:
        return self.base.astype(np.float64) - self.minus.astype(np.float64)


def central_steps(values: np.ndarray, relative_step: float | np.ndarray) -> CentralSteps:
    """Perturbed values ``x +- h`` with ``h = relative_step * max(1, |x|)`` in ``values.dtype``.

    ``relative_step`` may be one number or one per entry (retries use a smaller step for some).
    """
    dtype = values.dtype
    x = values.astype(np.float64)
    with np.errstate(over="ignore"):  # float64 overflow of x + h is clipped to the range
        h = relative_step * np.maximum(1.0, np.abs(x))
        plus = in_dtype(x + h, dtype)
        minus = in_dtype(x - h, dtype)
    # A step below one ulp would round back to x: widen it to at least one ulp each way (not
    # past the dtype's range: at its largest value the difference is one-sided).
    big = np.asarray(np.finfo(dtype).max, dtype=dtype)
    stuck = (plus == values) & (values < big)
    if np.any(stuck):
        plus[stuck] = np.nextafter(values[stuck], np.asarray(np.inf, dtype=dtype))
    stuck = (minus == values) & (values > -big)
    if np.any(stuck):
        minus[stuck] = np.nextafter(values[stuck], np.asarray(-np.inf, dtype=dtype))
    return CentralSteps(base=values.copy(), plus=plus, minus=minus)


def complex_steps(values: np.ndarray, relative_step: float) -> np.ndarray:
    """Imaginary steps ``h = relative_step * max(1, |x|)`` for the complex-step derivative."""
    return relative_step * np.maximum(1.0, np.abs(values.astype(np.float64)))
