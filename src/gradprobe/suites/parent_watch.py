"""A worker process that ends when its parent ends, however the parent ends.

:func:`exit_with_parent` (called first thing in a worker) asks the kernel, on Linux, to SIGKILL
the process when its parent ends (``prctl(PR_SET_PDEATHSIG)``: it works even while the worker
is stuck in C code holding the GIL), and everywhere starts a daemon thread that waits on the
parent's sentinel and exits (enough while the worker lets go of the GIL now and then).
:func:`die_with_parent` is the kernel part alone (:mod:`gradprobe.evaluate.parent_death`, shared
with the process pool's workers). The signal fires when the parent *thread* that started the
worker ends: a worker is started, used and stopped by one thread (see
:class:`gradprobe.suites.isolation.IsolatedWorker`).
"""

from __future__ import annotations

import multiprocessing
import os
import threading

from ..evaluate.parent_death import die_with_parent


def exit_with_parent() -> None:
    """In the worker: exit as soon as the parent process ends, even in the middle of a check:
    the kernel's parent-death signal on Linux, and everywhere a daemon thread that waits on
    the parent's sentinel (enough while the check releases the GIL now and then)."""
    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - always set in a spawned worker
        return
    if parent.pid is not None:
        die_with_parent(int(parent.pid))

    def wait() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=wait, name="gradprobe-parent-watch", daemon=True).start()
