"""Batched losses: B perturbed copies of one parameter per call.

The loss receives every parameter with one extra leading axis: size B for the parameter being
perturbed, size 1 (a read-only view, not a copy) for the others, and returns B losses
(checked by :func:`as_batched_losses`). Calls are sized so the copies fit in a memory budget
(:func:`batched_rows`) and, in this process, by the measured time per row (:class:`BlockTuner`). :class:`BatchedCalls` is the row runner; :func:`batched_chunk` runs one
chunk of entry rows, in this process or on a worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import GradCheckError, InvalidInputError
from ..layout import ParamLayout, as_scalar_loss
from .loops import ChunkResult, ChunkTask, limit_in_worker, portable, raise_chunk_error, worker_id
from .threads import one_blas_thread

if TYPE_CHECKING:
    from .base import Evaluator

#: Bytes of perturbed copies a batched loss receives per call.
BATCHED_MEMORY = 64 * 2**20


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


def batched_rows(n: int, k: int, itemsize: int, memory: int) -> int:
    """Rows (entries) per batched call: ``k`` copies each, of ``n`` entries, within ``memory``."""
    return max(1, memory // max(1, k * n * itemsize))


def batched_call(
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


def _raising_row(task: ChunkTask, block: np.ndarray, k: int) -> int:
    """Row (``k`` copies each) of ``block`` whose batched call raised, found by bisection
    (``log2(rows)`` extra calls), so the error names the entry and not the call's first one."""
    lo, hi = 0, block.shape[0] // k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            batched_call(task.loss, task.layout, task.arrays, task.param, block[lo * k : mid * k])
        except Exception:
            hi = mid
        else:
            lo = mid
    return lo


def batched_chunk(task: ChunkTask) -> ChunkResult:
    """Batched calls over one chunk of entry rows: every row's ``k`` perturbed copies in as few
    calls as ``task.memory`` bytes of copies allow; the block of copies is reused (saved-value
    restore)."""
    assert task.flat_index is not None
    flat_index, values = task.flat_index, task.values
    with limit_in_worker(task.parent):
        base = np.asarray(task.arrays[task.param]).reshape(-1)
        m, k = values.shape
        rows = min(m, batched_rows(base.size, k, base.itemsize, task.memory))
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
                losses = batched_call(task.loss, task.layout, task.arrays, task.param, block[:b])
                out[start:stop] = losses.reshape(stop - start, k)
            except Exception as exc:
                row = start + _raising_row(task, block[:b], k)
                return ChunkResult(out, worker_id(), row, portable(exc))
            finally:
                block[which, cols] = base[cols]
        return ChunkResult(out, worker_id(), -1, None)


#: Bytes of perturbed copies in the first call of a parameter: what stays in a core's cache.
FIRST_BLOCK_BYTES = 2**20
#: A doubled block must cut the time per row by this fraction to be kept.
BLOCK_GAIN = 0.1


