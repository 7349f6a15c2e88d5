"""BLAS threads per loss evaluation: one, wherever it runs.

Every loss evaluation runs under :func:`one_blas_thread`: in workers (joblib processes or
threads, numba threads), so workers x BLAS threads never exceed the cores, and in this process
too, for two measured reasons:

- OpenBLAS splits some products differently with 1 and 2 threads, so the same loss differs in
  its last bits (measured on the mid-size example MLP: up to 8.9e-16): one thread everywhere
  keeps a report bit-for-bit the same whatever ``n_jobs``, backend or chunking, and the
  pre-flight's repeated evaluation free of thread-count jitter.
- On a machine whose cores are busy, BLAS threads oversubscribe them: on the shared 2-core
  development machine under load (load average ~5), one mid-MLP evaluation took 71 ms with 2
  BLAS threads and 1.0 ms with one; on a quiet machine 2 threads saved ~20%. A check's
  parallelism comes from workers (``n_jobs="auto"``, the default), which pays on every machine.

A check holds it in this process from its base point to its diagnosis, the gradient's calls
included (set once, not per evaluation). Without threadpoolctl nothing is limited.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

_controller: Any = None
_modules_seen = -1  # len(sys.modules) at the last rediscovery


def _blas_controller(refresh: bool = False) -> Any:
    """A cached ``threadpoolctl.ThreadpoolController`` (None without threadpoolctl).

    Discovering the loaded libraries costs ~0.5 ms, limiting through a cached controller
    ~15 us; the cache is refreshed once per check (:func:`refresh_blas_libraries`) so a BLAS
    loaded by the user's code since the last check is limited too.
    """
    global _controller
    if _controller is None or refresh:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover
            return None
        _controller = ThreadpoolController()
    return _controller


def refresh_blas_libraries() -> None:
    """Rediscover the loaded BLAS libraries (once per check, before evaluating anything)
    when modules were imported since the last time: a new BLAS comes with an extension
    module, and the rediscovery reads the process's memory map (~1.5 ms with numpy and
    torch loaded, over 10 ms with many libraries), more than a small check takes."""
    global _modules_seen
    if _controller is not None and len(sys.modules) == _modules_seen:
        return
    _modules_seen = len(sys.modules)
    _blas_controller(refresh=True)


_depth = threading.local()  # one_blas_thread blocks this thread is inside


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with every loaded BLAS library limited to one thread (see the module).

    Re-entrant in a thread: an inner block inside an outer one sets nothing (~15 us saved
    each), so a check that holds it around its work pays for it once, not per evaluation.
    Each thread sets its own (OpenBLAS takes limits from one controlling thread at a time,
    which threadpoolctl releases as each limit ends)."""
    controller = _blas_controller()
    depth = getattr(_depth, "n", 0)
    if controller is None or depth:
        _depth.n = depth + 1
        try:
            yield
        finally:
            _depth.n = depth
        return
    with controller.limit(limits=1, user_api="blas"):
        _depth.n = 1
        try:
            yield
        finally:
            _depth.n = 0


#: Threads pay when ``n`` calls at once run at least this fraction of ``n`` times as fast as
#: one after another (the loss releases the GIL in numpy/BLAS code).
THREADS_MIN_EFFICIENCY = 0.75


def concurrency_ratio(call: Callable[[int], object], n_threads: int, repeats: int) -> float:
    """Wall time of ``n_threads`` threads each making ``repeats`` calls ``call(k)`` (``k``: the
    thread's own copy of the state) at once, over one thread making ``repeats`` calls: about 1
    when the calls run in parallel, about ``n_threads`` when they hold the GIL. The fastest of
    two rounds each, under one BLAS thread."""

    def one(k: int) -> None:
        for _ in range(repeats):
            call(k)

    def alone() -> float:
        start = time.perf_counter()
        one(0)
        return time.perf_counter() - start

    def together() -> float:
        barrier = threading.Barrier(n_threads + 1)

        def run(k: int) -> None:
            barrier.wait()
            one(k)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        start = time.perf_counter()
        barrier.wait()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    with one_blas_thread():
        single = min(alone(), alone())
        both = min(together(), together())
    return both / max(single, 1e-9)


def threads_pay(
    call: Callable[[int], object],
    n_threads: int,
    loss_seconds: float,
    charge: Callable[[int], None],
) -> tuple[bool, str]:
    """Whether a loss declared thread-safe runs in parallel on ``n_threads`` threads
    (:func:`concurrency_ratio` at least :data:`THREADS_MIN_EFFICIENCY` of ideal), measured in
    ~5 ms of calls ``call(k)`` (``k``: the thread's own copy of the parameters; every call is
    an evaluation, charged first), and the reason as the report states it."""
    repeats = max(1, min(20, int(0.005 / max(loss_seconds, 1e-9))))
    charge(2 * repeats * (n_threads + 1))
    ratio = concurrency_ratio(call, n_threads, repeats)
    fast = n_threads / ratio >= THREADS_MIN_EFFICIENCY * n_threads
    reason = (
        f"{'threads' if fast else 'processes'}: the loss is declared thread-safe and "
        f"{n_threads} calls at once took {ratio:.2f}x one call"
        + ("" if fast else " (it holds the GIL)")
    )
    return fast, reason


class _DaemonThreads:
    """``n`` daemon threads taking ``(future, fn, args)`` from a queue, forever."""

    def __init__(self, n: int) -> None:
        self.tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for k in range(n):
            threading.Thread(target=self._work, name=f"gradprobe-{k}", daemon=True).start()

    def _work(self) -> None:
        while True:
            future, fn, args = self.tasks.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # KeyboardInterrupt from a loss too: the caller's
                future.set_exception(exc)


_thread_pools: dict[tuple[int, int], _DaemonThreads] = {}
_thread_pools_lock = threading.Lock()


def thread_submit(n_threads: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a pool of ``n_threads`` threads kept for the next check (threads cost
    nothing idle); a ``concurrent.futures.Future``. The threads are daemons, as joblib's
    threading backend's: a loss that never returns (a check stopped by its time limit) must
    not keep the interpreter from exiting."""
    key = (os.getpid(), n_threads)  # a forked child has the pool but not its threads
    with _thread_pools_lock:
        pool = _thread_pools.get(key)
        if pool is None:
            pool = _thread_pools[key] = _DaemonThreads(n_threads)
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    pool.tasks.put((future, fn, args))
    return future
