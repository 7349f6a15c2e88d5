"""Evaluating the user's loss at perturbed parameters.

This is the only module that calls the user's loss during a check. An evaluator owns private
working copies of the parameters; the caller's arrays are never written to. Every perturbation
restores the saved value in a ``finally`` block (never ``x + h - h``), so the working copies are
exact again whatever the loss does, KeyboardInterrupt included.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckAborted, GradCheckError, InvalidInputError, LossEvaluationError
from ..layout import ParamLayout, as_scalar_loss
from ..numerics import kernels

__all__ = [
    "AutoEvaluator",
    "BatchedEvaluator",
    "Evaluator",
    "JitEvaluator",
    "ParallelEvaluator",
    "SerialEvaluator",
    "keep_workers",
    "make_evaluator",
]

#: Chunks of entries per worker (and per numba thread): enough to balance uneven chunks and
#: to check the deadline between rounds, few enough that per-task overhead stays small.
CHUNKS_PER_WORKER = 4
#: Bytes of perturbed copies a batched loss receives per call.
BATCHED_MEMORY = 64 * 2**20
#: A call to the parallel evaluator whose evaluations would take less than this in one
#: process runs in this process instead: a dispatch to joblib workers costs ~10-20 ms
#: (measured on 2 cores with loky, up to ~50 ms with 8 chunks), so small calls (probes, retries, tiny parameters) would
#: spend more time dispatching than evaluating. Results are identical either way.
MIN_DISPATCH_SECONDS = 0.2
#: Starting process workers (loky, multiprocessing) costs about this much (measured 0.4-0.5 s
#: for 2 workers on 2 cores): a call dispatches only when its work pays for that too.
PROCESS_START_SECONDS = 0.5
PROCESS_BACKENDS = ("loky", "multiprocessing")
#: The same threshold for ``n_jobs="auto"``: work below it stays in this thread.
AUTO_DISPATCH_SECONDS = 0.25
#: Rows per numba kernel call (the budget and deadline are checked between calls).
JIT_ROWS_PER_CALL = 8192


class Evaluator:
    """Evaluates ``loss`` at the base point and at perturbations of one parameter at a time.

    Parameters
    ----------
    loss : callable
        The user's loss, called with the user's kind of container.
    layout : ParamLayout
        Names, shapes and container kind of the parameters.
    base : list of ndarray
        Private C-contiguous copies of the parameters (owned by the evaluator from now on).
    budget : int, optional
        Maximum number of loss evaluations; exceeding it raises :class:`CheckAborted`.
    deadline : float, optional
        ``time.monotonic()`` value after which evaluation raises :class:`CheckAborted`.
    """

    def __init__(
        self,
        loss: Callable[[Any], Any],
        layout: ParamLayout,
        base: Sequence[np.ndarray],
        *,
        budget: int | None = None,
        deadline: float | None = None,
    ) -> None:
        self.loss = loss
        self.layout = layout
        self.base = list(base)
        self.budget = budget
        self.deadline = deadline
        self.n_evaluations = 0
        self._base_value: float | None = None
        #: Things the report should tell the user about how the loss was evaluated.
        self.warnings: list[str] = []
        # Set by check(progress=...): called as progress(done, total) each time work is charged.
        self.on_progress: Callable[[int, int], None] | None = None
        self.planned_evaluations = 0

    #: Seconds spent compiling kernels for this evaluator (reported apart from run time).
    compile_seconds: float = 0.0

    @property
    def executor(self) -> str:
        """Which execution path evaluates the loss, as recorded in the report's settings."""
        return "serial"

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release workers or other resources (nothing for the serial evaluator)."""

    # -- accounting ----------------------------------------------------------------------------
    def _charge(self, n: int) -> None:
        """Account for ``n`` loss evaluations about to run; stop at the budget or deadline."""
        if self.budget is not None and self.n_evaluations + n > self.budget:
            raise CheckAborted(
                f"evaluation budget of {self.budget} loss evaluations exhausted "
                f"({self.n_evaluations} done); raise `budget` or check fewer entries.",
                reason="budget",
            )
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise CheckAborted(
                "time limit reached; raise `timeout` or check fewer entries.", reason="timeout"
            )
        self.n_evaluations += n
        if self.on_progress is not None:
            self.on_progress(self.n_evaluations, max(self.planned_evaluations, self.n_evaluations))

    # -- evaluation ----------------------------------------------------------------------------
    def call_loss(self, arrays: Sequence[np.ndarray], where: str) -> float:
        """Call the loss on ``arrays`` (one per parameter) and return a float."""
        return as_scalar_loss(self.loss(self.layout.pack(arrays)), where)

    def base_loss(self) -> float:
        """The loss at the unperturbed parameters (evaluated once; later calls reuse it, the
        pre-flight having checked that the loss is deterministic)."""
        if self._base_value is None:
            self._charge(1)
            with _one_blas_thread():
                self._base_value = self.call_loss(
                    [a.copy() for a in self.base], "at the base point"
                )
        return self._base_value

    def entry_losses(self, param: int, flat_index: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Losses with single entries replaced.

        Row ``r``, column ``c`` of the result is the loss with entry ``flat_index[r]`` of
        parameter ``param`` set to ``values[r, c]`` (values in the parameter's dtype) and every
        other entry at its base value.
        """
        raise NotImplementedError

    def vector_losses(self, param: int, vectors: np.ndarray) -> np.ndarray:
        """Losses with parameter ``param`` replaced by each row of ``vectors`` (flat, its dtype)."""
        raise NotImplementedError

    # -- complex step (method="complex-step"; always serial, in this process) ------------------
    def complex_entry_losses(
        self, param: int, flat_index: np.ndarray, imag_steps: np.ndarray
    ) -> np.ndarray:
        """Complex losses with ``1j * imag_steps[r]`` added to entry ``flat_index[r]``.

        Every parameter is passed as a complex copy (complex128, or complex64 for float32
        and narrower); the loss must propagate complex values and return a complex scalar.
        Returns the complex losses (imaginary part ``~ h * dL/dx``).
        """
        cdtype = [np.result_type(dt, np.complex64) for dt in self.layout.dtypes]
        work = [b.astype(ct) for b, ct in zip(self.base, cdtype, strict=True)]
        flat = work[param].reshape(-1)
        name = self.layout.names[param]
        out = np.empty(flat_index.size, dtype=np.complex128)
        for r in range(flat_index.size):
            i = int(flat_index[r])
            self._charge(1)
            try:
                flat[i] = self.base[param].reshape(-1)[i] + 1j * imag_steps[r]
                value = self.loss(self.layout.pack(work))
            except (TypeError, np.exceptions.ComplexWarning) as exc:
                raise _complex_unsupported(name, exc) from exc
            except Exception as exc:
                raise self._wrap_error(exc, param, i) from exc
            finally:
                # Fresh copies also undo anything the loss wrote into them.
                for k, b in enumerate(self.base):
                    work[k][...] = b
            out[r] = _as_complex_loss(value, f"with {name!r} perturbed by a complex step")
        return out

    def _wrap_error(self, exc: Exception, param: int, flat: int | None) -> LossEvaluationError:
        name = self.layout.names[param]
        if flat is None:
            where, index = f"while perturbing parameter {name!r} along a direction", None
        else:
            index = tuple(int(i) for i in np.unravel_index(flat, self.layout.shapes[param]))
            where = f"while perturbing parameter {name!r} at index {list(index)}"
        err = LossEvaluationError(
            f"loss raised {type(exc).__name__} {where}: {exc}", param=name, index=index
        )
        err.__cause__ = exc
        return err


