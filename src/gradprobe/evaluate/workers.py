"""Process workers: their lifecycle, the entry that killed one, and losses they cannot receive.

The pool's lifecycle is :mod:`gradprobe.evaluate.pool`'s; :func:`keep_workers` scopes it. When a worker dies mid-call, :func:`worker_died_error` localizes the entry that killed
it by re-running the round's chunks. A loss that process workers cannot unpickle gets an error
that says to use threads (:func:`check_picklable`, :func:`unpicklable`).
"""

from __future__ import annotations

import contextlib
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import GradCheckError, InvalidInputError, LossEvaluationError
from ..layout import ParamLayout
from .loops import ChunkTask
from .pool import shutdown_workers

#: joblib backends whose workers are processes (started at a cost, killed by a crash).
PROCESS_BACKENDS = ("loky", "multiprocessing")
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

# -- pool lifecycle ------------------------------------------------------------------------------
_keep_workers_depth = 0


@contextlib.contextmanager
def keep_workers() -> Iterator[None]:
    """Scope the process workers of the checks run inside this block: they are stopped when
    the block ends (instead of after :data:`~gradprobe.evaluate.pool.IDLE_SECONDS` idle).

    Checks in one process share one pool of workers already (see :mod:`gradprobe.evaluate.pool`);
    this block says when it ends. Thread pools and Dask clusters are unaffected.

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
            shutdown_workers()


def keeping_workers() -> bool:
    """Whether a :func:`keep_workers` block is active."""
    return _keep_workers_depth > 0


# -- pickling diagnostics ------------------------------------------------------------------------
def is_pickling_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) says something could not be pickled."""
    seen = 0
    while exc is not None and seen < 8:
        text = f"{type(exc).__name__} {exc}".lower()
        if isinstance(exc, pickle.PicklingError) or "pickl" in text or "serializ" in text:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return False


def unpicklable(backend: str, exc: BaseException) -> InvalidInputError:
    """The error for a loss that the ``backend``'s worker processes cannot receive."""
    return InvalidInputError(
        f"loss: the {backend} backend runs workers in other processes and must pickle the "
        f"loss, which failed ({type(exc).__name__}: {exc}). Use threads, "
        "`with joblib.parallel_config(backend='threading'): gradprobe.check(...)`, or define "
        "the loss at module level without unpicklable state (open files, locks, generators); "
        "or pass n_jobs=1."
    )


def check_picklable(loss: Callable[[Any], Any], backend: str) -> None:
    """Raise :func:`unpicklable`'s error when cloudpickle cannot pickle ``loss``."""
    try:  # joblib >= 1.5 depends on cloudpickle; older versions vendor it
        import cloudpickle
    except ImportError:  # pragma: no cover
        from joblib.externals import cloudpickle  # type: ignore[no-redef]

    try:
        cloudpickle.dumps(loss)
    except Exception as exc:
        raise unpicklable(backend, exc) from exc


def guarded(call: Callable[[], list[Any]], *, backend: str, **where: Any) -> list[Any]:
    """``call()``'s results, with a loss that cannot be pickled and a worker's death turned
    into gradprobe's errors (the death localized by :func:`worker_died_error`, which takes
    ``where``); gradprobe's own errors and Ctrl-C pass through."""
    try:
        return call()
    except (GradCheckError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if is_pickling_error(exc):
            raise unpicklable(backend, exc) from exc
        raise worker_died_error(exc, backend=backend, **where) from exc


# -- crash localization --------------------------------------------------------------------------
def _is_worker_death(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or its cause) says a worker process died rather than the loss raising."""
    seen = 0
    while exc is not None and seen < 8:
        if any(t.__name__ in _WORKER_DEATH_TYPES for t in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def worker_died_error(
    exc: Exception,
    *,
    backend: str,
    layout: ParamLayout,
    tasks: Sequence[ChunkTask],
    param: int,
    what: str,
    rerun: Callable[[ChunkTask], Any],
    deadline: float | None,
) -> LossEvaluationError:
    """The error for a worker lost mid-call, localized to one entry where possible.

    On process backends (loky, multiprocessing) the round's chunks are re-run one at a time
    (``rerun(task)``) and the one that kills its worker is halved down to a single entry (at
    most ``MAX_CRASH_RERUNS`` re-runs, each respawning a worker; not charged to the budget).
    Elsewhere (Dask retries a task on other workers before giving up), or when no re-run
    crashes again, the error names the parameter and the candidate entries of the round.
    """
    name = layout.names[param]
    shape = layout.shapes[param]
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    head = (
        f"a {backend} worker died ({type(exc).__name__}: {first_line}) while "
        f"evaluating parameter {name!r}"
    )
    fix = (
        "the loss crashed the worker process (a segfault, os._exit, a signal, running out "
        "of memory); call the loss at that point in this process (n_jobs=1) to see why."
    )
    entry_tasks = [t for t in tasks if t.flat_index is not None]
    if not entry_tasks:
        return LossEvaluationError(
            f"{head} along random directions ({what}); {fix}", param=name, index=None
        )
    if _is_worker_death(exc) and backend in PROCESS_BACKENDS:
        flat = _locate_crash(entry_tasks, rerun, deadline)
        if flat is not None:
            index = tuple(int(i) for i in np.unravel_index(flat, shape))
            return LossEvaluationError(
                f"{head} at index {list(index)} (found by re-running the failed round "
                f"chunk by chunk, then in halves); {fix}",
                param=name,
                index=index,
            )
    candidates = np.concatenate([np.asarray(t.flat_index) for t in entry_tasks])
    shown = candidates[:MAX_LISTED_CANDIDATES]
    listed = ", ".join(str([int(i) for i in np.unravel_index(int(f), shape)]) for f in shown)
    if candidates.size > shown.size:
        listed += f" and {candidates.size - shown.size} more"
    return LossEvaluationError(
        f"{head} at one of {candidates.size} entries ({what}): {listed}; {fix}",
        param=name,
        index=None,
    )


def _locate_crash(
    tasks: Sequence[ChunkTask], rerun: Callable[[ChunkTask], Any], deadline: float | None
) -> int | None:
    """Flat index of the entry whose evaluation kills a worker, or None (see
    :func:`worker_died_error`)."""
    pending = list(tasks)
    for _ in range(MAX_CRASH_RERUNS):
        if not pending or (deadline is not None and time.monotonic() > deadline):
            return None
        task = pending.pop(0)
        try:
            rerun(task)
            continue  # survived alone: try the next chunk
        except Exception as exc:
            if not _is_worker_death(exc):
                return None
        assert task.flat_index is not None
        rows = task.n_rows
        if rows == 1:
            return int(task.flat_index[0])
        mid = rows // 2
        pending = [task.part(0, mid), task.part(mid, rows)]
    return None
