"""The numba kernel path: every perturbation of a jitted loss inside one compiled kernel.

For a numba-jitted ``loss`` of one flat float64 vector (:func:`is_jit_loss`), the row runner
:class:`JitKernel` evaluates blocks of rows in a numba kernel (``prange`` over chunks), with no
Python per entry. numba and the kernels (:mod:`gradprobe.numerics.kernels`) load only here,
when such a loss is checked: a check of any other loss never imports numba.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import GradCheckError, LossEvaluationError
from ..layout import ParamLayout, as_scalar_loss
from .threads import one_blas_thread

if TYPE_CHECKING:
    from .base import Evaluator

#: Rows per numba kernel call (the budget and deadline are checked between calls).
JIT_ROWS_PER_CALL = 8192


def is_jit_loss(loss: Any, layout: ParamLayout) -> bool:
    """Whether ``loss`` can run inside the numba kernel: a numba dispatcher and one flat
    float64 vector of parameters."""
    if "numba" not in sys.modules:  # a numba dispatcher exists only once numba is imported
        return False
    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # pragma: no cover
        return False
    return (
        isinstance(loss, Dispatcher)
        and layout.kind == "array"
        and len(layout.shapes[0]) == 1
        and layout.dtypes[0] == np.float64
    )


class JitKernel:
    """Row runner: runs every perturbation inside one numba kernel (``prange`` over chunks).

    ``n_threads`` numba threads (one BLAS thread each), ``chunks_per_thread`` chunks each per
    kernel call (the dispatch policy's ``chunks_per_worker``); rows are charged to the budget
    per kernel call. ``compile_seconds`` is the time spent loading the kernels module and
    compiling (or loading from the on-disk cache) the kernels and the loss's specialization,
    at construction.
    """

    def __init__(
        self, loss: Callable[[Any], Any], *, n_threads: int, chunks_per_thread: int
    ) -> None:
        import numba

        start = time.perf_counter()
        from ..numerics import kernels

        loaded = time.perf_counter() - start
        self.n_threads = max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS))
        self.chunks_per_thread = max(1, int(chunks_per_thread))
        self._kernels = kernels
        compiled, self._fn = kernels.jit_loss_kernels(loss)
        self.compile_seconds = loaded + compiled

    @property
    def name(self) -> str:
        return f"numba kernel ({self.n_threads} threads)"

    def call_loss(self, ev: Evaluator, arrays: Sequence[np.ndarray], where: str) -> float:
        return as_scalar_loss(ev.loss(ev.layout.pack(arrays)), where)

    def _kernel(self, ev: Evaluator, run: Callable[[], Any], param: int) -> Any:
        import numba

        previous = numba.get_num_threads()
        numba.set_num_threads(self.n_threads)
        try:
            with one_blas_thread():
                return run()
        except (GradCheckError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise ev.wrap_error(exc, param, None) from exc
        finally:
            numba.set_num_threads(previous)

    def entry_losses(
        self, ev: Evaluator, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        m, k = values.shape
        out = np.empty((m, k))
        x = ev.base[param].reshape(-1)
        for start in range(0, m, JIT_ROWS_PER_CALL):
            stop = min(m, start + JIT_ROWS_PER_CALL)
            ev.charge((stop - start) * k)
            idx = np.ascontiguousarray(flat_index[start:stop], dtype=np.int64)
            vals = np.ascontiguousarray(values[start:stop], dtype=np.float64)
            n_chunks = min(stop - start, self.n_threads * self.chunks_per_thread)
            try:
                out[start:stop] = self._kernel(
                    ev,
                    lambda idx=idx, vals=vals, n_chunks=n_chunks: self._kernels.jit_entry_losses(
                        self._fn, x, idx, vals, n_chunks
                    ),
                    param,
                )
            except LossEvaluationError as err:
                self._replay(ev, param, idx, vals, err)
        return out

    def _replay(
        self,
        ev: Evaluator,
        param: int,
        idx: np.ndarray,
        vals: np.ndarray,
        error: LossEvaluationError,
    ) -> None:
        """Re-run a failed kernel call's rows from Python and raise the first loss error with
        its entry: inside ``prange`` numba loses the exception's message and position."""
        x = ev.base[param].reshape(-1).copy()
        for r in range(idx.size):
            i = int(idx[r])
            for c in range(vals.shape[1]):
                w = x.copy()
                w[i] = vals[r, c]
                try:
                    ev.loss(w)
                except Exception as exc:
                    raise ev.wrap_error(exc, param, i) from exc
        raise error

    def vector_losses(self, ev: Evaluator, param: int, vectors: np.ndarray) -> np.ndarray:
        m = vectors.shape[0]
        out = np.empty(m)
        for start in range(0, m, JIT_ROWS_PER_CALL):
            stop = min(m, start + JIT_ROWS_PER_CALL)
            ev.charge(stop - start)
            vec = np.ascontiguousarray(vectors[start:stop], dtype=np.float64)
            n_chunks = min(stop - start, self.n_threads * self.chunks_per_thread)
            out[start:stop] = self._kernel(
                ev,
                lambda vec=vec, n_chunks=n_chunks: self._kernels.jit_vector_losses(
                    self._fn, vec, n_chunks
                ),
                param,
            )
        return out
