"""How an idle isolated worker ends when its parent asks it to stop: at once.

A worker that ran torch or jax checks takes seconds to tear its interpreter down (the
frameworks' exit hooks, module teardown), and a suite run waits for its workers to end:
:func:`leave` stops gradprobe's own process workers, runs the ``atexit`` functions (joblib
removes its memory-mapped folders there) and ends the process with ``os._exit``, skipping the
slow part of the teardown (hundreds of ms to seconds: freeing the frameworks' modules). When the checks left child processes of their own (a ``multiprocessing`` child, or
any child psutil sees but a resource tracker, which ends by itself once its users have), the
normal exit runs, which waits for them or stops them.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import sys


def _has_children() -> bool:
    if multiprocessing.active_children():
        return True
    try:
        import psutil
    except ImportError:
        return False
    try:
        return any(not _tracker(child) for child in psutil.Process().children())
    except psutil.Error:  # pragma: no cover - cannot read /proc: take the slow path
        return True


def _tracker(child: object) -> bool:
    # multiprocessing's and loky's resource trackers end by themselves once their users have.
    try:
        return any("resource_tracker" in part for part in child.cmdline())  # type: ignore[attr-defined]
    except Exception:  # gone already
        return True


def leave() -> None:
    """In an idle worker told to stop: stop gradprobe's process workers, run the ``atexit``
    functions, then end the process now (returns, for the normal exit, only when other child
    processes remain)."""
    from ..evaluate.pool import shutdown_workers

    shutdown_workers()
    run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
    if _has_children() or run_exit_functions is None:
        return
    run_exit_functions()  # what atexit promises (joblib removes its memory-mapped folders)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)
