"""A worker process that ends when its parent ends, however the parent ends.

:func:`exit_with_parent` (called first thing in a worker) asks the kernel, on Linux, to SIGKILL
the process when its parent ends (``prctl(PR_SET_PDEATHSIG)``: it works even while the worker
is stuck in C code holding the GIL), and everywhere starts a daemon thread that waits on the
parent's sentinel and exits (enough while the worker lets go of the GIL now and then).
:func:`die_with_parent` is the kernel part alone, for any process whose parent's pid is known
(a pool's worker initializer, say).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> bool:
    """On Linux: have the kernel SIGKILL this process when its parent ends, however it ends
    and whatever this process is doing (a loss stuck in C code holding the GIL included).

    The signal fires when the parent *thread* that started this process ends: a worker is
    started, used and stopped by one thread (see
    :class:`gradprobe.suites.isolation.IsolatedWorker`). The parent may have
    died before the call: then the parent pid has changed already and this process exits.
    Returns False where the kernel cannot do it (not Linux, or prctl refused).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return False
    if os.getppid() != parent_pid:  # the parent died before prctl ran
        os._exit(1)
    return True


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
