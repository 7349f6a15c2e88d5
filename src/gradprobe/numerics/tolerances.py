"""Tolerances, as data: a small table keyed by dtype, with user overrides merged over it.

An entry passes when ``|a - n| <= max(rtol * (|a| + |n|), noise) + atol`` where ``noise`` is
the round-off floor of the central difference: a loss computed in floating point carries an
error of a few ``EPS * |L|``, which the division by the step magnifies to
``~ EPS * (|L(x+h)| + |L(x-h)|) / ((x+h) - (x-h))``. A disagreement below that floor is noise,
not evidence. The tolerances are not scaled with the parameter's size (jax's habit), so a single
wrong entry in a large array still fails.

The ``EPS * |L|`` model of round-off fails for losses whose value cancels: ``sum(v**3)`` over a
symmetric ``v`` is ~0 while each evaluation's rounding error is that of its O(1) terms
(``~ EPS * sqrt(n)``). So the loss's actual noise level is also measured, once per check, with
the ECnoise method of Moré and Wild ("Estimating computational noise", SIAM J. Sci. Comput.
33(3), 2011; :func:`ecnoise`): the loss is evaluated at ``2 * NOISE_HALF_POINTS + 1`` equally
spaced points ``x + i * delta * v`` along a random unit direction ``v`` with a step so small
(each entry moves by a few ulps) that the smooth part of the ``j``-th differences
``Delta^j L`` is negligible for ``j >= 2``; what remains is the rounding noise, whose standard
deviation ``sigma`` follows from ``gamma_j * mean((Delta^j L)**2) = sigma**2`` with
``gamma_j = (j!)**2 / (2j)!``. An order is accepted when its level agrees within a factor 4
with the next two and its differences change sign (noise, not a smooth trend). The round-off
floor of a loss difference ``L(a) - L(b)`` is then

    ``max(NOISE_FACTOR * EPS * (|L(a)| + |L(b)|), NOISE_SAFETY * sigma)``

(:meth:`Tolerance.difference_floor`): ``NOISE_SAFETY * sigma`` is ~11 standard deviations of a
difference of two noisy values, generous for the estimate's own scatter (a factor ~2) over
thousands of comparisons. For an ordinary loss ``sigma`` is about half an ulp of ``L`` and the
``EPS`` term dominates, so the estimate changes nothing; it is one number per check, not scaled
with any array's size, and costs ``2 * NOISE_HALF_POINTS`` evaluations (the centre is the base
loss). When the values are flat (all equal: noise below one ulp)
or no order is consistent, ``sigma`` is 0 and the ``EPS`` floor alone applies.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from . import differences
from .directions import numpy_sum
from .steps import MAX_LOSS_EPS

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

#: Multiplier on the measured noise level sigma of one loss evaluation (see the module text).
NOISE_SAFETY = 16.0

#: The noise estimate evaluates the loss at x + i * delta * v for i = -k..k (k this), i != 0.
NOISE_HALF_POINTS = 4

#: The noise estimate's step moves an entry of a parameter of scale 1 by about this many ulps.
NOISE_ULPS = 16.0

#: A loss rounded to a grid of relative spacing ``eps`` has a rounding noise of about
#: ``eps / 4`` relative (``ulp / sqrt(12)`` with an ulp between ``eps / 2`` and ``eps``).
SIGMA_PER_EPS = 4.0


@dataclass(frozen=True)
class Verdict:
    """The pass rule applied to some estimates, entry by entry (aligned arrays)."""

    abs_error: np.ndarray
    rel_error: np.ndarray
    allowed: np.ndarray
    passed: np.ndarray

    def where(self, mask: np.ndarray, other: Verdict) -> Verdict:
        """``other``'s verdict where ``mask`` is set, this one elsewhere."""
        return Verdict(
            np.where(mask, other.abs_error, self.abs_error),
            np.where(mask, other.rel_error, self.rel_error),
            np.where(mask, other.allowed, self.allowed),
            np.where(mask, other.passed, self.passed),
        )


