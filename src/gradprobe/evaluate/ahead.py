"""Tasks for the process pool: a bounded feeder, and blocks sent ahead of the check asking.

After the pre-flight a check knows every parameter's first sample. A placement with workers
sends them all at once (:meth:`gradprobe.evaluate.Evaluator.prefetch`), so the workers stream
through every parameter's chunks, one parameter after another without a pause, while this
process goes on. :class:`Feeder` holds them: it keeps at most :data:`IN_FLIGHT_PER_WORKER`
tasks per worker in the pool's queue (as joblib's pre-dispatch does: a pool stopped with many
queued tasks trips loky's manager thread) and tops the queue up whenever this process waits
for a result; the rest wait in order. A block sent ahead is collected when the check asks for
the same rows (:meth:`Feeder.take`).

The check's own process is one of the evaluators: while it waits for a result it takes the
next task that is not in the pool's queue yet and runs it itself (``local``), and it sends
nothing to the pool before a worker is up (``ready``). So a check never waits for workers to
start (the process evaluates alone meanwhile), the pool has one worker fewer than the cores,
and a plan's first and last chunks do not idle a core.
"""

from __future__ import annotations

import concurrent.futures
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import GradCheckError
from .loops import ChunkResult, ChunkTask
from .pool import shutdown_workers, submit
from .threads import thread_submit

#: A request: the rows of one parameter the check will ask for, as it will ask.
Request = tuple[int, np.ndarray, np.ndarray]
#: Chunks sent ahead aim at this much work each (a round trip to a warm pool costs ~1 ms).
CHUNK_SECONDS = 0.01
#: ... and the whole plan is cut in at most this many chunks per worker.
MAX_CHUNKS_PER_WORKER = 16
#: Tasks per worker queued in the pool at once; the rest wait here, in order.
IN_FLIGHT_PER_WORKER = 2


def request_key(param: int, flat_index: np.ndarray, values: np.ndarray) -> tuple[int, bytes, bytes]:
    """What identifies a block of entry rows: the same rows asked for again."""
    return (
        param,
        np.ascontiguousarray(flat_index, dtype=np.int64).tobytes(),
        np.ascontiguousarray(values).tobytes() + str(values.shape).encode(),
    )


def pool_submitter(n_workers: int) -> Callable[[ChunkTask], Any]:
    """``submit(task)`` to gradprobe's loky pool of ``n_workers``
    (:func:`~gradprobe.evaluate.pool.executor`): the check's state is published once (on the
    first task), so a task carries only its rows."""

    def send(task: ChunkTask) -> Any:
        task.state.publish()
        return submit(n_workers, task.run, task)

    return send


def thread_submitter(n_threads: int) -> Callable[[ChunkTask], Any]:
    """``submit(task)`` to gradprobe's pool of ``n_threads`` threads (threading backend):
    the task's state travels by reference, each task copying the parameters it perturbs."""
    return lambda task: thread_submit(n_threads, task.run, task)


