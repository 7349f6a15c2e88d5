"""Running one check in a worker process that can be killed.

:class:`IsolatedWorker` keeps one worker process (``spawn``, not a daemon, so a check's
``n_jobs`` can start joblib workers of its own) and runs checks in it one after another: the
check's own ``timeout`` stops it cleanly with a partial report, and a watchdog kills the
worker when no result arrives within ``timeout`` plus a grace period (a loss call stuck in C
code that never returns). A worker that was killed, died or was interrupted is replaced by a
fresh one for the next check; one that reported (passed, failed or crashed with a Python
exception) runs the next check too, saving the ~0.3-1 s a new process spends starting and
importing. Checks in one worker share its imported modules, as checks run in this process
(``isolate = false``, :func:`.inprocess.run_here`) do. :func:`run_isolated` runs one check in
a worker of its own. Both return the outcome ``(status, message, report)`` of
:mod:`.inprocess` and never raise for a failing, crashing or hanging check.

Ctrl-C: the parent counts the signal instead of raising (:class:`.stopping.CtrlC`),
forwards it to the worker and waits up to :data:`INTERRUPT_GRACE` seconds for its partial
report; the worker starts with Ctrl-C ignored and then arms a one-shot handler, so a second
signal (the terminal sends one to both processes) cannot interrupt it while it reports.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import time
from typing import Any

from ..evaluate.pool import shutdown_workers
from .config import CheckSpec
from .inprocess import Outcome, ProgressFn, interrupted, pack_report, run_here, unpack_report
from .parent_watch import exit_with_parent
from .stopping import CtrlC, ctrl_c_ignored
from .worker_exit import leave

#: Seconds a worker may take to start (import numpy, numba, gradprobe) before it counts as hung.
STARTUP_LIMIT = 120.0
#: Seconds an interrupted worker has to send back what it finished before it is killed.
INTERRUPT_GRACE = 10.0
#: Seconds an idle worker has to exit when asked before it is killed.
STOP_GRACE = 2.0


def _grace(timeout: float) -> float:
    # The check's own timeout fires between (or, via SIGALRM, inside) Python-level loss calls;
    # the watchdog waits a little longer so that clean stop can deliver its partial report.
    return 5.0 + 0.25 * timeout


def _interrupt_once(signum: int, frame: Any) -> None:
    # The first Ctrl-C (or SIGTERM) stops the check; later ones are ignored so it can report.
    _set_stop_signals(signal.SIG_IGN)
    raise KeyboardInterrupt


def _set_stop_signals(handler: Any) -> None:
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class _PipeProgress:
    """In the worker: the check's progress (a call per block of evaluations, at most every
    0.1 s, and its ``parameter`` and ``notice`` hooks, as a progress bar has them) sent to
    the parent, which draws the bar."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        t = time.monotonic()
        if t - self._last > 0.1 or done >= total:
            self._last = t
            self._conn.send(("progress", done, total))

    def parameter(self, name: str, index: int, count: int) -> None:
        self._conn.send(("parameter", name, index, count))

    def notice(self, text: str) -> None:
        self._conn.send(("notice", text))


def _run_one(conn: Any, spec: CheckSpec, want_progress: bool) -> None:
    """In the worker: run one check and send its outcome back.

    The worker idles with Ctrl-C ignored (see :meth:`IsolatedWorker._start`); during the check
    the first one (from the terminal, or forwarded by the parent) interrupts it.
    """
    _set_stop_signals(_interrupt_once)
    progress = _PipeProgress(conn)
    result = None
    try:
        conn.send(("started",))
        result = run_here(spec, progress if want_progress else None)
    except KeyboardInterrupt:
        pass
    _set_stop_signals(signal.SIG_IGN)
    if result is None:
        result = interrupted(None)
    status, message, report = result
    conn.send(("result", status, message, pack_report(report)))


