"""Blocks sent to the process pool ahead of the check asking for them, and waiting on them.

After the pre-flight a check knows every parameter's first sample. A placement with workers
sends them all at once (:meth:`gradprobe.evaluate.Evaluator.prefetch`), so the workers stream
through every parameter's chunks, one parameter after another without a pause, while this
process goes on; :class:`SentBlocks` keeps their futures until the check asks for the same
rows, and :func:`wait_all` collects them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import GradCheckError
from .loops import ChunkResult, ChunkTask
from .pool import shutdown_workers

#: A request: the rows of one parameter the check will ask for, as it will ask.
Request = tuple[int, np.ndarray, np.ndarray]
#: Chunks sent ahead aim at this much work each (a round trip to a warm pool costs ~1 ms).
CHUNK_SECONDS = 0.01
#: ... and the whole plan is cut in at most this many chunks per worker.
MAX_CHUNKS_PER_WORKER = 16


def request_key(param: int, flat_index: np.ndarray, values: np.ndarray) -> tuple[int, bytes, bytes]:
    """What identifies a block of entry rows: the same rows asked for again."""
    return (
        param,
        np.ascontiguousarray(flat_index, dtype=np.int64).tobytes(),
        np.ascontiguousarray(values).tobytes() + str(values.shape).encode(),
    )


def chunk_bounds(m: int, parts: int) -> list[tuple[int, int]]:
    """``m`` rows in ``parts`` chunks as even as possible (none empty)."""
    edges = np.linspace(0, m, max(1, min(m, parts)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def wait_all(futures: list[Any]) -> list[ChunkResult]:
    """The results of ``futures`` in order. Interrupted while waiting (Ctrl-C, the time
    limit), the tasks not yet started are cancelled and the workers running one are stopped,
    as joblib does: a loss must not go on computing for a check that has ended."""
    try:
        return [f.result() for f in futures]
    except BaseException as exc:
        for f in futures:
            f.cancel()
        if isinstance(exc, (KeyboardInterrupt, GradCheckError)) or not isinstance(exc, Exception):
            if not all(f.done() for f in futures):
                shutdown_workers()
        raise


class SentBlocks:
    """Blocks of entry rows sent ahead, by request: their chunk bounds and futures."""

    def __init__(self) -> None:
        self._sent: dict[tuple[int, bytes, bytes], tuple[list[tuple[int, int]], list[Any]]] = {}

    def __len__(self) -> int:
        return len(self._sent)

    def send(
        self,
        requests: list[Request],
        *,
        n_workers: int,
        min_chunks_per_worker: int,
        loss_seconds: float,
        task_for: Callable[[Request], ChunkTask | None],
        submit: Callable[[list[ChunkTask]], list[Any]],
    ) -> None:
        """Cut every request in chunks (at least ``min_chunks_per_worker`` per worker over the
        whole plan, each of :data:`CHUNK_SECONDS` of work where there is enough) and submit
        them all, in order."""
        sizes = [int(v.size) for _, _, v in requests]
        total = max(1, sum(sizes))
        n_chunks = max(
            n_workers * max(1, min_chunks_per_worker),
            min(int(total * loss_seconds / CHUNK_SECONDS), MAX_CHUNKS_PER_WORKER * n_workers),
        )
        for request, size in zip(requests, sizes, strict=True):
            task = task_for(request)
            if task is None:
                continue
            bounds = chunk_bounds(request[2].shape[0], round(n_chunks * size / total))
            self._sent[request_key(*request)] = (
                bounds,
                submit([task.part(a, b) for a, b in bounds]),
            )

    def take(
        self, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> tuple[list[tuple[int, int]], list[Any]] | None:
        """The chunk bounds and futures of the block sent for exactly these rows (once)."""
        return self._sent.pop(request_key(param, flat_index, values), None)

    def cancel(self) -> None:
        """Forget the blocks nobody asked for (the check stopped part-way): what has not
        started is cancelled, what runs finishes on its own."""
        for _, futures in self._sent.values():
            for f in futures:
                f.cancel()
        self._sent.clear()
