"""Evaluating the user's loss at perturbed parameters: the only package that calls it in a check.

An :class:`Evaluator` composes two independent choices: *how* a block of perturbed rows is
evaluated (a row runner: :class:`EntryLoop`, one call per row; :class:`BatchedCalls`, B copies
per call; :class:`JitKernel`, a numba kernel) and *where* it runs (a placement:
:class:`InProcess`, or :class:`JoblibWorkers` under a :class:`DispatchPolicy`).
:func:`make_evaluator` picks both for a check; :func:`SerialEvaluator`,
:func:`BatchedEvaluator`, :func:`ParallelEvaluator` and :func:`JitEvaluator` build one
composition each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..layout import ParamLayout
from .backends import workers_for
from .base import Evaluator, InProcess, Placement
from .batched import BATCHED_MEMORY, BatchedCalls
from .jit import JitKernel, is_jit_loss
from .loops import EntryLoop
from .parallel import DispatchPolicy, JoblibWorkers, default_policy
from .threads import refresh_blas_libraries

Loss = Callable[[Any], Any]


def make_evaluator(
    loss: Loss,
    layout: ParamLayout,
    base: Sequence[np.ndarray],
    *,
    n_jobs: Any = 1,
    batched: bool = False,
    budget: int | None = None,
    deadline: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    planned_evaluations: int = 0,
    policy: DispatchPolicy | None = None,
    thread_safe: bool = False,
) -> Evaluator:
    """Pick the evaluator for the requested execution.

    - ``batched=True``: batched calls in this process (``n_jobs`` 1 or ``"auto"``), or batched
      chunks on joblib workers;
    - a numba-jitted loss of one flat float64 vector: the numba kernel with ``n_jobs`` numba
      threads (``"auto"``: every core);
    - ``n_jobs="auto"``: every core, for the calls where workers pay off (``auto=True``); on
      threads where ``thread_safe`` and the pre-flight measures that threads pay, else on
      process workers;
    - ``n_jobs`` resolving to one worker: the per-entry loop in this thread; otherwise on the
      joblib backend ``joblib.parallel_config`` selects.

    ``budget``, ``deadline``, ``progress`` and ``planned_evaluations`` go to the
    :class:`Evaluator`; ``policy`` (default: :func:`default_policy` at this call) decides which
    calls go to workers. The choice is reported as ``report.measured["executor"]``.
    """
    refresh_blas_libraries()
    policy = default_policy() if policy is None else policy
    placement: Placement
    if batched:
        if n_jobs == "auto" or workers_for(n_jobs) < 2:
            placement = InProcess(BatchedCalls())
        else:
            placement = JoblibWorkers(BatchedCalls(), loss, n_jobs, policy=policy)
    elif is_jit_loss(loss, layout):
        kernel = JitKernel(
            loss, n_threads=workers_for(n_jobs), chunks_per_thread=policy.chunks_per_worker
        )
        placement = InProcess(kernel)
    elif n_jobs == "auto":
        placement = JoblibWorkers(
            EntryLoop(), loss, -1, policy=policy, auto=True, thread_safe=thread_safe
        )
    elif workers_for(n_jobs) < 2:
        placement = InProcess(EntryLoop())
    else:
        placement = JoblibWorkers(EntryLoop(), loss, n_jobs, policy=policy)
    return Evaluator(
        loss,
        layout,
        base,
        placement=placement,
        budget=budget,
        deadline=deadline,
        progress=progress,
        planned_evaluations=planned_evaluations,
    )


# -- one composition each (tests, benchmarks) ----------------------------------------------------
def SerialEvaluator(
    loss: Loss, layout: ParamLayout, base: Sequence[np.ndarray], **options: Any
) -> Evaluator:
    """One loss call per perturbed row, in this thread. ``options``: see :class:`Evaluator`."""
    return Evaluator(loss, layout, base, placement=InProcess(EntryLoop()), **options)


def BatchedEvaluator(
    loss: Loss,
    layout: ParamLayout,
    base: Sequence[np.ndarray],
    *,
    memory: int = BATCHED_MEMORY,
    **options: Any,
) -> Evaluator:
    """A batched loss in this thread: B perturbed copies per call, within ``memory`` bytes."""
    return Evaluator(loss, layout, base, placement=InProcess(BatchedCalls(memory)), **options)


def ParallelEvaluator(
    loss: Loss,
    layout: ParamLayout,
    base: Sequence[np.ndarray],
    *,
    n_jobs: Any = -1,
    batched: bool = False,
    memory: int = BATCHED_MEMORY,
    policy: DispatchPolicy | None = None,
    **options: Any,
) -> Evaluator:
    """Chunks of rows (per-entry loops, or batched calls) on ``n_jobs`` joblib workers."""
    rows = BatchedCalls(memory) if batched else EntryLoop()
    placement = JoblibWorkers(rows, loss, n_jobs, policy=policy)
    return Evaluator(loss, layout, base, placement=placement, **options)


def JitEvaluator(
    loss: Loss,
    layout: ParamLayout,
    base: Sequence[np.ndarray],
    *,
    n_threads: int = 1,
    policy: DispatchPolicy | None = None,
    **options: Any,
) -> Evaluator:
    """A numba-jitted loss inside the numba kernel, on ``n_threads`` numba threads."""
    chunks = (default_policy() if policy is None else policy).chunks_per_worker
    kernel = JitKernel(loss, n_threads=n_threads, chunks_per_thread=chunks)
    return Evaluator(loss, layout, base, placement=InProcess(kernel), **options)