def _serve(conn: Any) -> None:
    """Entry point of the worker process: run each check the parent sends, until told to stop
    (or until the parent is gone). It idles with SIGTERM ignored, as Ctrl-C: ``timeout(1)``
    sends SIGTERM to the whole process group, and the parent forwards it as an interrupt."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exit_with_parent()
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg[0] != "check":
                leave()  # at once, unless the checks left processes of their own
                return
            try:
                _run_one(conn, msg[1], msg[2])
            except OSError:  # the parent is gone: nobody to tell
                return
            except KeyboardInterrupt:  # a Ctrl-C just as the check ended: the parent sees EOF
                return
    finally:
        # Now: the exit would first wait out their idle timeout, past the parent's grace.
        shutdown_workers()


def _forward_interrupt(proc: Any) -> None:
    try:
        os.kill(proc.pid, signal.SIGINT)
    except (OSError, AttributeError):  # gone already, or no such signal here
        pass


def _kill(proc: Any) -> None:
    """Kill the worker and what it started (joblib workers of a check with ``n_jobs``; found
    with psutil when installed, else left to their own idle timeout)."""
    children: list[Any] = []
    try:
        import psutil

        children = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # no psutil, or the worker is gone already
        pass
    proc.kill()
    proc.join(5)
    for child in children:
        try:
            child.kill()
        except Exception:  # gone already
            pass


class IsolatedWorker:
    """One worker process that runs isolated checks one after another (see the module).

    Use as a context manager (or call :meth:`close`): the worker is started at the first
    :meth:`run` and stopped at exit; a worker that had to be killed is replaced at the next
    :meth:`run`. ``pids`` lists the worker processes started, in order. On Linux the worker
    is killed by the kernel when the thread that started it ends (``PR_SET_PDEATHSIG``), so
    use one from the thread that created it; elsewhere it exits when the parent process ends
    (a thread watching it), once its check lets go of the GIL.
    """

    def __init__(self) -> None:
        self._proc: Any = None
        self._conn: Any = None
        self.pids: list[int] = []

    def __enter__(self) -> IsolatedWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        # Not a daemon: a daemon process may not start processes, and joblib would then run a
        # check's n_jobs > 1 in one job. close() (at the latest at exit) stops it instead.
        proc = ctx.Process(target=_serve, args=(child,), daemon=False, name="gradprobe-check")
        with ctrl_c_ignored():  # it starts, and idles between checks, with Ctrl-C ignored
            proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self.pids.append(int(proc.pid))
        atexit.register(self.close)

    def _discard(self, graceful: bool = True) -> None:
        """Stop the worker: ask an idle one to exit (``graceful``), kill a busy one, or one
        that does not exit."""
        proc, conn = self._proc, self._conn
        if proc is None:
            return
        self._proc = self._conn = None
        atexit.unregister(self.close)
        try:
            if graceful and proc.is_alive():
                try:
                    conn.send(("stop",))
                    proc.join(STOP_GRACE)
                except OSError:
                    pass
            if proc.is_alive():
                _kill(proc)
        finally:
            conn.close()

    @property
    def started(self) -> bool:
        """Whether the worker process runs (started, and not stopped or killed since)."""
        return self._proc is not None

    def close(self) -> None:
        """Stop the worker (nothing is left running)."""
        self._discard()

    def run(self, spec: CheckSpec, progress: ProgressFn | None, interrupts: Any = None) -> Outcome:
        """Run one check in the worker (started, or replaced, as needed).

        ``interrupts``: an object whose ``count`` of Ctrl-Cs this run watches instead of its
        own SIGINT handler (several checks run side by side share one, counted by the main
        thread or by a cluster's stop signal)."""
        # Plain dicts: mapping proxies do not pickle.
        spec = dataclasses.replace(spec, args=dict(spec.args), options=dict(spec.options))
        then = "kill"
        watch = CtrlC() if interrupts is None else contextlib.nullcontext(interrupts)
        with watch as ctrl_c:
            try:
                self._send(spec, progress is not None)
                status, message, report, then = _watch(
                    spec, self._proc, self._conn, progress, ctrl_c
                )
                return status, message, report
            finally:
                if then != "reuse":
                    self._discard(graceful=then == "stop")

    def _send(self, spec: CheckSpec, want_progress: bool) -> None:
        message = ("check", spec, want_progress)
        if self._proc is not None:
            try:
                self._conn.send(message)
                return
            except OSError:  # the idle worker died (killed from outside): start another
                self._discard()
        self._start()
        self._conn.send(message)


def run_isolated(spec: CheckSpec, progress: ProgressFn | None, interrupts: Any = None) -> Outcome:
    """Run one check in a worker process of its own (stopped when the check ends)."""
    with IsolatedWorker() as worker:
        return worker.run(spec, progress, interrupts)


def _watch(
    spec: CheckSpec, proc: Any, parent: Any, progress: ProgressFn | None, ctrl_c: CtrlC
) -> tuple[str, str, Any, str]:
    """Wait for the worker's outcome until the hard limit; forward a Ctrl-C.

    Returns the outcome and what to do with the worker: ``"reuse"`` (it reported and waits for
    the next check), ``"stop"`` (it reported, but was interrupted) or ``"kill"`` (busy, hung or
    gone).
    """
    timeout = spec.timeout
    started_at: float | None = None
    forwarded = False
    limit = time.monotonic() + STARTUP_LIMIT
    while True:
        if ctrl_c.count and not forwarded:
            forwarded = True
            if started_at is None:  # still importing: nothing to report
                return (*interrupted(None, " while the worker started"), "kill")
            _forward_interrupt(proc)
            limit = time.monotonic() + INTERRUPT_GRACE
        elif ctrl_c.count > 1:  # a second Ctrl-C: stop waiting for the report
            return (*interrupted(None, " twice; the worker was killed"), "kill")
        wait = max(0.0, min(0.2, limit - time.monotonic()))
        try:
            ready = parent.poll(wait)
            msg = parent.recv() if ready else None
        except (EOFError, OSError):
            proc.join(5)
            if forwarded:
                return (*interrupted(None, "; the worker ended without reporting"), "kill")
            return (
                "crashed",
                f"the worker process died (exit code {proc.exitcode}) before reporting; "
                "run with isolate = false to see the error in this process.",
                None,
                "kill",
            )
        if msg is not None:
            if msg[0] == "started":
                started_at = time.monotonic()
                if not forwarded:
                    limit = started_at + timeout + _grace(timeout)
            elif msg[0] == "progress":
                if progress is not None:
                    progress(int(msg[1]), int(msg[2]))
            elif msg[0] == "parameter":
                announce = getattr(progress, "parameter", None)
                if callable(announce):
                    announce(str(msg[1]), int(msg[2]), int(msg[3]))
            elif msg[0] == "notice":  # printed here, where the bar is drawn
                notice = getattr(progress, "notice", None)
                if callable(notice):
                    notice(str(msg[1]))
            elif msg[0] == "result":
                report = unpack_report(msg[3])
                if forwarded or msg[1] == "interrupted":
                    return (*interrupted(report), "stop")
                return msg[1], msg[2], report, "reuse"
            continue
        if time.monotonic() >= limit:
            if forwarded:
                return (
                    *interrupted(
                        None,
                        f"; the worker did not report within {INTERRUPT_GRACE:g} s and was killed",
                    ),
                    "kill",
                )
            what = (
                f"no result {timeout:g} s (+{_grace(timeout):g} s grace) after the check "
                "started: a loss or grad call did not return"
                if started_at is not None
                else f"the worker did not start within {STARTUP_LIMIT:g} s"
            )
            return (
                "aborted",
                f"stopped early (timeout): {what}; the worker process was killed. Make "
                "each loss call return in time or raise `timeout`.",
                None,
                "kill",
            )
