"""Numba-compiled numerical kernels.

Kernels take validated contiguous float64 arrays, allocate their outputs once, validate nothing
and print nothing. fastmath stays off everywhere: it may fold ``(x + h) - x`` into ``h`` and drop
the NaN checks this code relies on.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

__all__ = ["compare_central", "relative_error", "warm_up"]


@njit(cache=True)
def relative_error(analytic: float, numeric: float) -> float:
    """The classic ``|a - n| / max(1e-8, |a| + |n|)``."""
    return abs(analytic - numeric) / max(1e-8, abs(analytic) + abs(numeric))


@njit(cache=True)
def compare_central(
    analytic: np.ndarray,
    f_plus: np.ndarray,
    f_minus: np.ndarray,
    taken: np.ndarray,
    rtol: float,
    atol: float,
    noise_coef: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Numeric gradients from central differences and their comparison with ``analytic``.

    Returns ``numeric, abs_error, rel_error, allowed, passed`` where ``allowed`` is the absolute
    difference the entry may show: ``max(rtol * (|a| + |n|), noise) + atol`` with the round-off
    floor ``noise = noise_coef * (|f+| + |f-|) / |taken|``. NaN anywhere fails the entry.
    """
    m = analytic.shape[0]
    numeric = np.empty(m)
    abs_error = np.empty(m)
    rel_error = np.empty(m)
    allowed = np.empty(m)
    passed = np.empty(m, dtype=np.bool_)
    for i in range(m):
        n = (f_plus[i] - f_minus[i]) / taken[i]
        a = analytic[i]
        numeric[i] = n
        d = abs(a - n)
        abs_error[i] = d
        r = d / max(1e-8, abs(a) + abs(n))
        rel_error[i] = r if r == r else np.inf  # NaN ranks as the worst possible error
        noise = noise_coef * (abs(f_plus[i]) + abs(f_minus[i])) / abs(taken[i])
        tol = max(rtol * max(1e-8, abs(a) + abs(n)), noise) + atol
        allowed[i] = tol
        # Written so that NaN (in a, n or tol) fails: comparisons with NaN are False.
        passed[i] = d <= tol
    return numeric, abs_error, rel_error, allowed, passed


_warm = False


def warm_up() -> float:
    """Compile (or load from cache) the kernels used by every check; return the seconds spent.

    Called once per process before the first check so compile time is reported apart from run
    time; later calls cost nothing and return 0.
    """
    global _warm
    if _warm:
        return 0.0
    start = time.perf_counter()
    one = np.ones(1)
    compare_central(one, one, one, one, 1e-5, 0.0, 1e-15)
    _warm = True
    return time.perf_counter() - start
