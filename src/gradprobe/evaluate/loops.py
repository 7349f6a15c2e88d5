"""The perturb / evaluate / restore loops, in this process and on workers.

The per-entry loop (:func:`perturb_entries`) and the replacement-vector loop
(:func:`replace_vectors`) are shared by :class:`EntryLoop` (the row runner that calls the loss
once per perturbed row, in this thread) and by the worker chunk functions. A joblib task is a
:class:`ChunkTask`: a chunk of rows of one parameter and the module-level (so process backends
pickle it by name) function that runs it; the worker sends back a :class:`ChunkResult`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import CheckAborted, LossEvaluationError
from ..layout import ParamLayout, as_scalar_loss
from .base import RowRunner
from .shared import WorkerState
from .threads import one_blas_thread

if TYPE_CHECKING:
    from .base import Evaluator


def perturb_entries(
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
    raised, None when all succeeded."""
    m, k = values.shape
    # Python floats (exact for every float dtype) and a row of results at a time: the loop
    # runs once per evaluation, and a tiny loss costs about as much as numpy's scalar boxing.
    rows = values.tolist()
    index = flat_index.tolist()
    for r in range(m):
        i = index[r]
        saved = flat[i]
        row = rows[r]
        try:
            for c in range(k):
                if before_each is not None:
                    before_each()
                flat[i] = row[c]
                out[r, c] = call()
        except Exception as exc:
            return r, exc
        finally:
            flat[i] = saved
    return None


def replace_vectors(
    call: Callable[[], float],
    flat: np.ndarray,
    base: np.ndarray,
    vectors: np.ndarray,
    out: np.ndarray,
    before_each: Callable[[], None] | None = None,
) -> tuple[int, Exception] | None:
    """Like :func:`perturb_entries` for whole replacement vectors, restoring ``base``.

    ``vectors``: stored rows, or rows computed straight into ``flat`` (its ``fill(r, flat)``,
    :class:`~gradprobe.evaluate.base.ComputedRows`)."""
    fill = None if isinstance(vectors, np.ndarray) else vectors.fill
    for r in range(vectors.shape[0]):
        try:
            if before_each is not None:
                before_each()
            if fill is not None:
                fill(r, flat)
            else:
                flat[:] = vectors[r]
            out[r] = call()
        except Exception as exc:
            return r, exc
        finally:
            flat[:] = base
    return None


# -- work done by one worker (module level so process backends can pickle it) -----------------
@dataclass(frozen=True)
class ChunkResult:
    """What a worker sends back for one chunk of rows."""

    losses: np.ndarray
    worker: str  # "pid:thread" of the worker that ran it
    failed_row: int  # row (within the chunk) whose evaluation raised, -1 when none did
    error: BaseException | None


@dataclass(frozen=True, eq=False)
class ChunkTask:
    """One joblib task: rows of one parameter to evaluate, and what a worker needs for them.

    ``run`` is a module-level function (pickled by name) called as ``run(task)``. Entry rows
    (``flat_index`` given) set entry ``flat_index[r]`` to each ``values[r, c]``; vector rows
    (``flat_index`` None) replace the parameter by ``values[r]``. The loss, layout and
    parameters travel as the check's :class:`~gradprobe.evaluate.shared.WorkerState`: by
    value, or, once published for gradprobe's process pool, as a path that each worker
    attaches to once per check.
    """

    run: Callable[[ChunkTask], ChunkResult]
    state: WorkerState
    param: int
    #: pid of the process that made the task (a thread worker shares its BLAS limit).
    parent: str
    values: np.ndarray
    flat_index: np.ndarray | None = None
    #: Bytes of perturbed copies per batched call (batched tasks only).
    memory: int = 0

    @property
    def loss(self) -> Callable[[Any], Any]:
        return self.state.loss

    @property
    def layout(self) -> ParamLayout:
        return self.state.layout

    @property
    def arrays(self) -> Sequence[np.ndarray]:
        """The base parameters (never written to)."""
        return self.state.arrays

    @property
    def n_rows(self) -> int:
        return int(self.values.shape[0])

    def part(self, start: int, stop: int) -> ChunkTask:
        """The same task for rows ``start:stop`` only."""
        index = None if self.flat_index is None else self.flat_index[start:stop]
        return dataclasses.replace(self, values=self.values[start:stop], flat_index=index)