@dataclass(frozen=True)
class Tolerance:
    """THE pass rule for one parameter: relative, absolute and the loss's precision.

    Every path that judges an estimate (sampled entries, retries, probe leaves, diagnosis
    confirmations, the step sweep) calls :meth:`compare`; :meth:`within_rtol` is the same rule
    without the round-off floor (is an entry resolvable above it?).
    """

    rtol: float
    atol: float
    loss_eps: float
    #: Measured standard deviation of one loss evaluation's rounding noise (0: not measured).
    loss_noise: float = 0.0

    def difference_floor(self, f_a: np.ndarray | float, f_b: np.ndarray | float) -> np.ndarray:
        """Round-off floor of a loss difference ``f_a - f_b``."""
        model = NOISE_FACTOR * self.loss_eps * (np.abs(f_a) + np.abs(f_b))
        return np.maximum(model, NOISE_SAFETY * self.loss_noise)

    def noise_floor(self, f_plus: np.ndarray, f_minus: np.ndarray, taken: np.ndarray) -> np.ndarray:
        """Round-off floor of ``(f_plus - f_minus) / taken`` for each entry."""
        return self.difference_floor(f_plus, f_minus) / np.abs(taken)

    def compare(self, analytic: np.ndarray, numeric: np.ndarray, noise: np.ndarray) -> Verdict:
        """The pass rule (:func:`gradprobe.numerics.differences.compare`) for any estimate.

        An entry passes when ``|a - n| <= max(rtol * max(1e-8, |a| + |n|), noise) + atol`` and
        the estimate is finite; NaN anywhere fails.
        """
        return Verdict(
            *differences.compare(
                analytic, numeric, np.broadcast_to(noise, np.shape(analytic)), self.rtol, self.atol
            )
        )

    def within_rtol(
        self, analytic: np.ndarray, numeric: np.ndarray, allowed: np.ndarray
    ) -> np.ndarray:
        """Where ``allowed`` (an allowance or an error) is within what ``rtol`` and ``atol``
        alone allow: the entry is resolvable above the round-off floor."""
        with np.errstate(invalid="ignore"):
            denom = np.maximum(1e-8, np.abs(analytic) + np.abs(numeric))
            return allowed <= self.rtol * denom + self.atol


@dataclass(frozen=True)
class NoiseEstimate:
    """The loss's measured rounding noise (:func:`ecnoise` on a few evaluations).

    Attributes
    ----------
    sigma : float
        Standard deviation of one evaluation's noise; 0 when none could be measured.
    order : int
        Difference order the estimate came from (0 when none).
    status : str
        ``"measured"``, ``"flat"`` (values equal to the last bit: noise below one ulp) or
        ``"inconclusive"`` (no order consistent; the ``EPS`` floor alone applies).
    n_evaluations : int
        Loss evaluations spent.
    step_scale : float
        How many times the step of a few ulps of the parameters' dtype had to be enlarged
        before the loss changed at all (1: it changed at once). Above 1, the loss is computed
        (or rounded) more coarsely than its parameters.
    """

    sigma: float
    order: int
    status: str
    n_evaluations: int = 0
    step_scale: float = 1.0

    def resolution(self, base_value: float, loss_eps: float) -> float:
        """The relative precision the loss is actually computed in (an epsilon): the
        parameters' ``loss_eps``, or coarser when the loss stayed flat at a few of their ulps
        and its noise had to be measured at a larger step; never coarser than
        :data:`~gradprobe.numerics.steps.MAX_LOSS_EPS` (a loss of 0 at the base point has no
        relative precision)."""
        if self.step_scale <= 1.0 or not self.sigma > 0.0:
            return loss_eps
        with np.errstate(over="ignore"):
            measured = SIGMA_PER_EPS * self.sigma / max(abs(base_value), 1e-300)
        return max(loss_eps, min(measured, MAX_LOSS_EPS))


