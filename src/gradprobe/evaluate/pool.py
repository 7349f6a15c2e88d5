"""The process worker pool that outlives a check: warm start, reuse, idle stop, parent watch.

gradprobe's process workers are joblib's reusable loky executor (one per Python process, the
convention of ``joblib.Parallel``): a check leaves its workers running, and the next check in
the same process reuses them instead of paying the start-up again (~0.5 s for 2 workers on
2 cores). The lifecycle:

- **Start** as soon as a check's plan says workers will pay (:func:`warm_up`: the processes are
  spawned, and import in their own time), so their start-up overlaps the rest of the
  pre-flight; blocks go to them once one is up (:func:`pool_ready`), never waiting for them.
  Workers ignore SIGINT: a Ctrl-C to the process group is the parent's to handle (one that
  reaches the parent while they start is delivered once they are started).
- **Reuse** by every later check of the same process (same worker count and backend).
- **Idle stop**: each worker exits after :data:`IDLE_SECONDS` without work (loky's
  ``idle_worker_timeout``); the pool restarts on demand.
- **Stop** at interpreter exit (``atexit``), on :func:`shutdown_workers`, and at the end of a
  :func:`~gradprobe.evaluate.workers.keep_workers` block.
- **Never outlive the parent**: each worker runs :func:`_watch_parent` from its initializer.
  On Linux the kernel kills the worker when its parent ends, however it ends, even while the
  worker is stuck in C code that holds the GIL (:mod:`.parent_death`); everywhere a daemon
  thread also ends it within :data:`PARENT_POLL_SECONDS` once the parent is gone (it needs the
  GIL). loky starts workers from whichever thread submits work or warms the pool up, or from
  its executor-manager thread; the kernel's signal follows the starting *thread*, so a worker
  started by another thread arms it once that thread has ended (a pool outlives the check that
  started it), and until then has a guard process kill it when the parent ends.
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

from .parent_death import die_with_parent, start_guard, stop_guard, thread_alive

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


class _Spawner:
    """The worker initializer's argument: the parent's pid, and which thread started the
    worker. loky pickles the initializer's arguments in the thread that starts each worker, so
    :meth:`__reduce__` records that thread then; equal for one parent, so joblib keeps reusing
    the executor."""

    def __init__(self, pid: int, thread: int = 0, lasting: bool = True) -> None:
        self.pid = pid
        self.thread = thread
        self.lasting = lasting

    def __reduce__(self) -> tuple[Any, tuple[int, int, bool]]:
        starter = threading.current_thread()
        lasting = (
            starter is threading.main_thread()
            # It runs as long as the executor: its end stops the workers.
            or type(starter).__name__ == "_ExecutorManagerThread"
        )
        return (_Spawner, (os.getpid(), threading.get_native_id(), lasting))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Spawner) and other.pid == self.pid

    def __hash__(self) -> int:
        return hash(self.pid)


def _watch_parent(spawner: _Spawner) -> None:
    """Worker initializer: end this worker once its parent process is gone (see the module);
    ignore SIGINT (a Ctrl-C to the process group is the parent's to handle: it stops the
    workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # started with it blocked (_sigint_held)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    parent = spawner.pid
    # Armed now only when the starting thread lasts: the signal fires when it ends.
    armed = spawner.lasting and die_with_parent(parent)
    pending = not armed and not spawner.lasting
    # Meanwhile a guard process kills this worker if the parent ends (forked now: no thread yet).
    guard = start_guard(parent) if pending else None

    def watch() -> None:
        nonlocal pending
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(0)
            if pending and not thread_alive(parent, spawner.thread):
                pending = False  # now the child of the parent's main thread
                if die_with_parent(parent) and guard is not None:
                    stop_guard(guard)

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
        "initargs": (_Spawner(os.getpid()),),
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


def submit(n_workers: int, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on gradprobe's pool of ``n_workers`` (:func:`executor`); the workers a
    submit spawns (none running yet) start with SIGINT held back, as in :func:`warm_up`."""
    if pool_alive():
        return executor(n_workers).submit(fn, *args)
    with _sigint_held():
        return executor(n_workers).submit(fn, *args)


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
    """Block SIGINT in this thread for the block: processes started in it begin with it
    blocked (the mask is inherited; the worker's initializer ignores, then unblocks it), so a
    Ctrl-C sent to the process group reaches the parent alone, which stops them. The parent's
    own Ctrl-C is not lost: it is held back and raised when the block ends. (Ignoring SIGINT
    here lost a Ctrl-C that came meanwhile.) Where masks are missing, SIGINT is ignored for
    the block (main thread only)."""
    if hasattr(signal, "pthread_sigmask"):
        # The resource trackers unblock SIGINT when they start: started first, they are running.
        from multiprocessing import resource_tracker

        from joblib.externals.loky.backend import resource_tracker as loky_tracker

        loky_tracker.ensure_running()
        resource_tracker.ensure_running()
        # Another thread (a BLAS thread) may still take a Ctrl-C: recorded here, raised after
        # the block, so it never interrupts the executor half-built (whose semaphores would
        # then leak, and loky's resource tracker print about them at exit).
        caught: list[int] = []
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
                if caught:
                    signal.raise_signal(signal.SIGINT)
        return
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # pragma: no cover
    try:  # pragma: no cover
        yield
    finally:  # pragma: no cover
        signal.signal(signal.SIGINT, previous)


def warm_up(n_workers: int) -> None:
    """Start ``n_workers`` workers now, without waiting for them: each imports in its own
    time while the check goes on, and takes a no-op task once it is up (:func:`pool_ready`).
    Nothing when they run already."""
    if pool_alive():
        return
    with _sigint_held():
        pool = executor(n_workers)
        _ready[:] = [pool.submit(_noop) for _ in range(n_workers)]


def warm_up_in_background(n_workers: int) -> None:
    """:func:`warm_up` from a thread of its own, which imports joblib first (~80 ms): the
    calling thread goes on meanwhile. A failure there is left to the check, which starts the
    pool itself when it first sends work."""

    def start() -> None:
        with contextlib.suppress(Exception):
            import joblib  # noqa: F401

            warm_up(n_workers)

    threading.Thread(target=start, name="gradprobe-pool-start", daemon=True).start()


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
