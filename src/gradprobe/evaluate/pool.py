"""The process worker pool that outlives a check: warm start, reuse, idle stop, parent watch.

gradprobe's process workers are joblib's reusable loky executor (one per Python process, the
convention of ``joblib.Parallel``): a check leaves its workers running, and the next check in
the same process reuses them instead of paying the start-up again (~0.5 s for 2 workers on
2 cores). The lifecycle:

- **Start** as soon as a check's plan says workers will pay (:func:`warm_up`: the processes are
  spawned, and import in their own time), so their start-up overlaps the rest of the
  pre-flight; blocks go to them once one is up (:func:`pool_ready`), never waiting for them. Workers ignore SIGINT: a Ctrl-C to the process group is the parent's to handle.
- **Reuse** by every later check of the same process (same worker count and backend).
- **Idle stop**: each worker exits after :data:`IDLE_SECONDS` without work (loky's
  ``idle_worker_timeout``); the pool restarts on demand.
- **Stop** at interpreter exit (``atexit``), on :func:`shutdown_workers`, and at the end of a
  :func:`~gradprobe.evaluate.workers.keep_workers` block.
- **Never outlive the parent**: each worker runs :func:`_watch_parent` from its initializer, a
  daemon thread that ends the worker within :data:`PARENT_POLL_SECONDS` once its parent process
  is gone (exited, raised, killed by SIGTERM or SIGKILL: the worker is re-parented).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

#: Seconds a worker waits for work before it exits (the pool restarts on demand).
IDLE_SECONDS = 60.0
#: How often a worker checks that its parent process is still alive.
PARENT_POLL_SECONDS = 0.25

#: What each worker's environment sets before anything is imported there: BLAS libraries start
#: with one thread (every evaluation runs at one anyway; fewer threads start faster).
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}

_atexit_registered = False
#: Futures of the no-op tasks :func:`warm_up` sent, one per worker: done once a worker is up.
_ready: list[Any] = []


def _watch_parent(parent: int) -> None:
    """Worker initializer: end this worker once process ``parent`` is gone (see the module);
    ignore SIGINT (a Ctrl-C to the process group is the parent's to handle: it stops the
    workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="gradprobe-parent-watch", daemon=True).start()


def loky_options() -> dict[str, Any]:
    """The keyword arguments gradprobe's ``joblib.Parallel`` calls pass to the loky backend
    (the same at every call, so joblib reuses one executor): the idle timeout and the
    parent watch. Registers the stop at interpreter exit on first use."""
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(shutdown_workers)
        _atexit_registered = True
    return {
        "idle_worker_timeout": IDLE_SECONDS,
        "initializer": _watch_parent,
        "initargs": (os.getpid(),),
    }


def executor(n_workers: int) -> Any:
    """gradprobe's loky executor with ``n_workers`` workers: the one running (resized if
    needed), or a new one. Tasks are sent to it directly (``submit``), without joblib's
    memory-mapping of arguments: the check's state travels once per check
    (:mod:`gradprobe.evaluate.shared`)."""
    from joblib.externals.loky import get_reusable_executor

    options = loky_options()
    return get_reusable_executor(
        max_workers=n_workers,
        timeout=options["idle_worker_timeout"],
        initializer=options["initializer"],
        initargs=options["initargs"],
        env=WORKER_ENV,
    )


def _noop() -> None:
    """A task that only says its worker is up (:func:`pool_ready`)."""


def pool_ready() -> bool:
    """Whether at least one worker of the running pool has started and taken a task."""
    if not pool_alive():
        return False
    if not _ready:
        return True  # started by a check's own tasks: they ran
    return any(f.done() for f in _ready)


def _executor() -> Any:
    # No pool can exist before loky is imported: a serial check must not import joblib.
    if "joblib.externals.loky.reusable_executor" not in sys.modules:
        return None
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:  # pragma: no cover
        return None
    return getattr(reusable_executor, "_executor", None)


def pool_alive() -> bool:
    """Whether loky worker processes are running (or starting) in this process."""
    executor = _executor()
    if executor is None or getattr(executor, "_flags", None) is None:
        return False
    flags = executor._flags
    if flags.broken is not None or flags.shutdown:
        return False
    processes = getattr(executor, "_processes", None) or {}
    return any(p.is_alive() for p in list(processes.values()))


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold a Ctrl-C back while workers are spawned (main thread only), then deliver it: the
    signal is recorded, not ignored (an ignored one would be lost: blocking it in this thread
    alone does not help, since any of the process's threads, a BLAS thread say, may take it),
    and raised to this process's own handler when the block ends. Each worker ignores SIGINT
    from its initializer on (:func:`_watch_parent`): a Ctrl-C to the process group is the
    parent's to handle, which stops them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


def warm_up(n_workers: int) -> None:
    """Start ``n_workers`` workers now, without waiting for them: each imports in its own
    time while the check goes on, and takes a no-op task once it is up (:func:`pool_ready`).
    Nothing when they run already."""
    if pool_alive():
        return
    with _sigint_held():
        pool = executor(n_workers)
        _ready[:] = [pool.submit(_noop) for _ in range(n_workers)]


def shutdown_workers() -> None:
    """Stop gradprobe's process workers now and wait until they have exited.

    A check leaves its process workers running for the next check in the same process; they
    stop on their own after :data:`IDLE_SECONDS` without work and at interpreter exit. Call
    this to release them sooner (before forking, in a long-lived service between bursts of
    checks). The next check that needs workers starts them again. Thread pools and a user's
    Dask cluster are not touched.
    """
    running = _executor()
    _ready.clear()
    if running is not None:
        running.shutdown(wait=True, kill_workers=True)