def worker_id() -> str:
    return f"{os.getpid()}:{threading.get_ident()}"


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def limit_in_worker(parent: str) -> contextlib.AbstractContextManager[None]:
    """The BLAS limit for a task made by process ``parent``: already held there (the parent
    holds the process-wide limit around thread-backend calls; entering it again from several
    threads would race on the restore), entered anew in another process."""
    return contextlib.nullcontext() if parent == str(os.getpid()) else one_blas_thread()


def entry_chunk(task: ChunkTask) -> ChunkResult:
    """Per-entry loop over one chunk, on this worker's own copy of the parameters."""
    assert task.flat_index is not None
    flat_index, values = task.flat_index, task.values
    out = np.empty(values.shape)
    return _in_worker(
        task, out, lambda call, flat: perturb_entries(call, flat, flat_index, values, out)
    )


def vector_chunk(task: ChunkTask) -> ChunkResult:
    """Losses with parameter ``task.param`` replaced by each row of ``task.values``."""
    vectors = task.values
    out = np.empty(vectors.shape[0])
    base = np.asarray(task.arrays[task.param]).reshape(-1)
    return _in_worker(task, out, lambda call, flat: replace_vectors(call, flat, base, vectors, out))


def _in_worker(
    task: ChunkTask,
    out: np.ndarray,
    run: Callable[[Callable[[], float], np.ndarray], tuple[int, Exception] | None],
) -> ChunkResult:
    """What a worker does around one loop: its BLAS limit, its working copies of the
    parameters (:meth:`WorkerState.working_copies`; the loop restores every value it sets),
    and the loop's failure packed for the parent."""
    loss, layout = task.loss, task.layout
    with limit_in_worker(task.parent):
        work = task.state.working_copies()
        where = f"with {layout.names[task.param]!r} perturbed"
        failure = run(
            lambda: as_scalar_loss(loss(layout.pack(work)), where), work[task.param].reshape(-1)
        )
        if failure is not None:
            return ChunkResult(out, worker_id(), failure[0], portable(failure[1]))
        return ChunkResult(out, worker_id(), -1, None)


def raise_chunk_error(
    ev: Evaluator, res: ChunkResult, param: int, flat_index: np.ndarray | None
) -> None:
    """Raise the error a chunk sent back, wrapped like the in-process loop's."""
    exc = res.error
    assert exc is not None
    # Same error types as the in-process loop: only its own errors pass through unwrapped.
    if isinstance(exc, (CheckAborted, LossEvaluationError, KeyboardInterrupt)):
        raise exc
    flat = None if flat_index is None else int(flat_index[res.failed_row])
    raise ev.wrap_error(exc, param, flat) from exc


def entry_losses_of(
    ev: Evaluator,
    param: int,
    flat_index: np.ndarray,
    shape: tuple[int, ...],
    bounds: list[tuple[int, int]],
    results: list[ChunkResult],
) -> np.ndarray:
    """The losses of entry rows from their chunks' results; a chunk's error raised as the
    in-process loop raises it."""
    out = np.empty(shape)
    for (a, b), res in zip(bounds, results, strict=True):
        if res.error is not None:
            raise_chunk_error(ev, res, param, flat_index[a:b])
        out[a:b] = res.losses
    return out


