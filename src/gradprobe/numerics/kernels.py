"""Numba-compiled kernels that evaluate a numba-jitted loss at many perturbed points.

Only the numba kernel path (:mod:`gradprobe.evaluate.jit`, for a loss the user jitted) imports
this module, so numba loads only when a check needs it; the small per-check rules (difference
quotients, the pass rule) are numpy, in :mod:`gradprobe.numerics.differences`. Kernels take
validated contiguous float64 arrays, allocate their outputs once, validate nothing and print
nothing. fastmath stays off everywhere: it may fold ``(x + h) - x`` into ``h`` and drop the NaN
checks this code relies on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, prange
from numba import types as nbt

_VEC = nbt.Array(nbt.float64, 1, "C")
_MAT = nbt.Array(nbt.float64, 2, "C")
_IDX = nbt.Array(nbt.int64, 1, "C")
#: The type a jitted loss takes inside the kernels: float64(float64[::1]). Passing the loss as
#: a first-class function of this fixed type (not as a dispatcher, whose type differs per
#: function and per process) lets the kernels be cached on disk across runs.
LOSS_TYPE = nbt.FunctionType(nbt.float64(_VEC))


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
