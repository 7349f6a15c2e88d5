"""A hard time limit for checks whose single loss call may not return in time.

The evaluators check the deadline between loss evaluations; a loss that takes 10 s per call
would still overrun a 1 s ``timeout`` by 10 s. In the main thread of a POSIX process, this
module arms ``SIGALRM`` so the overrunning call is interrupted with :class:`CheckAborted` (the
evaluators' ``finally`` blocks restore their working copies as for any exception). Elsewhere
(other threads, Windows) it does nothing and the between-evaluation check remains.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import CheckAborted


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def hard_deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CheckAborted` (reason ``"timeout"``) if the block runs past ``seconds``.

    Signal handlers only run between Python bytecodes: a loss stuck inside one long C call
    (a huge BLAS product) is interrupted when that call returns.
    """
    if seconds is None or not _can_use_alarm():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise CheckAborted(
            f"time limit of {seconds:g} s reached during a loss evaluation; raise `timeout` or "
            "check fewer entries.",
            reason="timeout",
        )

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, 0.0)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_timer[0] > 0:  # re-arm an alarm someone else had set (approximately)
            signal.setitimer(signal.ITIMER_REAL, *previous_timer)