def chunk_bounds(m: int, parts: int) -> list[tuple[int, int]]:
    """``m`` rows in ``parts`` chunks as even as possible (none empty)."""
    edges = np.linspace(0, m, max(1, min(m, parts)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def tapered_bounds(
    rows: list[int], per_row: list[int], n_evaluators: int, largest: float, smallest: float
) -> list[list[tuple[int, int]]]:
    """Chunk bounds for a plan of requests (``rows[i]`` rows of ``per_row[i]`` evaluations
    each), in order: chunks of ``largest`` evaluations while much work remains, tapering to
    ``smallest`` at the end (each a ``1 / (2 * n_evaluators)`` share of what remains, as in
    guided scheduling), so the evaluators finish together instead of one waiting for another's
    last big chunk."""
    remaining = float(sum(m * k for m, k in zip(rows, per_row, strict=True)))
    smallest = min(smallest, largest)
    out = []
    for m, k in zip(rows, per_row, strict=True):
        bounds, a = [], 0
        while a < m:
            evals = min(largest, max(smallest, remaining / (2 * n_evaluators)))
            step = max(1, round(evals / max(1, k)))
            b = m if m - (a + step) < step / 2 else a + step  # no sliver at the end
            bounds.append((a, b))
            remaining -= (b - a) * k
            a = b
        out.append(bounds)
    return out


class _Slot:
    """One task's place in the feeder: its future once submitted."""

    __slots__ = ("future", "task")

    def __init__(self, task: ChunkTask) -> None:
        self.task = task
        self.future: Any = None

    @property
    def done(self) -> bool:
        return self.future is not None and self.future.done()


class Feeder:
    """Sends tasks to the pool in order, at most ``n_workers * IN_FLIGHT_PER_WORKER`` queued
    there at once (see the module); ``submit`` is the pool's ``submit``.

    With ``local`` (``local(task)`` runs a task in this process and returns its
    :class:`ChunkResult`), this process takes the next waiting task whenever it waits, and
    ``ready()`` says whether a worker is up to take tasks (none are sent before).
    ``stop_workers()`` stops the workers when a stop finds tasks running (None: threads,
    which cannot be stopped: each finishes its chunk)."""

    def __init__(
        self,
        submit: Callable[[ChunkTask], Any],
        n_workers: int,
        *,
        local: Callable[[ChunkTask], ChunkResult] | None = None,
        ready: Callable[[], bool] = lambda: True,
        stop_workers: Callable[[], None] | None = shutdown_workers,
    ) -> None:
        self._submit = submit
        #: Stops the workers (None: threads, which finish their task and stay).
        self._stop_workers = stop_workers
        self._limit = max(1, n_workers * IN_FLIGHT_PER_WORKER)
        self.n_workers = max(1, n_workers)
        self.local = local
        self._ready = ready
        self._waiting: deque[_Slot] = deque()
        self._running: list[_Slot] = []
        self._sent: dict[tuple[int, bytes, bytes], tuple[list[tuple[int, int]], list[_Slot]]] = {}

    def __len__(self) -> int:
        """Blocks sent ahead and not asked for yet."""
        return len(self._sent)

    def _pump(self) -> None:
        self._running = [s for s in self._running if not s.future.done()]
        if self.local is not None and self._waiting and not self._ready():
            return  # no worker up yet: this process takes the tasks meanwhile
        while self._waiting and len(self._running) < self._limit:
            slot = self._waiting.popleft()
            slot.future = self._submit(slot.task)
            self._running.append(slot)

    def queue(self, tasks: list[ChunkTask]) -> list[_Slot]:
        """Queue ``tasks`` behind those already queued and start what the bound allows."""
        slots = [_Slot(t) for t in tasks]
        self._waiting.extend(slots)
        self._pump()
        return slots

    def results(self, slots: list[_Slot]) -> list[ChunkResult]:
        """The results of ``slots`` in order, topping the pool's queue up while waiting.
        Interrupted (Ctrl-C, the time limit) with tasks unfinished, the workers are stopped,
        as joblib does: a loss must not go on computing for a check that has ended."""
        try:
            while not all(s.done for s in slots):
                self._pump()
                if self.local is not None and self._waiting:
                    self._run_here(self._waiting.popleft())
                    continue
                pending = [s.future for s in self._running if not s.future.done()]
                if pending:
                    concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            self._pump()
            return [s.future.result() for s in slots]
        except BaseException as exc:
            if isinstance(exc, GradCheckError) or not isinstance(exc, Exception):
                # Ctrl-C, the time limit (not a worker's failure): the workers stop too,
                # even idle or starting ones (the user stopped the check).
                self.stop(workers=True)
            raise

    def _run_here(self, slot: _Slot) -> None:
        assert self.local is not None
        future: concurrent.futures.Future[ChunkResult] = concurrent.futures.Future()
        future.set_result(self.local(slot.task))
        slot.future = future

    def collect(
        self, bounds: list[tuple[int, int]], slots: list[_Slot]
    ) -> list[ChunkResult] | None:
        """The results of a block sent ahead; None when a worker died while it was out (the
        caller evaluates it again: the death may have been another block's)."""
        try:
            return self.results(slots)
        except (GradCheckError, KeyboardInterrupt):
            raise
        except Exception:
            return None

    def send(
        self,
        requests: list[Request],
        *,
        min_chunks_per_worker: int,
        loss_seconds: float,
        task_for: Callable[[Request], ChunkTask | None],
    ) -> None:
        """Queue every request, cut in chunks: at least ``min_chunks_per_worker`` per worker
        over the whole plan, at most :data:`MAX_CHUNKS_PER_WORKER` of the largest size, which
        taper to :data:`CHUNK_SECONDS` of work at the end (:func:`tapered_bounds`)."""
        n_workers = self.n_workers + (self.local is not None)
        total = max(1, sum(int(v.size) for _, _, v in requests))
        n_chunks = max(
            n_workers * max(1, min_chunks_per_worker),
            min(int(total * loss_seconds / CHUNK_SECONDS), MAX_CHUNKS_PER_WORKER * n_workers),
        )
        plan = tapered_bounds(
            [v.shape[0] for _, _, v in requests],
            [v.shape[1] for _, _, v in requests],
            n_workers,
            largest=total / n_chunks,
            smallest=CHUNK_SECONDS / max(loss_seconds, 1e-9),
        )
        for request, bounds in zip(requests, plan, strict=True):
            task = task_for(request)
            if task is None:
                continue
            slots = self.queue([task.part(a, b) for a, b in bounds])
            self._sent[request_key(*request)] = (bounds, slots)

    def retain(self, requests: list[Request]) -> list[Request]:
        """Keep the blocks sent for ``requests``, drop the others (their tasks not started
        yet are never run); the requests not sent yet, in order."""
        keys = [request_key(*r) for r in requests]
        wanted = set(keys)
        for key in [k for k in self._sent if k not in wanted]:
            dropped = {id(slot) for slot in self._sent.pop(key)[1]}
            self._waiting = deque(s for s in self._waiting if id(s) not in dropped)
        return [r for r, k in zip(requests, keys, strict=True) if k not in self._sent]

    def take(
        self, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> tuple[list[tuple[int, int]], list[_Slot]] | None:
        """The chunk bounds and slots of the block sent for exactly these rows (once)."""
        return self._sent.pop(request_key(param, flat_index, values), None)

    def stop(self, workers: bool = False) -> None:
        """Drop what waits; stop the workers if any task of this feeder is still running
        (so the next check does not queue behind a stopped one's work), or ``workers``."""
        self._waiting.clear()
        self._sent.clear()
        running = [s for s in self._running if not s.future.done()]
        self._running = []
        if (running or workers) and self._stop_workers is not None:
            self._stop_workers()
