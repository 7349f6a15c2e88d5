"""Running one check: in this process, or in a worker process that can be killed.

:class:`IsolatedWorker` keeps one worker process (``spawn``, not a daemon, so a check's
``n_jobs`` can start joblib workers of its own) and runs checks in it one after another: the
check's own ``timeout`` stops it cleanly with a partial report, and a watchdog kills the
worker when no result arrives within ``timeout`` plus a grace period (a loss call stuck in C
code that never returns). A worker that was killed, died or was interrupted is replaced by a
fresh one for the next check; one that reported (passed, failed or crashed with a Python
exception) runs the next check too, saving the ~0.3-1 s a new process spends starting and
importing. Checks in one worker share its imported modules, as checks run in this process
(``isolate = false``) do. :func:`run_isolated` runs one check in a worker of its own;
:func:`run_here` runs it in this process. All return ``(status, message, report)`` and never
raise for a failing, crashing or hanging check.

Ctrl-C: in this process the engine's ``KeyboardInterrupt`` (carrying the partial report) gives
status ``"interrupted"``. With a worker, the parent counts the signal instead of raising,
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
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import CheckAborted, GradCheckError, InvalidInputError
from ..evaluate.pool import shutdown_workers
from ..report.model import Report
from .config import CheckSpec
from .parent_watch import exit_with_parent
from .stopping import held, stop_name
from .tracebacks import crash_text

__all__ = [
    "INTERRUPT_GRACE",
    "STARTUP_LIMIT",
    "CtrlC",
    "IsolatedWorker",
    "pack_report",
    "run_here",
    "run_isolated",
    "unpack_report",
]

ProgressFn = Callable[[int, int], None]

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


def _classify(exc: BaseException) -> tuple[str, str, Report | None]:
    partial = getattr(exc, "partial_report", None)
    if isinstance(exc, CheckAborted):
        return "aborted", f"stopped early ({exc.reason}): {exc}", partial
    if isinstance(exc, InvalidInputError):
        return "error", str(exc), partial
    if isinstance(exc, GradCheckError) and exc.__cause__ is None:
        return "crashed", f"{type(exc).__name__}: {exc}", partial
    return "crashed", crash_text(exc), partial  # the user's frames only


def _interrupted(report: Report | None, detail: str = "") -> tuple[str, str, Report | None]:
    if report is not None and report.complete:
        what = "it had just finished: its report is complete"
    elif report is not None and report.n_finished:
        what = f"the report holds the {report.n_finished} parameter(s) finished before it"
    else:
        what = "no parameter had finished"
    return "interrupted", f"interrupted ({stop_name()}){detail}; {what}.", report


def run_here(spec: CheckSpec, progress: ProgressFn | None) -> tuple[str, str, Report | None]:
    try:
        problem = spec.target.problem(dict(spec.args))
        options = dict(spec.options)
        if progress is not None:
            options["progress"] = progress
        report = problem.run(**options)
    except KeyboardInterrupt as exc:
        return _interrupted(getattr(exc, "partial_report", None))
    except SystemExit as exc:  # the loss cannot end the run: this check crashed
        return _exited(exc)
    except Exception as exc:
        return _classify(exc)
    return ("passed" if report.passed else "failed"), "", report


def _exited(exc: SystemExit) -> tuple[str, str, Report | None]:
    return (
        "crashed",
        f"the check's code called sys.exit({exc.code!r}) (SystemExit): a loss, grad or target "
        "must return or raise, not end the process; this check counts as crashed and the "
        "others run.\n" + crash_text(exc),
        getattr(exc, "partial_report", None),
    )


def _pack_report(report: Report | None) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    if report is None:
        return None
    return report.to_dict(), {n: np.asarray(p.rel_errors) for n, p in report.params.items()}


def _unpack_report(packed: Any) -> Report | None:
    if packed is None:
        return None
    data, rel = packed
    report = Report.from_dict(data)
    params = {
        n: dataclasses.replace(p, rel_errors=rel.get(n, np.empty(0)))
        for n, p in report.params.items()
    }
    return dataclasses.replace(report, params=params)


def _interrupt_once(signum: int, frame: Any) -> None:
    # The first Ctrl-C (or SIGTERM) stops the check; later ones are ignored so it can report.
    _set_stop_signals(signal.SIG_IGN)
    raise KeyboardInterrupt


def _set_stop_signals(handler: Any) -> None:
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _run_one(conn: Any, spec: CheckSpec, want_progress: bool) -> None:
    """In the worker: run one check and send its outcome back.

    The worker idles with Ctrl-C ignored (see :meth:`IsolatedWorker._start`); during the check
    the first one (from the terminal, or forwarded by the parent) interrupts it.
    """
    _set_stop_signals(_interrupt_once)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        t = time.monotonic()
        if t - last[0] > 0.1 or done >= total:
            last[0] = t
            conn.send(("progress", done, total))

    def parameter(name: str, index: int, count: int) -> None:
        conn.send(("parameter", name, index, count))

    def notice(text: str) -> None:
        conn.send(("notice", text))

    progress.parameter = parameter  # type: ignore[attr-defined]
    progress.notice = notice  # type: ignore[attr-defined]

    result = None
    try:
        conn.send(("started",))
        result = run_here(spec, progress if want_progress else None)
    except KeyboardInterrupt:
        pass
    _set_stop_signals(signal.SIG_IGN)
    if result is None:
        result = _interrupted(None)
    status, message, report = result
    conn.send(("result", status, message, _pack_report(report)))


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


@contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Ignore SIGINT (in the main thread) for the block: a worker started inside inherits it.
    A SIGTERM that acts like Ctrl-C (:mod:`.stopping`) and arrives meanwhile acts at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with held():
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


class _CtrlC:
    """Counts SIGINTs in the main thread instead of raising ``KeyboardInterrupt``, so the
    parent can forward the first to its worker and wait for the partial report."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


