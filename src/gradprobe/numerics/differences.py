"""Difference quotients and the pass rule, vectorized in numpy (inputs computed in float64).

These run at every check on arrays of a few hundred entries at most, where a numpy expression
costs microseconds and loads nothing (a numba function costs ~0.3 s to load from its on-disk
cache in each new process). Each function is the elementwise rule its docstring states, with
the same IEEE operations in the same order as the scalar loop it replaced, so the results are
the same bit for bit (``tests/numerics/test_differences.py`` compares them with that loop
compiled by numba). No warnings: a NaN or infinite input is a value to judge, not an error.
"""

from __future__ import annotations

import numpy as np


def _f64(x: np.ndarray | float) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _py_max(a: np.ndarray | float, b: np.ndarray) -> np.ndarray:
    """Python's (and numba's) ``max(a, b)`` elementwise: ``b if b > a else a``.

    Not ``np.maximum`` (which propagates NaN): a NaN ``b`` yields ``a``, a NaN ``a`` yields
    ``a``, and a tie yields ``a``.
    """
    return np.where(b > a, b, a)


def central_differences(f_plus: np.ndarray, f_minus: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """Numeric derivatives ``(f+ - f-) / taken`` (``taken`` the step actually taken)."""
    with np.errstate(all="ignore"):
        return (_f64(f_plus) - _f64(f_minus)) / _f64(taken)


def compare(
    analytic: np.ndarray,
    numeric: np.ndarray,
    noise: np.ndarray,
    rtol: float,
    atol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pass rule, for any estimate: ``abs_error, rel_error, allowed, passed``.

    ``allowed = max(rtol * max(1e-8, |a| + |n|), noise) + atol`` is the largest ``|a - n|`` an
    entry may show, ``noise`` the estimate's round-off floor (``max`` as Python's: a NaN floor
    leaves ``rtol * denom``). The relative error is the classic ``|a - n| / max(1e-8, |a| +
    |n|)``, inf when either side is NaN. NaN anywhere fails the entry (comparisons with NaN are
    False), and so does an infinite estimate (an inf loss on one side), whose floor is infinite.
    """
    a, n = _f64(analytic), _f64(numeric)
    with np.errstate(all="ignore"):
        abs_error = np.abs(a - n)
        denom = _py_max(1e-8, np.abs(a) + np.abs(n))
        r = abs_error / denom
        rel_error = np.where(r == r, r, np.inf)  # NaN ranks as the worst possible error
        allowed = _py_max(rtol * denom, _f64(noise)) + atol
        passed = (abs_error <= allowed) & (np.abs(n) < np.inf)
    return abs_error, rel_error, allowed, passed


def one_sided_differences(
    f_plus: np.ndarray,
    f0: float,
    f_minus: np.ndarray,
    forward_taken: np.ndarray,
    backward_taken: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward ``(f+ - f0) / up``, backward ``(f0 - f-) / down`` and their gap ``|fwd - bwd|``."""
    with np.errstate(all="ignore"):
        f0 = float(f0)
        forward = (_f64(f_plus) - f0) / _f64(forward_taken)
        backward = (f0 - _f64(f_minus)) / _f64(backward_taken)
        return forward, backward, np.abs(forward - backward)
