"""Numba-compiled numerical kernels.

Kernels take validated contiguous float64 arrays, allocate their outputs once, validate nothing
and print nothing. fastmath stays off everywhere: it may fold ``(x + h) - x`` into ``h`` and drop
the NaN checks this code relies on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, prange
from numba import types as nbt

__all__ = [
    "central_differences",
    "compare",
    "jit_entry_losses",
    "jit_loss_kernels",
    "jit_vector_losses",
    "one_sided_differences",
    "warm_up",
]

_VEC = nbt.Array(nbt.float64, 1, "C")
_MAT = nbt.Array(nbt.float64, 2, "C")
_IDX = nbt.Array(nbt.int64, 1, "C")
#: The type a jitted loss takes inside the kernels: float64(float64[::1]). Passing the loss as
#: a first-class function of this fixed type (not as a dispatcher, whose type differs per
#: function and per process) lets the kernels be cached on disk across runs.
LOSS_TYPE = nbt.FunctionType(nbt.float64(_VEC))


@njit(cache=True)
def central_differences(f_plus: np.ndarray, f_minus: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """Numeric derivatives ``(f+ - f-) / taken`` (``taken`` the step actually taken)."""
    m = f_plus.shape[0]
    numeric = np.empty(m)
    for i in range(m):
        numeric[i] = (f_plus[i] - f_minus[i]) / taken[i]
    return numeric


@njit(cache=True)
def compare(
    analytic: np.ndarray,
    numeric: np.ndarray,
    noise: np.ndarray,
    rtol: float,
    atol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pass rule, for any estimate: ``abs_error, rel_error, allowed, passed``.

    ``allowed = max(rtol * max(1e-8, |a| + |n|), noise) + atol`` is the largest ``|a - n|`` an
    entry may show, ``noise`` the estimate's round-off floor. The relative error is the classic
    ``|a - n| / max(1e-8, |a| + |n|)``, inf when either side is NaN. NaN anywhere fails the
    entry, and so does an infinite estimate (an inf loss on one side), whose floor is infinite.
    """
    m = analytic.shape[0]
    abs_error = np.empty(m)
    rel_error = np.empty(m)
    allowed = np.empty(m)
    passed = np.empty(m, dtype=np.bool_)
    for i in range(m):
        a = analytic[i]
        n = numeric[i]
        d = abs(a - n)
        abs_error[i] = d
        denom = max(1e-8, abs(a) + abs(n))
        r = d / denom
        rel_error[i] = r if r == r else np.inf  # NaN ranks as the worst possible error
        tol = max(rtol * denom, noise[i]) + atol
        allowed[i] = tol
        # Written so that NaN (in a, n or tol) fails: comparisons with NaN are False.
        passed[i] = d <= tol and abs(n) < np.inf
    return abs_error, rel_error, allowed, passed


@njit(cache=True)
def one_sided_differences(
    f_plus: np.ndarray,
    f0: float,
    f_minus: np.ndarray,
    forward_taken: np.ndarray,
    backward_taken: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward ``(f+ - f0) / up``, backward ``(f0 - f-) / down`` and their gap ``|fwd - bwd|``."""
    m = f_plus.shape[0]
    forward = np.empty(m)
    backward = np.empty(m)
    gap = np.empty(m)
    for i in range(m):
        forward[i] = (f_plus[i] - f0) / forward_taken[i]
        backward[i] = (f0 - f_minus[i]) / backward_taken[i]
        gap[i] = abs(forward[i] - backward[i])
    return forward, backward, gap


def _entry_losses_py(loss, x, flat_index, values, n_chunks):  # type: ignore[no-untyped-def]
    m = flat_index.shape[0]
    k = values.shape[1]
    out = np.empty((m, k))
    for c in prange(n_chunks):
        start = (c * m) // n_chunks
        stop = ((c + 1) * m) // n_chunks
        w = x.copy()  # this chunk's own vector; restored entry by entry from saved values
        for r in range(start, stop):
            i = flat_index[r]
            saved = w[i]
            for j in range(k):
                w[i] = values[r, j]
                out[r, j] = loss(w)
            w[i] = saved
    return out


def _vector_losses_py(loss, vectors, n_chunks):  # type: ignore[no-untyped-def]
    m = vectors.shape[0]
    out = np.empty(m)
    for c in prange(n_chunks):
        start = (c * m) // n_chunks
        stop = ((c + 1) * m) // n_chunks
        w = np.empty(vectors.shape[1])
        for r in range(start, stop):
            w[:] = vectors[r]
            out[r] = loss(w)
    return out


_jit_kernels: dict[str, Any] = {}


def _compiled_kernels() -> tuple[float, Any, Any]:
    """Compile (or load from the on-disk cache) the two loss kernels once per process."""
    if "entry" in _jit_kernels:
        return 0.0, _jit_kernels["entry"], _jit_kernels["vector"]
    start = time.perf_counter()
    opts = {"parallel": True, "cache": True, "fastmath": False}
    entry = njit(nbt.float64[:, ::1](LOSS_TYPE, _VEC, _IDX, _MAT, nbt.int64), **opts)(
        _entry_losses_py
    )
    vector = njit(nbt.float64[::1](LOSS_TYPE, _MAT, nbt.int64), **opts)(_vector_losses_py)
    _jit_kernels.update(entry=entry, vector=vector)
    return time.perf_counter() - start, entry, vector


def jit_loss_kernels(loss: Callable[[np.ndarray], float]) -> tuple[float, Any]:
    """Prepare a numba-jitted ``loss`` of one float64 vector for the kernels.

    Returns the seconds spent compiling (kernels and the loss's ``float64(float64[::1])``
    specialization; 0 when all were ready) and the loss to pass to :func:`jit_entry_losses`.
    """
    seconds, _, _ = _compiled_kernels()
    start = time.perf_counter()
    loss.compile((_VEC,))  # type: ignore[attr-defined]
    return seconds + (time.perf_counter() - start), loss


def jit_entry_losses(
    loss: Any, x: np.ndarray, flat_index: np.ndarray, values: np.ndarray, n_chunks: int
) -> np.ndarray:
    """``out[r, j]`` = ``loss(x)`` with ``x[flat_index[r]] = values[r, j]``; ``prange`` over
    ``n_chunks`` chunks of rows, each on its own copy of ``x``."""
    return _jit_kernels["entry"](loss, x, flat_index, values, n_chunks)


def jit_vector_losses(loss: Any, vectors: np.ndarray, n_chunks: int) -> np.ndarray:
    """``out[r]`` = ``loss(vectors[r])`` (a copy), ``prange`` over ``n_chunks`` chunks."""
    return _jit_kernels["vector"](loss, vectors, n_chunks)


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
    compare(one, central_differences(one, one, one), one, 1e-5, 0.0)
    one_sided_differences(one, 1.0, one, one, one)
    _warm = True
    return time.perf_counter() - start