#: Public names for the runners of checks side by side (suites.pool, suites.cluster).
CtrlC, pack_report, unpack_report = _CtrlC, _pack_report, _unpack_report


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
        with _ctrl_c_ignored():  # it starts, and idles between checks, with Ctrl-C ignored
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

    def close(self) -> None:
        """Stop the worker (nothing is left running)."""
        self._discard()

    def run(
        self, spec: CheckSpec, progress: ProgressFn | None, interrupts: Any = None
    ) -> tuple[str, str, Report | None]:
        """Run one check in the worker (started, or replaced, as needed).

        ``interrupts``: an object whose ``count`` of Ctrl-Cs this run watches instead of its
        own SIGINT handler (several checks run side by side share one, counted by the main
        thread or by a cluster's stop signal)."""
        # Plain dicts: mapping proxies do not pickle.
        spec = dataclasses.replace(spec, args=dict(spec.args), options=dict(spec.options))
        then = "kill"
        watch = _CtrlC() if interrupts is None else contextlib.nullcontext(interrupts)
        with watch as ctrl_c:
            try:
                self._send(spec, progress is not None)
                result, then = _watch(spec, self._proc, self._conn, progress, ctrl_c)
                return result
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


def run_isolated(
    spec: CheckSpec, progress: ProgressFn | None, interrupts: Any = None
) -> tuple[str, str, Report | None]:
    """Run one check in a worker process of its own (stopped when the check ends)."""
    with IsolatedWorker() as worker:
        return worker.run(spec, progress, interrupts)


def _watch(
    spec: CheckSpec, proc: Any, parent: Any, progress: ProgressFn | None, ctrl_c: _CtrlC
) -> tuple[tuple[str, str, Report | None], str]:
    """Wait for the worker's result until the hard limit; forward a Ctrl-C.

    Returns the outcome and what to do with the worker: ``"reuse"`` (it reported and waits for
    the next check), ``"stop"`` (it reported, but was interrupted) or ``"kill"`` (busy, hung or
    gone).
    """
    result = _wait(spec, proc, parent, progress, ctrl_c)
    return result[:3], result[3]


def _wait(
    spec: CheckSpec, proc: Any, parent: Any, progress: ProgressFn | None, ctrl_c: _CtrlC
) -> tuple[str, str, Report | None, str]:
    timeout = spec.timeout
    started_at: float | None = None
    interrupted = False
    limit = time.monotonic() + STARTUP_LIMIT
    while True:
        if ctrl_c.count and not interrupted:
            interrupted = True
            if started_at is None:  # still importing: nothing to report
                return (*_interrupted(None, " while the worker started"), "kill")
            _forward_interrupt(proc)
            limit = time.monotonic() + INTERRUPT_GRACE
        elif ctrl_c.count > 1:  # a second Ctrl-C: stop waiting for the report
            return (*_interrupted(None, " twice; the worker was killed"), "kill")
        wait = max(0.0, min(0.2, limit - time.monotonic()))
        try:
            ready = parent.poll(wait)
            msg = parent.recv() if ready else None
        except (EOFError, OSError):
            proc.join(5)
            if interrupted:
                return (*_interrupted(None, "; the worker ended without reporting"), "kill")
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
                if not interrupted:
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
                report = _unpack_report(msg[3])
                if interrupted or msg[1] == "interrupted":
                    return (*_interrupted(report), "stop")
                return msg[1], msg[2], report, "reuse"
            continue
        if time.monotonic() >= limit:
            if interrupted:
                return (
                    *_interrupted(
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
