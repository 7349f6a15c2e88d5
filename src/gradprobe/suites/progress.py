"""A progress bar for long checks, drawn by rich (the optional ``progress`` extra).

Shown only when stdout is a terminal, the ``CI`` environment variable is unset and the user did
not ask for ``--quiet``; without rich installed there is simply no bar. ``no_color=True`` (the
command line passes it when ``NO_COLOR`` is set) draws it without colour.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any, TextIO


def progress_wanted(quiet: bool = False, stream: TextIO | None = None) -> bool:
    """Whether a bar should be drawn: a terminal, not CI, not quiet, rich importable."""
    stream = sys.stdout if stream is None else stream
    if quiet or os.environ.get("CI"):
        return False
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True


class ProgressDisplay:
    """One bar per check: ``with ProgressDisplay(enabled) as bar: bar.start(name); ...``.

    ``bar.update(done, total)`` is the ``progress=`` callback of :func:`gradprobe.check`.
    When disabled every method does nothing.
    """

    def __init__(self, enabled: bool, *, no_color: bool = False) -> None:
        self.enabled = enabled
        self.no_color = no_color
        self._progress: Any = None
        self._task: Any = None
        self._description = ""

    @property
    def active(self) -> bool:
        """A bar is being drawn (print through :meth:`print` so it stays below the text)."""
        return self._progress is not None

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss evaluations"),
                TimeElapsedColumn(),
                transient=True,
                console=Console(no_color=self.no_color or None),
            )
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def start(self, description: str) -> None:
        """Begin a new bar (the previous one is removed)."""
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._description = description
        self._task = self._progress.add_task(description, total=None)

    def update(self, done: int, total: int) -> None:
        """Set the bar to ``done`` of ``total`` loss evaluations."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done, total=total)

    __call__ = update

    def parameter(self, name: str, index: int, count: int) -> None:
        """Show which parameter is being checked."""
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, description=f"{self._description} · {name} ({index + 1}/{count})"
            )

    def notice(self, text: str) -> None:
        """A notice of the check (on stderr, when a terminal), on a line above the bar."""
        if not _is_terminal(sys.stderr):
            return
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr)

    def print(self, text: str) -> None:
        """Print above the bar (or plainly when there is none)."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
