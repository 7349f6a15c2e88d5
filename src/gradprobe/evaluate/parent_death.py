"""The kernel's side of "a worker never outlives its parent": Linux's parent-death signal.

:func:`die_with_parent` asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) to kill the
calling process when its parent ends, however it ends and whatever the process is doing (a loss
stuck in C code that holds the GIL included), then re-checks that the parent has not died
before the call. The signal fires when the parent *thread* that started the process ends, so a
process started by a thread that may end first arms it only once that thread is gone
(:func:`thread_alive`): the process is then the child of a thread that lasts (the kernel hands
it to the first live thread of the parent, its main thread). Until then :func:`start_guard`
forks a small guard process that waits on the parent (a pidfd) and kills this one when the
parent ends: its own interpreter, so it acts while this one is stuck holding the GIL.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys

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


def start_guard(parent_pid: int) -> int | None:
    """Fork a guard that SIGKILLs this process when process ``parent_pid`` (this one's parent)
    ends, and ends with this process (its parent-death signal); returns its pid, or None where
    it cannot (not Linux, no pidfd). Call it while this process has no other thread (a fork
    copies only the calling one), and stop the guard with :func:`stop_guard`."""
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        return None
    try:
        pidfd = os.pidfd_open(parent_pid)
    except OSError:
        return None
    if os.getppid() != parent_pid:  # the parent died before the pidfd was opened
        os._exit(1)
    me = os.getpid()
    guard = os.fork()
    if guard == 0:  # pragma: no cover - the guard process (coverage does not follow it)
        try:
            die_with_parent(me)
            # Hold nothing of the worker's open: its pipes, the run's stdout and stderr.
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, pidfd)
            os.closerange(pidfd + 1, 1 << 16)
            select.select([pidfd], [], [])  # readable once the parent has ended
            os.kill(me, signal.SIGKILL)
        finally:
            os._exit(0)
    os.close(pidfd)
    return guard


def stop_guard(guard: int) -> None:
    """Stop a guard from :func:`start_guard` and reap it."""
    with contextlib.suppress(OSError):
        os.kill(guard, signal.SIGKILL)
        os.waitpid(guard, 0)