def ecnoise(values: Sequence[float]) -> NoiseEstimate:
    """Noise level of equally spaced function values (Moré and Wild's ECnoise).

    Parameters
    ----------
    values : sequence of float
        ``f(x + i * delta * v)`` for consecutive ``i`` (at least 4 values).

    Returns
    -------
    NoiseEstimate
        ``n_evaluations`` is left at 0 (the caller knows what it spent).
    """
    # In Python floats: a dozen values, where numpy's per-call cost (~40 calls) would be most
    # of a small check's noise estimate. Every operation is numpy's, to the bit.
    d = [float(v) for v in values]
    nf = len(d)
    if nf < 4 or not all(math.isfinite(v) for v in d):
        return NoiseEstimate(0.0, 0, "inconclusive")
    # Differences of values scaled to [-2, 2] (exactly, by a power of two): those of a loss
    # near 1e300 would overflow.
    top = max(abs(v) for v in d)
    scale = math.ldexp(0.5, math.frexp(top)[1]) if top else 1.0
    d = [v / scale for v in d]
    levels: list[float] = []
    sign_change: list[bool] = []
    gamma = 1.0
    for j in range(1, nf):
        d = [b - a for a, b in itertools.pairwise(d)]
        # Moré and Wild call the step too small when half the first differences are 0; here
        # the step is fixed at a few ulps and a rounding grid coarser than the smooth change
        # (a cancelling sum) leaves some of them 0 while the noise is real, so only values
        # equal to the last bit count as flat.
        if j == 1 and not any(d):
            return NoiseEstimate(0.0, 0, "flat")
        gamma *= 0.5 * j / (2 * j - 1)  # (j!)**2 / (2j)!
        levels.append(scale * math.sqrt(gamma * (numpy_sum([v * v for v in d]) / len(d))))
        sign_change.append(min(d) < 0.0 < max(d))
    for k in range(nf - 3):
        window = levels[k : k + 3]
        if max(window) <= 4.0 * min(window) and sign_change[k]:
            return NoiseEstimate(levels[k], k + 1, "measured")
    return NoiseEstimate(0.0, 0, "inconclusive")


def loss_epsilon(dtypes: Iterable[np.dtype]) -> float:
    """Machine epsilon the loss is assumed to be computed in: the coarsest parameter dtype."""
    return max(float(np.finfo(dt).eps) for dt in dtypes)


def precision_dtype(eps: float) -> np.dtype:
    """The standard float dtype whose epsilon best describes a precision ``eps`` (the finest
    one at least half as coarse)."""
    for dt in (np.float64, np.float32, np.float16):
        if float(np.finfo(dt).eps) >= 0.5 * eps:
            return np.dtype(dt)
    return np.dtype(np.float16)


def tolerance_for(
    dtype: np.dtype,
    loss_eps: float,
    rtol: float | None = None,
    atol: float | None = None,
    loss_noise: float = 0.0,
    coarse: float | None = None,
) -> Tolerance:
    """Tolerance for a parameter of ``dtype``, with user overrides merged over the table.

    ``loss_eps`` is the epsilon of the loss's round-off floor. ``coarse``, when given, is a
    *measured* precision coarser than the parameters' (:meth:`NoiseEstimate.resolution`: a
    float32 loss of float64 parameters); the default ``rtol`` is then that precision's.
    ``loss_noise`` is the measured noise level of one loss evaluation
    (:attr:`NoiseEstimate.sigma`; 0 when not measured).
    """
    if coarse is not None and coarse > float(np.finfo(dtype).eps):
        dtype = precision_dtype(coarse)
    default = DEFAULT_RTOL.get(np.dtype(dtype), DEFAULT_RTOL[np.dtype(np.float64)])
    return Tolerance(
        rtol=default if rtol is None else rtol,
        atol=0.0 if atol is None else atol,
        loss_eps=loss_eps,
        loss_noise=float(loss_noise),
    )
