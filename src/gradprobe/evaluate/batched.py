"""Batched losses: B perturbed copies of one parameter per call.

The loss receives every parameter with one extra leading axis: size B for the parameter being
perturbed, size 1 (a read-only view, not a copy) for the others, and returns B losses
(checked by :func:`as_batched_losses`). Calls are sized so the copies fit in a memory budget
(:func:`batched_rows`). :class:`BatchedCalls` is the row runner; :func:`batched_chunk` runs one
chunk of entry rows, in this process or on a worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import GradCheckError, InvalidInputError
from ..layout import ParamLayout, as_scalar_loss
from .loops import ChunkResult, ChunkTask, limit_in_worker, portable, raise_chunk_error, worker_id
from .threads import in_process_blas

if TYPE_CHECKING:
    from .base import Evaluator

__all__ = ["BATCHED_MEMORY", "BatchedCalls", "as_batched_losses", "batched_chunk", "batched_rows"]

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

    def entry_losses(
        self, ev: Evaluator, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        m, k = values.shape
        out = np.empty((m, k))
        n = ev.layout.sizes[param]
        rows = batched_rows(n, k, ev.layout.dtypes[param].itemsize, self.memory)
        task = self.chunk_task(ev, param, flat_index, values)
        with in_process_blas():
            for start in range(0, m, rows):
                stop = min(m, start + rows)
                ev.charge((stop - start) * k)
                res = batched_chunk(task.part(start, stop))
                if res.error is not None:
                    raise_chunk_error(ev, res, param, flat_index[start:stop])
                out[start:stop] = res.losses
        return out

    def vector_losses(self, ev: Evaluator, param: int, vectors: np.ndarray) -> np.ndarray:
        m = vectors.shape[0]
        out = np.empty(m)
        n = ev.layout.sizes[param]
        rows = batched_rows(n, 1, ev.layout.dtypes[param].itemsize, self.memory)
        with in_process_blas():
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

    def chunk_task(
        self, ev: Evaluator, param: int, flat_index: np.ndarray | None, values: np.ndarray
    ) -> ChunkTask | None:
        """The worker task for entry rows; None for replacement vectors (one batched call per
        memory chunk, in this process)."""
        if flat_index is None:
            return None
        return ChunkTask(
            batched_chunk,
            ev.loss,
            ev.layout,
            ev.base,
            param,
            str(os.getpid()),
            values,
            flat_index,
            self.memory,
        )
