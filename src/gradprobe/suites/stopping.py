"""Stop signals: SIGTERM (what CI runners, ``timeout(1)`` and ``kill`` send) handled like Ctrl-C.

While :func:`terminate_like_interrupt` is active (the command line's whole run), SIGTERM calls
whatever SIGINT handler is in place at that moment: Python's own (a ``KeyboardInterrupt``, so
the engine keeps the partial report and stops its workers) or the isolated runner's counter (it
forwards the interrupt to the worker and waits for its report); even where Ctrl-C is ignored
(a background job of a script), SIGTERM still stops the run. So a
terminated run, like an interrupted one, prints and writes what finished; :func:`stop_name`
says which signal it was and :func:`stop_exit_code` the exit code: 130 for Ctrl-C (128 +
SIGINT) and 143 for SIGTERM (128 + SIGTERM), as shells report them. Once the run's outputs are
written (:func:`results_written`), a Ctrl-C or SIGTERM changes nothing: the exit code they
record is the process's.

For the isolated runner (:mod:`.isolation`): :class:`CtrlC` counts Ctrl-Cs instead of raising,
so the parent can forward the first to its worker and wait for the partial report, and
:func:`ctrl_c_ignored` starts a worker with Ctrl-C ignored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .outcome import EXIT_INTERRUPT

EXIT_TERMINATED = 128 + int(signal.SIGTERM)  # 143

_received: list[str] = []
_pending: list[str] = []
_held: list[bool] = []
_active: list[bool] = []


def _on_sigterm(signum: int, frame: Any) -> None:
    if "SIGTERM" not in _received:
        _received.append("SIGTERM")
    if _held:  # a worker process is starting: acted on when it has started
        _pending.append("SIGTERM")
        return
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIG_DFL, or SIG_IGN inherited (a background job of a script): stop all the same
        raise KeyboardInterrupt


@contextmanager
def held() -> Iterator[None]:
    """Within the block a SIGTERM waits; it acts when the block ends (where a worker process
    starts with Ctrl-C ignored, so that it inherits that)."""
    _held.append(True)
    try:
        yield
    finally:
        _held.pop()
        if not _held and _pending:
            _pending.clear()
            _on_sigterm(int(signal.SIGTERM), None)


@contextmanager
def terminate_like_interrupt(until_exit: bool = False) -> Iterator[None]:
    """Within the block (in the main thread), SIGTERM acts as Ctrl-C; it forgets a SIGTERM
    seen before it starts. ``until_exit`` (the command line run as the program): once
    :func:`results_written`, Ctrl-C and SIGTERM stay ignored after the block, through the
    interpreter's exit that follows."""
    _received.clear()
    _pending.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_int = signal.getsignal(signal.SIGINT)
    _active.append(False)
    try:
        yield
    finally:
        written = _active.pop()
        if not (written and until_exit):
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)


def results_written() -> None:
    """The run's outputs are written and its exit code is decided: until
    :func:`terminate_like_interrupt` ends (the rest of the run: the verdict line, stopping the
    workers; with ``until_exit``, until the process exits), Ctrl-C and SIGTERM are ignored, so
    they cannot turn a finished run into a traceback or an exit code its files do not
    record."""
    if _active and threading.current_thread() is threading.main_thread():
        _active[-1] = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_name() -> str:
    """``"SIGTERM"`` once one arrived within :func:`terminate_like_interrupt`, else
    ``"Ctrl-C"``: the word the notices use for an interrupt."""
    return "SIGTERM" if _received else "Ctrl-C"


def stop_exit_code() -> int:
    """143 once a SIGTERM arrived, else 130."""
    return EXIT_TERMINATED if _received else EXIT_INTERRUPT


@contextmanager
def ctrl_c_ignored() -> Iterator[None]:
    """Ignore SIGINT (in the main thread) for the block: a worker started inside inherits it.
    A SIGTERM that acts like Ctrl-C and arrives meanwhile acts at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with held():
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


class CtrlC:
    """Counts SIGINTs in the main thread instead of raising ``KeyboardInterrupt``, so the
    parent of an isolated worker can forward the first to it and wait for the partial report."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: Any = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
