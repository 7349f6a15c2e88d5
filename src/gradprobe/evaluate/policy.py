"""When a call goes to workers, and how it is split: the dispatch cost model.

A call whose evaluations would take less than a threshold in one process (by the timing of the
base-point evaluation) runs in this process, where dispatching would cost more than it saves;
under ``n_jobs="auto"`` the decision is first taken on the check's whole plan
(:meth:`DispatchPolicy.plan_pays`), then block by block against a block's own round trip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DispatchPolicy:
    """When a call goes to joblib workers, and how it is split.

    Attributes
    ----------
    min_dispatch_seconds : float
        A call whose evaluations would take less than this in one process runs in this
        process instead: a dispatch to joblib workers costs ~10-20 ms (measured on 2 cores
        with loky, up to ~50 ms with 8 chunks), so small calls (probes, retries, tiny
        parameters) would spend more time dispatching than evaluating. Results are identical
        either way.
    process_start_seconds : float
        Starting process workers (loky, multiprocessing) costs about this much (measured
        0.4-0.5 s for 2 workers on 2 cores): a call dispatches only when its work pays for
        that too.
    auto_dispatch_seconds : float
        For ``n_jobs="auto"`` (the default): the time a call must save on the workers (its
        serial time times ``1 - 1/workers``), beyond starting them, to be dispatched.
    block_dispatch_seconds : float
        Once the check's whole plan pays for the workers, a block goes to them when the time
        it saves exceeds this: a round trip to a warm loky pool costs ~5-20 ms (measured on 2
        cores).
    running_plan_seconds : float
        With gradprobe's pool running already, a check's whole plan goes to it when it saves
        more than this: publishing the check's state, the workers attaching to it and the
        chunks' round trips cost ~10 ms (measured on 2 cores: the tiny example MLP's plan of
        1,684 evaluations, ~63 ms serial, took 57 ms with the pool against 72 ms without; a
        plan of ~20 ms saves too little, and at ~40 ms its blocks are still too small to pay
        their own round trips: ``block_dispatch_seconds``).
    chunks_per_worker : int
        Chunks of entries per worker (and per numba thread): enough to balance uneven chunks
        and to check the deadline between rounds, few enough that per-task overhead stays
        small.
    this_process_evaluates : bool
        On gradprobe's own process pool, the check's process is one of the ``n_jobs``
        evaluators (the pool has one worker fewer): it runs the next chunk whenever it would
        wait, and every chunk until a worker is up, so a check never waits for workers to
        start. False: every dispatched chunk goes to a worker (tests of workers use it).
    """

    min_dispatch_seconds: float = 0.2
    process_start_seconds: float = 0.5
    auto_dispatch_seconds: float = 0.25
    block_dispatch_seconds: float = 0.03
    running_plan_seconds: float = 0.02
    chunks_per_worker: int = 4
    this_process_evaluates: bool = True

    def plan_pays(
        self,
        n_evaluations: int,
        *,
        loss_seconds: float,
        n_workers: int,
        start_processes: bool,
        running: bool = False,
    ) -> bool:
        """Whether a check's whole plan of ``n_evaluations`` saves more on ``n_workers``
        workers than dispatching costs, and, when ``start_processes``, starting them.
        ``running``: gradprobe's own pool is up (no start-up: ``running_plan_seconds``)."""
        if n_workers < 2:
            return False
        saved = loss_seconds * n_evaluations * (1.0 - 1.0 / n_workers)
        if running:
            return saved >= self.running_plan_seconds
        startup = self.process_start_seconds if start_processes else 0.0
        return saved >= self.auto_dispatch_seconds + startup

    def dispatches(
        self,
        n_evaluations: int,
        *,
        loss_seconds: float | None,
        n_workers: int,
        start_processes: bool,
        auto: bool = False,
        planned: bool = False,
    ) -> bool:
        """Whether ``n_evaluations`` of ``loss_seconds`` each (None: not measured yet) are
        worth sending to ``n_workers`` workers, which must first be started as processes when
        ``start_processes``; ``auto``: under ``n_jobs="auto"``; ``planned``: the check's whole
        plan pays for the workers (:meth:`plan_pays`), so a block only has to pay for its own
        dispatch."""
        if n_workers < 2:
            return False
        if loss_seconds is None:
            return True
        serial = loss_seconds * n_evaluations
        startup = self.process_start_seconds if start_processes else 0.0
        if planned:
            return serial * (1.0 - 1.0 / n_workers) >= self.block_dispatch_seconds
        if auto:
            # The default: workers only where the time they save on this call (the part of it
            # the other workers take) pays for dispatching and, first, for starting them.
            saved = serial * (1.0 - 1.0 / n_workers)
            return saved >= self.auto_dispatch_seconds + startup
        return serial >= self.min_dispatch_seconds + startup


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1
