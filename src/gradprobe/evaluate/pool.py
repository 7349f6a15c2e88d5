"""The process worker pool that outlives a check: warm start, reuse, idle stop, parent watch.

gradprobe's process workers are joblib's reusable loky executor (one per Python process, the
convention of ``joblib.Parallel``): a check leaves its workers running, and the next check in
the same process reuses them instead of paying the start-up again (~0.5 s for 2 workers on
2 cores). The lifecycle:

- **Start** in the background (:func:`warm_up`, a daemon thread) as soon as a check's plan says
  workers will pay, so their start-up overlaps the rest of the pre-flight.
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
import os
import threading
import time
from typing import Any

__all__ = [
    "IDLE_SECONDS",
    "loky_options",
    "pool_alive",
    "shutdown_workers",
    "warm_up",
]

#: Seconds a worker waits for work before it exits (the pool restarts on demand).
IDLE_SECONDS = 60.0
#: How often a worker checks that its parent process is still alive.
PARENT_POLL_SECONDS = 0.25

_lock = threading.Lock()
_warming: threading.Thread | None = None
_atexit_registered = False


def _watch_parent(parent: int) -> None:
    """Worker initializer: end this worker once process ``parent`` is gone (see the module)."""

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


def _executor() -> Any:
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:  # pragma: no cover
        return None
    return getattr(reusable_executor, "_executor", None)


def pool_alive() -> bool:
    """Whether loky worker processes are running (or being started) in this process."""
    if _warming is not None and _warming.is_alive():
        return True
    executor = _executor()
    if executor is None or getattr(executor, "_flags", None) is None:
        return False
    flags = executor._flags
    if flags.broken is not None or flags.shutdown:
        return False
    processes = getattr(executor, "_processes", None) or {}
    return any(p.is_alive() for p in list(processes.values()))


def _noop() -> int:
    return os.getpid()


def warm_up(parallel: Any, n_workers: int) -> None:
    """Start ``n_workers`` loky workers in a background thread by running trivial tasks
    through ``parallel`` (a ``joblib.Parallel`` built in the calling thread, so it carries the
    caller's ``joblib.parallel_config``); nothing when they run already."""
    global _warming
    import joblib

    with _lock:
        if (_warming is not None and _warming.is_alive()) or pool_alive():
            return

        def start() -> None:
            try:
                parallel(joblib.delayed(_noop)() for _ in range(n_workers))
            except Exception:  # a failed start shows again, with its error, at the first call
                pass

        _warming = threading.Thread(target=start, name="gradprobe-warm-up", daemon=True)
        _warming.start()


def wait_for_warm_up() -> None:
    """Wait until a background start begun by :func:`warm_up` is done."""
    thread = _warming
    if thread is not None:
        thread.join()


def shutdown_workers() -> None:
    """Stop gradprobe's process workers now and wait until they have exited.

    A check leaves its process workers running for the next check in the same process; they
    stop on their own after :data:`IDLE_SECONDS` without work and at interpreter exit. Call
    this to release them sooner (before forking, in a long-lived service between bursts of
    checks). The next check that needs workers starts them again. Thread pools and a user's
    Dask cluster are not touched.
    """
    wait_for_warm_up()
    executor = _executor()
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)