class SerialEvaluator(Evaluator):
    """Evaluates in this thread, one loss call at a time, on in-place perturbed working copies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.work = [a.copy() for a in self.base]
        self.flat = [w.reshape(-1) for w in self.work]

    def entry_losses(self, param: int, flat_index: np.ndarray, values: np.ndarray) -> np.ndarray:
        with _one_blas_thread():
            return self._entry_losses(param, flat_index, values)

    def vector_losses(self, param: int, vectors: np.ndarray) -> np.ndarray:
        with _one_blas_thread():
            return self._vector_losses(param, vectors)

    def _entry_losses(self, param: int, flat_index: np.ndarray, values: np.ndarray) -> np.ndarray:
        out = np.empty(values.shape)
        where = f"with {self.layout.names[param]!r} perturbed"
        failure = _perturb_entries(
            lambda: self.call_loss(self.work, where),
            self.flat[param],
            flat_index,
            values,
            out,
            before_each=lambda: self._charge(1),
        )
        if failure is not None:
            row, exc = failure
            self._raise(exc, param, int(flat_index[row]))
        return out

    def _vector_losses(self, param: int, vectors: np.ndarray) -> np.ndarray:
        out = np.empty(vectors.shape[0])
        where = f"with {self.layout.names[param]!r} perturbed"
        failure = _replace_vectors(
            lambda: self.call_loss(self.work, where),
            self.flat[param],
            self.base[param].reshape(-1),
            vectors,
            out,
            before_each=lambda: self._charge(1),
        )
        if failure is not None:
            self._raise(failure[1], param, None)
        return out

    def _raise(self, exc: Exception, param: int, flat: int | None) -> None:
        """Re-raise gradprobe's own errors as they are; wrap the loss's with where it failed."""
        if isinstance(exc, (CheckAborted, LossEvaluationError)):
            raise exc
        raise self._wrap_error(exc, param, flat) from exc


def _perturb_entries(
    call: Callable[[], float],
    flat: np.ndarray,
    flat_index: np.ndarray,
    values: np.ndarray,
    out: np.ndarray,
    before_each: Callable[[], None] | None = None,
) -> tuple[int, Exception] | None:
    """The per-entry loop: set entry ``flat_index[r]`` to each ``values[r, c]``, store
    ``call()`` in ``out[r, c]`` and restore the saved value (``finally``: whatever happens,
    KeyboardInterrupt included). Returns ``(row, exception)`` for the first evaluation that
    raised, None when all succeeded; the serial evaluator and the workers share it."""
    m, k = values.shape
    for r in range(m):
        i = int(flat_index[r])
        saved = flat[i]
        try:
            for c in range(k):
                if before_each is not None:
                    before_each()
                flat[i] = values[r, c]
                out[r, c] = call()
        except Exception as exc:
            return r, exc
        finally:
            flat[i] = saved
    return None


def _replace_vectors(
    call: Callable[[], float],
    flat: np.ndarray,
    base: np.ndarray,
    vectors: np.ndarray,
    out: np.ndarray,
    before_each: Callable[[], None] | None = None,
) -> tuple[int, Exception] | None:
    """Like :func:`_perturb_entries` for whole replacement vectors, restoring ``base``."""
    for r in range(vectors.shape[0]):
        try:
            if before_each is not None:
                before_each()
            flat[:] = vectors[r]
            out[r] = call()
        except Exception as exc:
            return r, exc
        finally:
            flat[:] = base
    return None


# -- thread limits -----------------------------------------------------------------------------
@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run the block with every loaded BLAS library limited to one thread.

    Every loss evaluation, whatever the executor, runs under this limit: OpenBLAS splits some
    products differently with 1 and 2 threads and the loss changes in its last bits (measured
    on the mid-size example MLP: up to 8.9e-16), which would make the report depend on
    ``n_jobs``. Parallelism comes from workers, never from BLAS threads inside one evaluation,
    so workers x BLAS threads never exceed the cores. Without threadpoolctl nothing is limited.
    """
    controller = _blas_controller()
    if controller is None:  # pragma: no cover - threadpoolctl ships with the test extra
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