class BlockTuner:
    """Rows per batched call for one parameter, chosen from the measured time per row.

    The first call holds :data:`FIRST_BLOCK_BYTES` of copies (at least one row); each next
    call doubles the rows while that cuts the time per row by :data:`BLOCK_GAIN` (a loss
    whose cost is dominated by memory traffic stops gaining once the copies leave the cache;
    one whose per-call overhead dominates keeps gaining), up to the ``memory`` cap; then the
    best size seen is kept. Rows evaluated while tuning are real work, not extra evaluations.
    """

    def __init__(self, bytes_per_row: int, memory: int) -> None:
        self.cap = batched_rows(bytes_per_row, 1, 1, memory)
        self.rows = max(1, min(self.cap, FIRST_BLOCK_BYTES // max(1, bytes_per_row)))
        self.best: tuple[int, float] | None = None  # (rows, seconds per row)
        self.settled = False

    def record(self, rows: int, seconds: float) -> None:
        """A call of ``rows`` rows took ``seconds``: choose the next call's size."""
        if self.settled or rows < self.rows:  # a short last block says nothing
            return
        per_row = seconds / rows
        if self.best is None or per_row < (1.0 - BLOCK_GAIN) * self.best[1]:
            self.best = (rows, per_row)
            if rows * 2 <= self.cap:
                self.rows = rows * 2
                return
        self.rows, self.settled = self.best[0], True


class BatchedCalls:
    """Row runner for a batched loss: B perturbed copies of one parameter per call, the calls
    sized so the copies fit in ``memory`` bytes. Its entry blocks can also run on joblib
    workers; whole replacement vectors always run in this process."""

    name = "batched"
    #: What its worker tasks are called in the executor's name.
    chunk_name = "batched chunks"
    #: A batched call's time per copy says little about one evaluation's: not timed.
    times_rows = False
    compile_seconds = 0.0

    def __init__(self, memory: int = BATCHED_MEMORY) -> None:
        self.memory = int(memory)
        self._tuners: dict[int, BlockTuner] = {}

    def call_loss(self, ev: Evaluator, arrays: Sequence[np.ndarray], where: str) -> float:
        """One unperturbed evaluation: every parameter gets a leading axis of size 1."""
        value = ev.loss(ev.layout.pack([a[np.newaxis] for a in arrays]))
        arr = np.asarray(value)
        if arr.shape != (1,):
            raise InvalidInputError(
                f"loss {where} with batched=True: expected a real array of shape (1,) when "
                f"every parameter has a leading axis of size 1, found {type(value).__name__} "
                f"of shape {arr.shape}. Reduce over every axis except the first, or pass "
                "batched=False."
            )
        return as_scalar_loss(arr, where)

    def stacked_losses(self, ev: Evaluator, points: Sequence[np.ndarray], where: str) -> np.ndarray:
        """Losses at whole points in one call (see :meth:`Evaluator.point_losses`)."""
        return as_batched_losses(ev.loss(ev.layout.pack(list(points))), len(points[0]), where)

    def entry_losses(
        self, ev: Evaluator, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        m, k = values.shape
        out = np.empty((m, k))
        n = ev.layout.sizes[param]
        bytes_per_row = k * n * ev.layout.dtypes[param].itemsize
        tuner = self._tuners.setdefault(param, BlockTuner(bytes_per_row, self.memory))
        task = self.chunk_task(ev, param, flat_index, values)
        with one_blas_thread():
            start = 0
            while start < m:
                stop = min(m, start + tuner.rows)
                ev.charge((stop - start) * k)
                began = time.perf_counter()
                res = batched_chunk(task.part(start, stop))
                if res.error is not None:
                    raise_chunk_error(ev, res, param, flat_index[start:stop])
                tuner.record(stop - start, time.perf_counter() - began)
                out[start:stop] = res.losses
                start = stop
        return out

    def vector_losses(self, ev: Evaluator, param: int, vectors: np.ndarray) -> np.ndarray:
        m = vectors.shape[0]
        out = np.empty(m)
        n = ev.layout.sizes[param]
        rows = batched_rows(n, 1, ev.layout.dtypes[param].itemsize, self.memory)
        with one_blas_thread():
            for start in range(0, m, rows):
                stop = min(m, start + rows)
                ev.charge(stop - start)
                block = np.array(vectors[start:stop], dtype=ev.layout.dtypes[param], copy=True)
                try:
                    out[start:stop] = batched_call(ev.loss, ev.layout, ev.base, param, block)
                except (GradCheckError, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    raise ev.wrap_error(exc, param, None) from exc
        return out

    def run_chunk(self, ev: Evaluator, task: ChunkTask) -> ChunkResult:
        """``task`` run in this process as a worker runs it (not charged: its block was)."""
        with one_blas_thread():
            return task.run(task)

    def chunk_task(
        self, ev: Evaluator, param: int, flat_index: np.ndarray | None, values: np.ndarray
    ) -> ChunkTask | None:
        """The worker task for entry rows; None for replacement vectors (one batched call per
        memory chunk, in this process)."""
        if flat_index is None:
            return None
        return ChunkTask(
            batched_chunk,
            ev.worker_state,
            param,
            str(os.getpid()),
            values,
            flat_index,
            self.memory,
        )
