"""Joblib dispatch: the placement that sends blocks of rows to workers, and its cost model.

:class:`JoblibWorkers` cuts a call into ``chunks_per_worker`` chunks per worker, each a
:class:`~gradprobe.evaluate.loops.ChunkTask` that perturbs the worker's copy of the parameters
with a saved-value restore and returns the losses. On gradprobe's own loky pool the tasks go
to the pool directly as futures, the check's loss and parameters travel once per check
(:mod:`gradprobe.evaluate.shared`) and every parameter's first sample can be sent ahead at once
(:mod:`gradprobe.evaluate.ahead`); on the threading backend they go the same way to a pool of
threads; other backends (a Dask cluster) get one ``joblib.Parallel`` call per block. Whether
a call is worth dispatching is the :class:`DispatchPolicy`'s decision, on the check's whole
plan first, by the measured cost of one evaluation. Every evaluation runs with one BLAS thread wherever it runs, so results are
the same bit for bit.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInputError
from .ahead import Feeder, Request, chunk_bounds, pool_submitter, thread_submitter
from .loops import ChunkResult, ChunkTask, WorkerRows, entry_losses_of, raise_chunk_error
from .policy import DispatchPolicy, available_cores
from .pool import pool_alive, pool_ready, shutdown_workers, warm_up, warm_up_in_background
from .threads import one_blas_thread, threads_pay
from .workers import PROCESS_BACKENDS, check_picklable, guarded, is_pickling_error

if TYPE_CHECKING:
    from .base import Evaluator


#: Before any other call, a check plans with the base point's timing over this.
COLD_FIRST_CALL = 4.0
#: Backends whose tasks stream to gradprobe's own pools (processes, threads), blocks ahead.
DIRECT_BACKENDS = ("loky", "threading")
#: The policy evaluators use unless given one (tests replace it with monkeypatch.setattr).
DEFAULT_POLICY = DispatchPolicy()


def default_policy() -> DispatchPolicy:
    """The current :data:`DEFAULT_POLICY` (looked up at each call, so it can be replaced)."""
    return DEFAULT_POLICY


class JoblibWorkers:
    """Placement: blocks worth dispatching (:class:`DispatchPolicy`) go to joblib workers.

    ``auto=True`` is ``n_jobs="auto"``: every core, the policy's ``auto_dispatch_seconds``
    threshold, and a loss that process workers cannot pickle keeps everything in this thread
    (said in the report) instead of raising :class:`InvalidInputError`.
    """

    sends_ahead = True

    def __init__(
        self,
        rows: WorkerRows,
        loss: Callable[[Any], Any],
        n_jobs: Any = -1,
        *,
        policy: DispatchPolicy | None = None,
        auto: bool = False,
        thread_safe: bool = False,
    ) -> None:
        self.rows = rows
        #: The loss may run in several threads at once (``check(thread_safe=True)``): under
        #: "auto", threads are measured in the pre-flight and chosen where they pay.
        self.thread_safe = thread_safe
        self.prefer = "processes"
        self.threads_reason = ""
        self._threads_measured = False
        self.loss = loss
        self.n_jobs = n_jobs
        self.policy = default_policy() if policy is None else policy
        self.auto = auto
        self.loss_seconds: float | None = None
        self._calibrated = False  # loss_seconds measured on more than the first evaluation
        self._observed = 0  # timings seen (the first, the base point's, is often cold)
        self.dispatched = 0  # joblib calls made
        self.in_process = 0  # calls kept in this process
        self.worker_ids: set[str] = set()
        #: Why ``n_jobs="auto"`` kept everything in this process although workers would pay.
        self.kept_reason = ""
        #: Whether the check's whole plan pays for the workers (:meth:`plan`), and why.
        self.planned = False
        self.plan_reason = ""
        self._warming = False
        self._entered = False
        #: Whether this placement sent work to joblib workers (and so may have started processes).
        self._started_processes = False
        self._parallel: Any = None
        #: On loky, tasks go to gradprobe's executor directly (futures), not through joblib.
        self._direct = False
        #: Tasks for gradprobe's loky pool, in order, and the blocks sent ahead (made on first use).
        self._feeder: Feeder | None = None
        if auto and "joblib" not in sys.modules:
            # Under "auto" joblib is imported (~75 ms) only once a call is worth dispatching:
            # a check of a cheap loss never pays for it. Until then, assume process workers
            # on every core this process may use (what joblib would pick).
            self.n_workers = available_cores()
            self.backend_name, self.uses_threads = "loky", False
        else:
            self._connect()

    def _connect(self) -> None:
        """Build the joblib call for the configured backend (and check the loss pickles)."""
        import joblib

        self.n_workers = int(joblib.effective_n_jobs(self.n_jobs))
        # It names the backend; on loky the tasks go to gradprobe's own pool instead
        # (:meth:`_call`, :mod:`gradprobe.evaluate.pool`).
        self._parallel = joblib.Parallel(n_jobs=self.n_jobs, prefer=self.prefer)
        self.backend_name = type(self._parallel._backend).__name__.replace("Backend", "").lower()
        self.uses_threads = bool(getattr(self._parallel._backend, "uses_threads", False))
        self._direct = self.backend_name in DIRECT_BACKENDS
        if not self.uses_threads and self.n_workers >= 2:
            try:
                check_picklable(self.loss, self.backend_name)
            except InvalidInputError as exc:
                if not self.auto:
                    raise
                self.n_workers = 1
                self.kept_reason = str(exc).split(";")[0]

    def plan(self, ev: Evaluator, n_evaluations: int) -> None:
        """The check's whole plan: ``n_evaluations`` to come. When it pays for the workers
        (by the measured cost of one evaluation), process workers start now, in the background,
        and later blocks go to them when each saves more than its dispatch costs. A loss
        declared thread-safe runs on threads where the pre-flight measures that they pay."""
        if self.loss_seconds is None or self.n_workers < 2:
            return
        # A first call is often cold (imports, caches): several times a later one.
        seconds = self.loss_seconds / (1.0 if self._observed > 1 else COLD_FIRST_CALL)

        def pays() -> bool:  # starting the pool is never waited for: it costs this plan nothing
            return self.policy.plan_pays(
                n_evaluations,
                loss_seconds=seconds,
                n_workers=self.n_workers,
                start_processes=False,
                running=self._on_own_pool and pool_ready(),
            )

        if self.auto and self.thread_safe and not self._threads_measured and pays():
            self._choose_threads(ev)
        warm = self._started_processes or self._warming or pool_alive()
        if not pays():
            self.planned, self.plan_reason = False, ""  # decided again on a refined timing
            return
        if self._parallel is None and "joblib" not in sys.modules and self.prefer != "threads":
            # No joblib backend can be configured before joblib is imported: gradprobe's loky
            # pool it is. Another thread imports joblib and starts it; this one goes on, and
            # connects when it first sends blocks.
            self._warming = True
            warm_up_in_background(self.pool_size)
        elif self._parallel is None:
            self._connect()  # the backend may have fewer workers, or the loss not pickle
            if self.n_workers < 2:
                return
        if self._on_own_pool and not warm:
            # The pool starts in the background whenever the plan's work pays for dispatching
            # it: its start-up overlaps this check (this process evaluates the blocks alone
            # until a worker is up) and later checks of this process find it running.
            self._warming = True
            warm_up(self.pool_size)
        self.planned = True
        self.plan_reason = (
            f"the plan, {n_evaluations:,} evaluations of ~{self.loss_seconds * 1e3:.3g} ms "
            f"(~{self.loss_seconds * n_evaluations:.2g} s serial), pays for {self.n_workers} "
            "workers"
            + (" already running" if warm and not self._warming else "")
        )

    def _choose_threads(self, ev: Evaluator) -> None:
        """Measure whether calls of the loss run in parallel on threads (each on its own copy
        of the parameters); switch to threads where they do (:func:`threads_pay`)."""
        self._threads_measured = True
        n = min(self.n_workers, 4)
        copies = [[a.copy() for a in ev.base] for _ in range(n)]
        fast, self.threads_reason = threads_pay(
            lambda k: self.rows.call_loss(ev, copies[k], "measuring threads"),
            n,
            self.loss_seconds or 1e-3,
            ev.charge,
        )
        if fast:
            self.prefer = "threads"
            self._connect()

    @property
    def executor(self) -> str:
        text = f"joblib {self.rows.chunk_name} ({self.backend_name}, {self.n_workers} workers)"
        if self.in_process and not self.dispatched:
            text += ", every call kept in process (too small for workers to pay off)"
        if self.auto:
            if self.dispatched == 0:
                return f"auto (serial: {self.kept_reason})" if self.kept_reason else "auto (serial)"
            reasons = (self.threads_reason, self.plan_reason, self.kept_reason)
            why = "".join(f"; {r}" for r in reasons if r)
            return f"auto (serial + {text}{why})"
        return text

    # -- cost model ----------------------------------------------------------------------------
    def observe(self, seconds: float, n_evaluations: int) -> None:
        """Refine the per-evaluation time (the fastest seen: the first call is often cold)."""
        per = seconds / max(1, n_evaluations)
        self.loss_seconds = per if self.loss_seconds is None else min(self.loss_seconds, per)
        self._observed += 1
        self._calibrated = self._calibrated or n_evaluations >= 2

    @property
    def pool_size(self) -> int:
        """Worker processes of gradprobe's own pool: this process is one of the
        ``n_workers`` evaluators (:mod:`gradprobe.evaluate.ahead`) unless the policy says not."""
        return max(1, self.n_workers - self.policy.this_process_evaluates)

    @property
    def starts_processes(self) -> bool:
        """Whether a dispatch now would first have to start process workers (on gradprobe's
        own pool, never waited for: a pool starting or running costs nothing more)."""
        if self.backend_name not in PROCESS_BACKENDS or self._started_processes:
            return False
        if self._direct:
            return not (self._warming or pool_alive())
        return not (self.backend_name == "loky" and pool_ready())

    def worth_dispatching(self, n_evaluations: int) -> bool:
        """The policy's decision for ``n_evaluations`` now (measured cost, workers running)."""

        def decide() -> bool:
            return self.policy.dispatches(
                n_evaluations,
                loss_seconds=self.loss_seconds,
                n_workers=self.n_workers,
                start_processes=self.starts_processes,
                auto=self.auto,
                planned=self.planned,
            )

        if not decide():
            return False
        if self._parallel is None:
            self._connect()  # the backend may have fewer workers, or the loss not pickle
            return decide()
        return True

    # -- evaluation ----------------------------------------------------------------------------
    def entry_losses(
        self, ev: Evaluator, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        m, k = values.shape
        sent = None if self._feeder is None else self._feeder.take(param, flat_index, values)
        if sent is not None:
            ev.charge(m * k)
            return self._collect_sent(ev, param, flat_index, values, sent)
        calibrating = self.rows.times_rows and not self._calibrated and m > 2
        if calibrating and self.worth_dispatching(m * k):
            # The base-point timing is often cold (first call): time two rows here before
            # deciding whether the rest is worth dispatching.
            head = self._entries_in_process(ev, param, flat_index[:2], values[:2])
            rest = self.entry_losses(ev, param, flat_index[2:], values[2:])
            return np.concatenate([head, rest])
        if not self.worth_dispatching(m * k):
            return self._entries_in_process(ev, param, flat_index, values)
        ev.charge(m * k)
        return self._dispatch_entries(ev, param, flat_index, values)

    def _dispatch_entries(
        self, ev: Evaluator, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        """Entry rows on the workers, in ``chunks_per_worker`` chunks per worker (charged)."""
        m = values.shape[0]
        task = self.rows.chunk_task(ev, param, flat_index, values)
        assert task is not None  # entry rows always have a worker task
        where = f"entries 0..{m - 1} of the {m} checked"
        bounds = self._chunks(m)
        results = self._run(ev, [task.part(a, b) for a, b in bounds], param, where)
        return entry_losses_of(ev, param, flat_index, values.shape, bounds, results)

    def _entries_in_process(
        self, ev: Evaluator, param: int, flat_index: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        self.in_process += 1
        if not self.rows.times_rows:
            return self.rows.entry_losses(ev, param, flat_index, values)
        start = time.perf_counter()
        out = self.rows.entry_losses(ev, param, flat_index, values)
        self.observe(time.perf_counter() - start, values.size)
        return out

    def vector_losses(self, ev: Evaluator, param: int, vectors: np.ndarray) -> np.ndarray:
        task = self.rows.chunk_task(ev, param, None, vectors)
        if task is None:  # such rows never leave this process
            return self.rows.vector_losses(ev, param, vectors)
        m = vectors.shape[0]
        if not self.worth_dispatching(m):
            self.in_process += 1
            return self.rows.vector_losses(ev, param, vectors)
        ev.charge(m)
        out = np.empty(m)
        bounds = self._chunks(m)
        results = self._run(ev, [task.part(a, b) for a, b in bounds], param, "directions")
        for (a, b), res in zip(bounds, results, strict=True):
            if res.error is not None:
                raise_chunk_error(ev, res, param, None)
            out[a:b] = res.losses
        return out

    def _chunks(self, m: int) -> list[tuple[int, int]]:
        """Chunk bounds for ``m`` rows: ``chunks_per_worker`` per worker, as even as possible."""
        return chunk_bounds(m, self.n_workers * max(1, int(self.policy.chunks_per_worker)))

    def _call(self, ev: Evaluator, tasks: list[ChunkTask]) -> list[ChunkResult]:
        if self._direct:
            feeder = self.feeder(ev)
            return feeder.results(feeder.queue(tasks))
        import joblib

        return list(self._parallel([joblib.delayed(t.run)(t) for t in tasks]))

    @property
    def reads_base_in_threads(self) -> bool:
        """Whether tasks may run in threads of this process (reading the base copies)."""
        return self.uses_threads and self._feeder is not None

    @property
    def _on_own_pool(self) -> bool:
        """Tasks go to gradprobe's own loky pool of processes."""
        return self._direct and self.backend_name == "loky"

    def feeder(self, ev: Evaluator) -> Feeder:
        """The feeder of gradprobe's loky pool, or of its thread pool on the threading
        backend (:mod:`gradprobe.evaluate.ahead`), with this process (this thread) as one of
        the evaluators; the process pool starts now (in the background) if it is not
        running."""
        if self._feeder is None:
            own = self._on_own_pool
            if own:
                warm_up(self.pool_size)
            self._feeder = Feeder(
                (pool_submitter if own else thread_submitter)(self.pool_size),
                self.pool_size,
                local=(
                    (lambda task: self.rows.run_chunk(ev, task))
                    if self.policy.this_process_evaluates
                    else None
                ),
                ready=pool_ready if own else (lambda: True),
                stop_workers=shutdown_workers if own else None,
            )
        return self._feeder

    # -- blocks sent ahead ---------------------------------------------------------------------
    def prefetch(self, ev: Evaluator, requests: list[Request]) -> None:
        """Send the entry blocks ``requests`` (``(param, flat_index, values)``, as the check
        will ask for them) to the workers now, all parameters at once, when their work pays
        (:mod:`gradprobe.evaluate.ahead`); :meth:`entry_losses` collects a block when the
        check asks for it. Blocks sent by an earlier call and not among ``requests`` are
        dropped (the check sends its first blocks before the pre-flight, by the parameters'
        own precision, and again after it)."""
        if self._parallel is None and self.planned:
            self._connect()
        if not self._direct or self._parallel is None:
            return
        if self._feeder is not None:
            requests = self._feeder.retain(requests)
        if not requests:
            return
        if not self.worth_dispatching(sum(int(v.size) for _, _, v in requests)):
            return
        self._started_processes = True
        self.dispatched += 1
        self.feeder(ev).send(
            requests,
            min_chunks_per_worker=int(self.policy.chunks_per_worker),
            loss_seconds=self.loss_seconds or 1e-3,
            task_for=lambda r: self.rows.chunk_task(ev, *r),
        )

    def _collect_sent(
        self, ev: Evaluator, param: int, flat_index: np.ndarray, values: np.ndarray, sent: Any
    ) -> np.ndarray:
        results = self.feeder(ev).collect(*sent)
        if results is None:
            # A worker died while this block was out, perhaps of another block's entry:
            # evaluate it again the ordinary way, which finds the entry if it is this one's.
            return self._dispatch_entries(ev, param, flat_index, values)
        self.worker_ids.update(res.worker for res in results)
        return entry_losses_of(ev, param, flat_index, values.shape, sent[0], results)

    def _run(
        self, ev: Evaluator, tasks: list[ChunkTask], param: int, what: str
    ) -> list[ChunkResult]:
        if not self._entered and not self._direct:
            self._parallel.__enter__()
            self._entered = True
        self.dispatched += 1
        self._started_processes = True
        return self._guarded(ev, tasks, param, what, lambda: self._call(ev, tasks))

    def _guarded(
        self,
        ev: Evaluator,
        tasks: list[ChunkTask],
        param: int,
        what: str,
        call: Callable[[], list[ChunkResult]],
    ) -> list[ChunkResult]:
        """``call()``'s results, errors as gradprobe's (:func:`guarded`)."""
        with one_blas_thread():  # covers thread backends; workers limit themselves
            try:
                results = guarded(
                    call,
                    backend=self.backend_name,
                    layout=ev.layout,
                    tasks=tasks,
                    param=param,
                    what=what,
                    rerun=lambda task: self._call(ev, [task]),
                    deadline=ev.deadline,
                )
            except InvalidInputError as exc:
                if not (self.auto and is_pickling_error(exc)):
                    raise
                # "auto": a worker could not receive the loss (its module may be importable
                # here only); the check goes on in this process.
                self.n_workers = 1
                self.kept_reason = "the workers could not unpickle the loss: ran here"
                if self._feeder is not None:
                    self._feeder.stop()
                results = [self.rows.run_chunk(ev, task) for task in tasks]
        for res in results:
            self.worker_ids.add(res.worker)
        return results

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Leave joblib's context. Process workers stay for the next check in this process
        (:mod:`gradprobe.evaluate.pool`: idle stop, stop at exit, ``shutdown_workers()``);
        thread pools end with the context; a user's Dask cluster is never touched."""
        if self._feeder is not None:
            self._feeder.stop()
        if self._entered and self._parallel is not None:
            self._entered = False
            self._parallel.__exit__(None, None, None)