_controller: Any = None


def _blas_controller(refresh: bool = False) -> Any:
    """A cached ``threadpoolctl.ThreadpoolController`` (None without threadpoolctl).

    Discovering the loaded libraries costs ~0.5 ms, limiting through a cached controller
    ~15 us; the cache is refreshed once per check (:func:`make_evaluator`) so a BLAS loaded by
    the user's code since the last check is limited too.
    """
    global _controller
    if _controller is None or refresh:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover
            return None
        _controller = ThreadpoolController()
    return _controller


# -- work done by one worker (module level so process backends can pickle it) -----------------
@dataclass(frozen=True)
class _ChunkResult:
    """What a worker sends back for one chunk of rows."""

    losses: np.ndarray
    worker: str  # "pid:thread" of the worker that ran it
    failed_row: int  # row (within the chunk) whose evaluation raised, -1 when none did
    error: BaseException | None


def _worker_id() -> str:
    return f"{os.getpid()}:{threading.get_ident()}"


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _limit_in_worker(parent: str) -> contextlib.AbstractContextManager[None]:
    # The parent already holds the (process-wide) limit around thread-backend calls; entering
    # it again from several threads would race on the restore.
    return contextlib.nullcontext() if parent == str(os.getpid()) else _one_blas_thread()


def _entry_chunk(
    loss: Callable[[Any], Any],
    layout: ParamLayout,
    arrays: Sequence[np.ndarray],
    param: int,
    flat_index: np.ndarray,
    values: np.ndarray,
    parent: str,
) -> _ChunkResult:
    """Per-entry loop over one chunk, on this worker's own copy of the parameters."""
    out = np.empty(values.shape)
    return _in_worker(
        loss,
        layout,
        arrays,
        param,
        parent,
        out,
        lambda call, flat: _perturb_entries(call, flat, flat_index, values, out),
    )


def _vector_chunk(
    loss: Callable[[Any], Any],
    layout: ParamLayout,
    arrays: Sequence[np.ndarray],
    param: int,
    vectors: np.ndarray,
    parent: str,
) -> _ChunkResult:
    """Losses with parameter ``param`` replaced by each row of ``vectors``."""
    out = np.empty(vectors.shape[0])
    base = np.asarray(arrays[param]).reshape(-1)
    return _in_worker(
        loss,
        layout,
        arrays,
        param,
        parent,
        out,
        lambda call, flat: _replace_vectors(call, flat, base, vectors, out),
    )


def _in_worker(
    loss: Callable[[Any], Any],
    layout: ParamLayout,
    arrays: Sequence[np.ndarray],
    param: int,
    parent: str,
    out: np.ndarray,
    run: Callable[[Callable[[], float], np.ndarray], tuple[int, Exception] | None],
) -> _ChunkResult:
    """What a worker does around one loop: its BLAS limit, its own copies of the parameters
    (memmaps arrive read-only), and the loop's failure packed for the parent."""
    with _limit_in_worker(parent):
        work = [np.array(a, copy=True) for a in arrays]
        where = f"with {layout.names[param]!r} perturbed"
        failure = run(
            lambda: as_scalar_loss(loss(layout.pack(work)), where), work[param].reshape(-1)
        )
        if failure is not None:
            return _ChunkResult(out, _worker_id(), failure[0], _portable(failure[1]))
        return _ChunkResult(out, _worker_id(), -1, None)


def _batched_call(
    loss: Callable[[Any], Any],
    layout: ParamLayout,
    arrays: Sequence[np.ndarray],
    param: int,
    block: np.ndarray,
) -> np.ndarray:
    """Call a batched loss with ``block`` (B rows, flat) for ``param``, size-1 axes elsewhere."""
    b = block.shape[0]
    stacked = []
    for q, a in enumerate(arrays):
        if q == param:
            stacked.append(block.reshape((b, *a.shape)))
        else:
            view = a[np.newaxis]
            view.flags.writeable = False  # the others are shared between calls, not copied
            stacked.append(view)
    return as_batched_losses(loss(layout.pack(stacked)), b, layout.names[param])


def as_batched_losses(value: Any, b: int, name: str) -> np.ndarray:
    """Validate what a batched loss returned: ``b`` real losses, shape ``(b,)``."""
    arr = np.asarray(value)
    if arr.shape != (b,) or arr.dtype.kind not in "fiu":
        raise InvalidInputError(
            f"loss with batched=True and {b} copies of {name!r}: expected a real array of "
            f"shape ({b},) (one loss per copy along the leading axis), found "
            f"{type(value).__name__} of shape {arr.shape} and dtype {arr.dtype}. Reduce over "
            "every axis except the first (e.g. .mean(axis=1) over examples), or pass "
            "batched=False."
        )
    return arr.astype(np.float64)