class WorkerRows(RowRunner, Protocol):
    """A row runner whose blocks can also run on joblib workers."""

    #: What its worker tasks are called in the executor's name ("chunks", "batched chunks").
    chunk_name: str
    #: Whether its in-process blocks refine the per-evaluation time (one call per evaluation).
    times_rows: bool

    def chunk_task(
        self, ev: Evaluator, param: int, flat_index: np.ndarray | None, values: np.ndarray
    ) -> ChunkTask | None:
        """The worker task for entry rows (``flat_index`` given) or replacement vectors
        (``flat_index`` None); None when such rows always run in this process."""
        ...

    def run_chunk(self, ev: Evaluator, task: ChunkTask) -> ChunkResult:
        """One of its worker tasks run in this process, as a worker runs it (one BLAS
        thread; the loss's failure packed in the result), without charging the evaluations:
        the block they belong to was charged."""
        ...


class EntryLoop:
    """Row runner: one loss call per perturbed row, on working copies perturbed in place.

    The working copies are made from the evaluator's parameters on first use (one runner per
    evaluator). Its blocks can also run on joblib workers (:meth:`chunk_task`).
    """

    name = "serial"
    #: What its worker tasks are called in the executor's name.
    chunk_name = "chunks"
    #: Its in-process blocks time one evaluation each: they refine the dispatch cost model.
    times_rows = True
    #: Its vector rows may be computed into the working copy (ComputedRows), never stored.
    fills_rows = True
    compile_seconds = 0.0

    def __init__(self) -> None:
        self._work: list[np.ndarray] | None = None

    def _working_copies(self, ev: Evaluator) -> list[np.ndarray]:
        if self._work is None:
            self._work = [a.copy() for a in ev.base]
        return self._work

    def call_loss(self, ev: Evaluator, arrays: Sequence[np.ndarray], where: str) -> float:
        return as_scalar_loss(ev.loss(ev.layout.pack(arrays)), where)

    def _loop(
        self,
        ev: Evaluator,
        param: int,
        flat_index: np.ndarray | None,
        values: Any,
        before_each: Callable[[], None] | None,
    ) -> tuple[np.ndarray, tuple[int, Exception] | None]:
        """Entry rows (``flat_index`` given) or replacement vectors on this runner's working
        copies, one BLAS thread: the losses and the loop's failure."""
        work = self._working_copies(ev)
        flat = work[param].reshape(-1)
        where = f"with {ev.layout.names[param]!r} perturbed"
        loss, pack = ev.loss, ev.layout.pack

        def call() -> float:
            return as_scalar_loss(loss(pack(work)), where)

        with one_blas_thread():
            if flat_index is None:
                out = np.empty(values.shape[0])
                base = ev.base[param].reshape(-1)
                return out, replace_vectors(call, flat, base, values, out, before_each)
            out = np.empty(values.shape)
            return out, perturb_entries(call, flat, flat_index, values, out, before_each)

    def entry_losses(
        self, ev: Evaluator, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        out, failure = self._loop(ev, param, flat_index, values, lambda: ev.charge(1))
        if failure is not None:
            row, exc = failure
            ev.raise_loss_error(exc, param, int(flat_index[row]))
        return out

    def vector_losses(self, ev: Evaluator, param: int, vectors: np.ndarray) -> np.ndarray:
        out, failure = self._loop(ev, param, None, vectors, lambda: ev.charge(1))
        if failure is not None:
            ev.raise_loss_error(failure[1], param, None)
        return out

    def chunk_task(
        self, ev: Evaluator, param: int, flat_index: np.ndarray | None, values: np.ndarray
    ) -> ChunkTask:
        """The worker task for entry rows (``flat_index`` given) or replacement vectors."""
        run = vector_chunk if flat_index is None else entry_chunk
        return ChunkTask(run, ev.worker_state, param, str(os.getpid()), values, flat_index)

    def run_chunk(self, ev: Evaluator, task: ChunkTask) -> ChunkResult:
        """``task`` run in this process as a worker runs it, on this runner's working copies
        (not charged: its block was)."""
        # Nothing to count, but the time limit holds between evaluations as in the serial loop.
        on_time = None if ev.deadline is None else lambda: ev.charge(0)
        out, failure = self._loop(ev, task.param, task.flat_index, task.values, on_time)
        if failure is None:
            return ChunkResult(out, worker_id(), -1, None)
        return ChunkResult(out, worker_id(), failure[0], failure[1])
