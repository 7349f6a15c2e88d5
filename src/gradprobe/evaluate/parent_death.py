"""The kernel's side of "a worker never outlives its parent": Linux's parent-death signal.

:func:`die_with_parent` asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) to kill the
calling process when its parent ends, however it ends and whatever the process is doing (a loss
stuck in C code that holds the GIL included), then re-checks that the parent has not died
before the call. The signal fires when the parent *thread* that started the process ends, so a
process started by a thread that may end first arms it only once that thread is gone
(:func:`thread_alive`): the process is then the child of a thread that lasts (the kernel hands
it to the first live thread of the parent, its main thread).
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["die_with_parent", "thread_alive"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> bool:
    """On Linux: have the kernel SIGKILL this process when its parent ends (see the module).

    The parent may have died before the call: then this process's parent pid is no longer
    ``parent_pid`` and it exits at once. Returns False where the kernel cannot do it (not
    Linux, or prctl refused).
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


def thread_alive(pid: int, native_id: int) -> bool:
    """Whether thread ``native_id`` of process ``pid`` still runs (Linux's ``/proc``; True
    where that cannot be told). The kernel has re-parented the thread's children before its
    entry goes."""
    if not os.path.isdir("/proc/self/task"):
        return True
    return os.path.exists(f"/proc/{pid}/task/{native_id}")