def _batched_rows(n: int, k: int, itemsize: int, memory: int) -> int:
    """Rows (entries) per batched call: ``k`` copies each, of ``n`` entries, within ``memory``."""
    return max(1, memory // max(1, k * n * itemsize))


def _batched_chunk(
    loss: Callable[[Any], Any],
    layout: ParamLayout,
    arrays: Sequence[np.ndarray],
    param: int,
    flat_index: np.ndarray,
    values: np.ndarray,
    parent: str,
    memory: int,
) -> _ChunkResult:
    """Batched calls over one chunk: every row's ``k`` perturbed copies in as few calls as
    ``memory`` bytes of copies allow; the block of copies is reused (saved-value restore)."""
    with _limit_in_worker(parent):
        base = np.asarray(arrays[param]).reshape(-1)
        m, k = values.shape
        rows = min(m, _batched_rows(base.size, k, base.itemsize, memory))
        block = np.empty((rows * k, base.size), dtype=base.dtype)
        block[:] = base
        out = np.empty((m, k))
        for start in range(0, m, rows):
            stop = min(m, start + rows)
            b = (stop - start) * k
            cols = np.repeat(flat_index[start:stop], k)
            which = np.arange(b)
            try:
                block[which, cols] = values[start:stop].reshape(-1)
                out[start:stop] = _batched_call(loss, layout, arrays, param, block[:b]).reshape(
                    stop - start, k
                )
            except Exception as exc:
                row = start + _raising_row(loss, layout, arrays, param, block[:b], k)
                return _ChunkResult(out, _worker_id(), row, _portable(exc))
            finally:
                block[which, cols] = base[cols]
        return _ChunkResult(out, _worker_id(), -1, None)


def _raising_row(
    loss: Callable[[Any], Any],
    layout: ParamLayout,
    arrays: Sequence[np.ndarray],
    param: int,
    block: np.ndarray,
    k: int,
) -> int:
    """Row (``k`` copies each) of ``block`` whose batched call raised, found by bisection
    (``log2(rows)`` extra calls), so the error names the entry and not the call's first one."""
    lo, hi = 0, block.shape[0] // k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            _batched_call(loss, layout, arrays, param, block[lo * k : mid * k])
        except Exception:
            hi = mid
        else:
            lo = mid
    return lo


def _raise_chunk_error(
    evaluator: Evaluator, res: _ChunkResult, param: int, flat_index: np.ndarray | None
) -> None:
    exc = res.error
    assert exc is not None
    # Same error types as the serial evaluator: only its own errors pass through unwrapped.
    if isinstance(exc, (CheckAborted, LossEvaluationError, KeyboardInterrupt)):
        raise exc
    flat = None if flat_index is None else int(flat_index[res.failed_row])
    raise evaluator._wrap_error(exc, param, flat) from exc  # type: ignore[arg-type]


class BatchedEvaluator(Evaluator):
    """Evaluates a batched loss in this process: B perturbed copies of one parameter per call.

    The loss receives every parameter with one extra leading axis: size B for the parameter
    being perturbed, size 1 (a read-only view, not a copy) for the others, and returns B
    losses. Calls are sized so the copies fit in ``memory`` bytes.
    """

    def __init__(self, *args: Any, memory: int = BATCHED_MEMORY, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.memory = int(memory)

    @property
    def executor(self) -> str:
        return "batched"

    def call_loss(self, arrays: Sequence[np.ndarray], where: str) -> float:
        """One unperturbed evaluation: every parameter gets a leading axis of size 1."""
        value = self.loss(self.layout.pack([a[np.newaxis] for a in arrays]))
        arr = np.asarray(value)
        if arr.shape != (1,):
            raise InvalidInputError(
                f"loss {where} with batched=True: expected a real array of shape (1,) when "
                f"every parameter has a leading axis of size 1, found {type(value).__name__} "
                f"of shape {arr.shape}. Reduce over every axis except the first, or pass "
                "batched=False."
            )
        return as_scalar_loss(arr, where)

    def entry_losses(self, param: int, flat_index: np.ndarray, values: np.ndarray) -> np.ndarray:
        m, k = values.shape
        out = np.empty((m, k))
        n = self.layout.sizes[param]
        rows = _batched_rows(n, k, self.layout.dtypes[param].itemsize, self.memory)
        with _one_blas_thread():
            for start in range(0, m, rows):
                stop = min(m, start + rows)
                self._charge((stop - start) * k)
                res = _batched_chunk(
                    self.loss,
                    self.layout,
                    self.base,
                    param,
                    flat_index[start:stop],
                    values[start:stop],
                    str(os.getpid()),
                    self.memory,
                )
                if res.error is not None:
                    _raise_chunk_error(self, res, param, flat_index[start:stop])
                out[start:stop] = res.losses
        return out

    def vector_losses(self, param: int, vectors: np.ndarray) -> np.ndarray:
        m = vectors.shape[0]
        out = np.empty(m)
        n = self.layout.sizes[param]
        rows = _batched_rows(n, 1, self.layout.dtypes[param].itemsize, self.memory)
        with _one_blas_thread():
            for start in range(0, m, rows):
                stop = min(m, start + rows)
                self._charge(stop - start)
                block = np.array(vectors[start:stop], dtype=self.layout.dtypes[param], copy=True)
                try:
                    out[start:stop] = _batched_call(self.loss, self.layout, self.base, param, block)
                except (GradCheckError, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    raise self._wrap_error(exc, param, None) from exc
        return out


class ParallelEvaluator(SerialEvaluator):
    """Evaluates chunks of entries on joblib workers.

    Each call is split into ``chunks_per_worker`` chunks per worker and sent to the workers in
    one joblib call; each task carries the parameters (joblib memory-maps large arrays for
    process backends instead of pickling them), perturbs the worker's own copy with a
    saved-value restore and returns the losses. The backend is whatever
    ``joblib.parallel_config`` says (processes preferred by default): threads, loky or a Dask
    cluster. The budget and deadline are charged here, per call, before dispatching.

    A call whose evaluations would take less than ``min_dispatch_seconds`` in one process (by
    the timing of the base-point evaluation) runs in this process: dispatching costs more than
    it saves there. Every evaluation runs with one BLAS thread wherever it runs, so results
    are the same bit for bit.
    """

    def __init__(
        self,
        *args: Any,
        n_jobs: int = -1,
        batched: bool = False,
        memory: int = BATCHED_MEMORY,
        chunks_per_worker: int = CHUNKS_PER_WORKER,
        min_dispatch_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        import joblib

        self.batched = batched
        self.memory = int(memory)
        self.n_workers = int(joblib.effective_n_jobs(n_jobs))
        self.chunks_per_worker = max(1, int(chunks_per_worker))
        self.min_dispatch_seconds = (
            MIN_DISPATCH_SECONDS if min_dispatch_seconds is None else float(min_dispatch_seconds)
        )
        self.loss_seconds: float | None = None
        self._calibrated = False  # loss_seconds measured on more than the first evaluation
        self.dispatched = 0  # joblib calls made
        self.in_process = 0  # calls kept in this process
        self._parallel = joblib.Parallel(n_jobs=n_jobs, prefer="processes")
        self.backend_name = type(self._parallel._backend).__name__.replace("Backend", "").lower()
        self.uses_threads = bool(getattr(self._parallel._backend, "uses_threads", False))
        self.worker_ids: set[str] = set()
        self._entered = False
        self._check_workers_can_run()

    def _check_workers_can_run(self) -> None:
        """Raise :class:`InvalidInputError` when process workers cannot receive the loss."""
        if not self.uses_threads and self.n_workers >= 2:
            _check_picklable(self.loss, self.backend_name)

    @property
    def executor(self) -> str:
        kind = "batched chunks" if self.batched else "chunks"
        text = f"joblib {kind} ({self.backend_name}, {self.n_workers} workers)"
        if self.in_process and not self.dispatched:
            text += ", every call kept in process (too small for workers to pay off)"
        return text

    def call_loss(self, arrays: Sequence[np.ndarray], where: str) -> float:
        if self.batched:
            return BatchedEvaluator.call_loss(self, arrays, where)  # type: ignore[arg-type]
        return super().call_loss(arrays, where)

    def base_loss(self) -> float:
        if self._base_value is not None:
            return self._base_value
        start = time.perf_counter()
        value = super().base_loss()
        self._observe(time.perf_counter() - start, 1)
        return value

    def _observe(self, seconds: float, n_evaluations: int) -> None:
        """Refine the per-evaluation time (the fastest seen: the first call is often cold)."""
        per = seconds / max(1, n_evaluations)
        self.loss_seconds = per if self.loss_seconds is None else min(self.loss_seconds, per)
        self._calibrated = self._calibrated or n_evaluations >= 2

    #: Whether this evaluator sent work to joblib workers (and so may have started processes).
    _started_processes = False

    def close(self) -> None:
        """Leave joblib's context and stop the loky worker processes this check started.

        loky keeps its reusable workers alive for minutes after a call; a check ends with none
        left running (the next check spawns fresh ones). Thread pools end with the context; a
        user's Dask cluster is never touched.
        """
        try:
            if self._entered:
                self._entered = False
                self._parallel.__exit__(None, None, None)
        finally:
            if self._started_processes and self.backend_name == "loky" and not _keep_workers_depth:
                self._started_processes = False
                _shutdown_loky_workers()

    def _dispatch(self, n_evaluations: int) -> bool:
        """Whether ``n_evaluations`` are worth sending to the workers."""
        if self.n_workers < 2:
            return False
        if self.loss_seconds is None:
            return True
        return self.loss_seconds * n_evaluations >= self.min_dispatch_seconds + self._startup()

    def _startup(self) -> float:
        """Seconds that starting process workers would add to this call (0 once running)."""
        if self._started_processes or _warm_pool or self.backend_name not in PROCESS_BACKENDS:
            return 0.0
        return PROCESS_START_SECONDS

    def _run(self, tasks: list[Any], param: int, what: str) -> list[_ChunkResult]:
        if not self._entered:
            self._parallel.__enter__()
            self._entered = True
        self.dispatched += 1
        self._started_processes = True
        if _keep_workers_depth:
            _mark_pool(warm=True)
        try:
            with _one_blas_thread():  # covers thread backends; workers limit themselves
                results = self._parallel(tasks)
        except (GradCheckError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if _is_pickling_error(exc):
                raise _unpicklable(self.backend_name, exc) from exc
            raise self._worker_died(exc, tasks, param, what) from exc
        for res in results:
            self.worker_ids.add(res.worker)
        return list(results)

    def _worker_died(
        self, exc: Exception, tasks: list[Any], param: int, what: str
    ) -> LossEvaluationError:
        """The error for a worker lost mid-call, localized to one entry where possible.

        On process backends (loky, multiprocessing) the round's chunks are re-run one at a
        time and the one that kills its worker is halved down to a single entry (at most
        ``MAX_CRASH_RERUNS`` re-runs, each respawning a worker; not charged to the budget).
        Elsewhere (Dask retries a task on other workers before giving up), or when no re-run
        crashes again, the error names the parameter and the candidate entries of the round.
        """
        name = self.layout.names[param]
        shape = self.layout.shapes[param]
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        head = (
            f"a {self.backend_name} worker died ({type(exc).__name__}: {first_line}) while "
            f"evaluating parameter {name!r}"
        )
        fix = (
            "the loss crashed the worker process (a segfault, os._exit, a signal, running out "
            "of memory); call the loss at that point in this process (n_jobs=1) to see why."
        )
        entry_tasks = [t for t in tasks if t[0] in (_entry_chunk, _batched_chunk)]
        if not entry_tasks:
            return LossEvaluationError(
                f"{head} along random directions ({what}); {fix}", param=name, index=None
            )
        if _is_worker_death(exc) and self.backend_name in ("loky", "multiprocessing"):
            flat = self._locate_crash(entry_tasks)
            if flat is not None:
                index = tuple(int(i) for i in np.unravel_index(flat, shape))
                return LossEvaluationError(
                    f"{head} at index {list(index)} (found by re-running the failed round "
                    f"chunk by chunk, then in halves); {fix}",
                    param=name,
                    index=index,
                )
        candidates = np.concatenate([np.asarray(t[1][4]) for t in entry_tasks])
        shown = candidates[:MAX_LISTED_CANDIDATES]
        listed = ", ".join(str([int(i) for i in np.unravel_index(int(f), shape)]) for f in shown)
        if candidates.size > shown.size:
            listed += f" and {candidates.size - shown.size} more"
        return LossEvaluationError(
            f"{head} at one of {candidates.size} entries ({what}): {listed}; {fix}",
            param=name,
            index=None,
        )

    def _locate_crash(self, tasks: list[Any]) -> int | None:
        """Flat index of the entry whose evaluation kills a worker, or None (see _worker_died)."""
        pending = list(tasks)
        for _ in range(MAX_CRASH_RERUNS):
            if not pending or (self.deadline is not None and time.monotonic() > self.deadline):
                return None
            func, args, kwargs = pending.pop(0)
            try:
                self._parallel([(func, args, kwargs)])
                continue  # survived alone: try the next chunk
            except Exception as exc:
                if not _is_worker_death(exc):
                    return None
            rows = len(args[4])
            if rows == 1:
                return int(args[4][0])
            mid = rows // 2
            pending = [
                (func, (*args[:4], args[4][lo:hi], args[5][lo:hi], *args[6:]), kwargs)
                for lo, hi in ((0, mid), (mid, rows))
            ]
        return None

    def _chunks(self, m: int) -> list[tuple[int, int]]:
        """Chunk bounds for ``m`` rows: ``chunks_per_worker`` per worker, as even as possible."""
        n_chunks = min(m, self.n_workers * self.chunks_per_worker)
        edges = np.linspace(0, m, n_chunks + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]

    def entry_losses(self, param: int, flat_index: np.ndarray, values: np.ndarray) -> np.ndarray:
        import joblib

        m, k = values.shape
        if not self._calibrated and m > 2 and not self.batched and self._dispatch(m * k):
            # The base-point timing is often cold (first call): time two rows here before
            # deciding whether the rest is worth dispatching.
            head = self._entries_in_process(param, flat_index[:2], values[:2])
            rest = self.entry_losses(param, flat_index[2:], values[2:])
            return np.concatenate([head, rest])
        if not self._dispatch(m * k):
            return self._entries_in_process(param, flat_index, values)
        self._charge(m * k)
        chunk = _batched_chunk if self.batched else _entry_chunk
        extra = (self.memory,) if self.batched else ()
        parent = str(os.getpid())
        bounds = self._chunks(m)
        tasks = [
            joblib.delayed(chunk)(
                self.loss,
                self.layout,
                self.base,
                param,
                flat_index[a:b],
                values[a:b],
                parent,
                *extra,
            )
            for a, b in bounds
        ]
        out = np.empty((m, k))
        where = f"entries 0..{m - 1} of the {m} checked"
        for (a, b), res in zip(bounds, self._run(tasks, param, where), strict=True):
            if res.error is not None:
                _raise_chunk_error(self, res, param, flat_index[a:b])
            out[a:b] = res.losses
        return out

    def _entries_in_process(
        self, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        self.in_process += 1
        if self.batched:
            return BatchedEvaluator.entry_losses(self, param, flat_index, values)  # type: ignore[arg-type]
        start = time.perf_counter()
        out = super().entry_losses(param, flat_index, values)
        self._observe(time.perf_counter() - start, values.size)
        return out

    def vector_losses(self, param: int, vectors: np.ndarray) -> np.ndarray:
        import joblib

        if self.batched:  # whole directions: one batched call per memory chunk, in process
            return BatchedEvaluator.vector_losses(self, param, vectors)  # type: ignore[arg-type]
        m = vectors.shape[0]
        if not self._dispatch(m):
            self.in_process += 1
            return super().vector_losses(param, vectors)
        self._charge(m)
        parent = str(os.getpid())
        bounds = self._chunks(m)
        tasks = [
            joblib.delayed(_vector_chunk)(
                self.loss, self.layout, self.base, param, vectors[a:b], parent
            )
            for a, b in bounds
        ]
        out = np.empty(m)
        for (a, b), res in zip(bounds, self._run(tasks, param, "directions"), strict=True):
            if res.error is not None:
                _raise_chunk_error(self, res, param, None)
            out[a:b] = res.losses
        return out


#: Re-runs spent localizing the entry that kills a worker (each respawns a loky worker).
MAX_CRASH_RERUNS = 24
#: Candidate entries listed when the entry that killed a worker could not be localized.
MAX_LISTED_CANDIDATES = 8

_WORKER_DEATH_TYPES = (
    "TerminatedWorkerError",
    "BrokenProcessPool",
    "BrokenExecutor",
    "KilledWorker",
)


def _is_worker_death(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or its cause) says a worker process died rather than the loss raising."""
    seen = 0
    while exc is not None and seen < 8:
        if any(t.__name__ in _WORKER_DEATH_TYPES for t in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


_keep_workers_depth = 0


@contextlib.contextmanager
def keep_workers() -> Iterator[None]:
    """Reuse process workers across the checks run inside this block.

    Each check normally stops the loky worker processes it started, so none are left running;
    starting them again costs about a second per check (measured on 2 cores). Inside
    ``with gradprobe.keep_workers():`` the workers stay up between checks and are stopped when
    the block ends. Thread pools and Dask clusters are unaffected.

    Examples
    --------
    >>> with gradprobe.keep_workers():                       # doctest: +SKIP
    ...     for model in models:
    ...         gradprobe.check(model.loss, model.grad, model.params, n_jobs=-1)
    """
    global _keep_workers_depth
    _keep_workers_depth += 1
    try:
        yield
    finally:
        _keep_workers_depth -= 1
        if _keep_workers_depth == 0:
            _shutdown_loky_workers()


_warm_pool = False  # loky workers kept running by keep_workers()


def _mark_pool(warm: bool) -> None:
    global _warm_pool
    _warm_pool = warm


def _shutdown_loky_workers() -> None:
    """Stop loky's reusable executor and wait until its worker processes have exited."""
    _mark_pool(warm=False)
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:  # pragma: no cover
        return
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def _is_pickling_error(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        text = f"{type(exc).__name__} {exc}".lower()
        if isinstance(exc, pickle.PicklingError) or "pickl" in text or "serializ" in text:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return False


def _unpicklable(backend: str, exc: BaseException) -> InvalidInputError:
    return InvalidInputError(
        f"loss: the {backend} backend runs workers in other processes and must pickle the "
        f"loss, which failed ({type(exc).__name__}: {exc}). Use threads, "
        "`with joblib.parallel_config(backend='threading'): gradprobe.check(...)`, or define "
        "the loss at module level without unpicklable state (open files, locks, generators); "
        "or pass n_jobs=1."
    )


def _check_picklable(loss: Callable[[Any], Any], backend: str) -> None:
    try:  # joblib >= 1.5 depends on cloudpickle; older versions vendor it
        import cloudpickle
    except ImportError:  # pragma: no cover
        from joblib.externals import cloudpickle  # type: ignore[no-redef]

    try:
        cloudpickle.dumps(loss)
    except Exception as exc:
        raise _unpicklable(backend, exc) from exc


class AutoEvaluator(ParallelEvaluator):
    """``n_jobs="auto"``: every core, but only for calls where workers pay off.

    The base-point evaluation is timed; a call whose evaluations would take less than
    ``AUTO_DISPATCH_SECONDS`` in one process stays in this thread, larger ones go to joblib
    workers. A loss that process workers cannot pickle keeps everything in this thread (with a
    warning in the report) instead of failing. Results are the same either way (one BLAS
    thread per evaluation everywhere).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_dispatch_seconds", AUTO_DISPATCH_SECONDS)
        super().__init__(*args, n_jobs=-1, **kwargs)

    def _check_workers_can_run(self) -> None:
        try:
            super()._check_workers_can_run()
        except InvalidInputError as exc:
            self.n_workers = 1
            self.warnings.append(f"n_jobs='auto' stayed in this process: {exc}")

    @property
    def executor(self) -> str:
        if self.dispatched == 0:
            return "auto (serial)"
        return f"auto (serial + {super().executor})"


class JitEvaluator(Evaluator):
    """Runs every perturbation inside one numba kernel (``prange`` over chunks).

    For a numba-jitted ``loss`` of one flat float64 vector: no Python per entry. ``n_threads``
    numba threads (one BLAS thread each); chunks of rows are charged to the budget per kernel
    call. ``compile_seconds`` is the time spent compiling or loading the cached kernel.
    """

    def __init__(self, *args: Any, n_threads: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import numba

        self.n_threads = max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS))
        self.compile_seconds, self._fn = kernels.jit_loss_kernels(self.loss)

    @property
    def executor(self) -> str:
        return f"numba kernel ({self.n_threads} threads)"

    def _kernel(self, run: Callable[[], Any], param: int) -> Any:
        import numba

        previous = numba.get_num_threads()
        numba.set_num_threads(self.n_threads)
        try:
            with _one_blas_thread():
                return run()
        except (GradCheckError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise self._wrap_error(exc, param, None) from exc
        finally:
            numba.set_num_threads(previous)

    def entry_losses(self, param: int, flat_index: np.ndarray, values: np.ndarray) -> np.ndarray:
        m, k = values.shape
        out = np.empty((m, k))
        x = self.base[param].reshape(-1)
        rows = max(JIT_ROWS_PER_CALL, 1)
        for start in range(0, m, rows):
            stop = min(m, start + rows)
            self._charge((stop - start) * k)
            idx = np.ascontiguousarray(flat_index[start:stop], dtype=np.int64)
            vals = np.ascontiguousarray(values[start:stop], dtype=np.float64)
            n_chunks = min(stop - start, self.n_threads * CHUNKS_PER_WORKER)
            try:
                out[start:stop] = self._kernel(
                    lambda idx=idx, vals=vals, n_chunks=n_chunks: kernels.jit_entry_losses(
                        self._fn, x, idx, vals, n_chunks
                    ),
                    param,
                )
            except LossEvaluationError as err:
                self._replay(param, idx, vals, err)
        return out

    def _replay(
        self, param: int, idx: np.ndarray, vals: np.ndarray, error: LossEvaluationError
    ) -> None:
        """Re-run a failed kernel call's rows from Python and raise the first loss error with
        its entry: inside ``prange`` numba loses the exception's message and position."""
        x = self.base[param].reshape(-1).copy()
        for r in range(idx.size):
            i = int(idx[r])
            for c in range(vals.shape[1]):
                w = x.copy()
                w[i] = vals[r, c]
                try:
                    self.loss(w)
                except Exception as exc:
                    raise self._wrap_error(exc, param, i) from exc
        raise error

    def vector_losses(self, param: int, vectors: np.ndarray) -> np.ndarray:
        m = vectors.shape[0]
        out = np.empty(m)
        for start in range(0, m, JIT_ROWS_PER_CALL):
            stop = min(m, start + JIT_ROWS_PER_CALL)
            self._charge(stop - start)
            vec = np.ascontiguousarray(vectors[start:stop], dtype=np.float64)
            n_chunks = min(stop - start, self.n_threads * CHUNKS_PER_WORKER)
            out[start:stop] = self._kernel(
                lambda vec=vec, n_chunks=n_chunks: kernels.jit_vector_losses(
                    self._fn, vec, n_chunks
                ),
                param,
            )
        return out


def is_jit_loss(loss: Any, layout: ParamLayout) -> bool:
    """Whether ``loss`` can run inside the numba kernel: a numba dispatcher and one flat
    float64 vector of parameters."""
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


def _workers_for(n_jobs: Any) -> int:
    import joblib

    return int(joblib.effective_n_jobs(-1 if n_jobs == "auto" else n_jobs))


def make_evaluator(
    loss: Callable[[Any], Any],
    layout: ParamLayout,
    base: Sequence[np.ndarray],
    *,
    n_jobs: Any = 1,
    batched: bool = False,
    budget: int | None = None,
    deadline: float | None = None,
) -> Evaluator:
    """Pick the evaluator for the requested execution.

    - ``batched=True``: :class:`BatchedEvaluator` in this process (``n_jobs`` 1), or batched
      chunks on joblib workers;
    - a numba-jitted loss of one flat float64 vector: :class:`JitEvaluator` with ``n_jobs``
      numba threads (``"auto"``: every core);
    - ``n_jobs="auto"``: :class:`AutoEvaluator`;
    - ``n_jobs`` resolving to one worker: :class:`SerialEvaluator`; otherwise
      :class:`ParallelEvaluator` on the backend ``joblib.parallel_config`` selects.

    The choice is reported as ``report.settings["executor"]``.
    """
    _blas_controller(refresh=True)
    common: dict[str, Any] = {"budget": budget, "deadline": deadline}
    if batched:
        if n_jobs == "auto" or _workers_for(n_jobs) < 2:
            return BatchedEvaluator(loss, layout, base, **common)
        return ParallelEvaluator(loss, layout, base, n_jobs=n_jobs, batched=True, **common)
    if is_jit_loss(loss, layout):
        return JitEvaluator(loss, layout, base, n_threads=_workers_for(n_jobs), **common)
    if n_jobs == "auto":
        return AutoEvaluator(loss, layout, base, **common)
    if _workers_for(n_jobs) < 2:
        return SerialEvaluator(loss, layout, base, **common)
    return ParallelEvaluator(loss, layout, base, n_jobs=n_jobs, **common)


def _complex_unsupported(name: str, exc: Exception) -> Exception:
    from ..errors import InvalidInputError

    return InvalidInputError(
        f"loss with {name!r} perturbed by a complex step: method='complex-step' needs a loss "
        f"that accepts complex parameters, but it raised {type(exc).__name__}: {exc}. Remove "
        "float()/np.abs/np.real/.astype(float) from the loss's path, or use method='central'."
    )


def _as_complex_loss(value: Any, where: str) -> complex:
    """The complex scalar a loss returned under ``method="complex-step"``."""
    from ..errors import InvalidInputError

    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind != "c":
        raise InvalidInputError(
            f"loss {where}: method='complex-step' expected a complex scalar, found "
            f"{type(value).__name__} (dtype {arr.dtype}, size {arr.size}). The loss must "
            "propagate complex inputs: no float(), np.abs, np.real or .astype(float) on the "
            "path; otherwise use method='central'."
        )
    return complex(arr.reshape(()))
