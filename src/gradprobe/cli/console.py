"""What the command line prints, and how loudly: ``--quiet``, ``--verbose``, colour, pipes.

- ``--quiet``: the summary only, no progress bar; ``--verbose``: also progress lines (on
  stderr, every couple of seconds, also without a terminal), each parameter's settings and the
  timings after each check.
- Colour (the status words) and the rich progress bar only on a terminal; ``NO_COLOR`` (any
  non-empty value, https://no-color.org) turns colour off everywhere, the bar's included.
- A reader that goes away (``gradprobe demo | head``) does not stop the run or raise: the rest
  of stdout is discarded, outputs (``--json``...) are still written and the exit code is the
  run's own.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from ..suites.progress import ProgressDisplay, progress_wanted

_STYLES = {"red": "31", "green": "32", "yellow": "33", "bold": "1"}


def no_color() -> bool:
    """``NO_COLOR`` is set to a non-empty value."""
    return bool(os.environ.get("NO_COLOR"))


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """Progress as plain lines on stderr for ``--verbose`` (logs and CI, where no bar is
    drawn): at most one line every ``every`` seconds, and one when a check ends."""

    def __init__(self, stream: TextIO, every: float = 2.0) -> None:
        self.stream, self.every = stream, every
        self._label, self._start, self._last, self._reached = "", 0.0, 0.0, False

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def start(self, description: str) -> None:
        self._label, self._start = description, time.monotonic()
        self._last, self._reached = self._start, False

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        # Rate-limited, plus one line when the planned work is done (work past the plan,
        # such as localizing a failure, is rate-limited again).
        reached = done >= total and not self._reached
        if now - self._last < self.every and not reached:
            return
        self._last, self._reached = now, self._reached or done >= total
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        self._print(
            f"  {self._label}: {done:,} / {total:,} loss evaluations{pct}, "
            f"{now - self._start:.1f} s"
        )

    __call__ = update

    def parameter(self, name: str, index: int, count: int) -> None:
        """One line as each parameter's check begins."""
        elapsed = time.monotonic() - self._start
        self._print(f"  {self._label}: parameter {name} ({index + 1}/{count}), {elapsed:.1f} s")

    def notice(self, text: str) -> None:
        """A notice of the check (a long check's predicted time), as a line of its own."""
        self._print(text)

    def _print(self, line: str) -> None:
        try:
            print(line, file=self.stream, flush=True)
        except (OSError, ValueError):
            pass


class Console:
    """Prints for one command: stdout for results, stderr for notices and errors.

    Parameters
    ----------
    quiet, verbose : bool
        ``--quiet`` (summary only) and ``--verbose``.
    stdout, stderr : streams, optional
        Default ``sys.stdout`` and ``sys.stderr`` (looked up when printing).
    """

    def __init__(
        self,
        *,
        quiet: bool = False,
        verbose: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.quiet, self.verbose = quiet, verbose
        self._stdout, self._stderr = stdout, stderr
        self.pipe_closed = False
        self.color = (
            _is_terminal(self.stdout) and not no_color() and os.environ.get("TERM") != "dumb"
        )

    @property
    def stdout(self) -> TextIO:
        return self._stdout if self._stdout is not None else sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self._stderr if self._stderr is not None else sys.stderr

    # -- printing ---------------------------------------------------------------------------
    def out(self, text: str = "") -> None:
        """Print a result line (discarded once the reader has gone away)."""
        if self.pipe_closed:
            return
        try:
            print(text, file=self.stdout, flush=True)
        except BrokenPipeError:
            self.reader_gone()

    def detail(self, text: str = "") -> None:
        """Print unless ``--quiet``."""
        if not self.quiet:
            self.out(text)

    def err(self, text: str) -> None:
        """Print a notice or an error on stderr."""
        try:
            print(text, file=self.stderr, flush=True)
        except (BrokenPipeError, ValueError):
            pass

    def paint(self, text: str, style: str) -> str:
        """``text`` in a colour (``"red"``, ``"green"``, ``"yellow"``, ``"bold"``) when colour
        is on; as is otherwise."""
        if not self.color:
            return text
        return f"\x1b[{_STYLES[style]}m{text}\x1b[0m"

    def status(self, status: str) -> str:
        """A check's status word, upper-case unless passed, coloured by its gravity."""
        word = status if status == "passed" else status.upper()
        style = {"passed": "green", "failed": "red"}.get(status, "yellow")
        return self.paint(word, style)

    def reader_gone(self) -> None:
        # `gradprobe demo | head`: the reader closed the pipe. Send the rest of stdout to
        # /dev/null so neither later prints nor the interpreter's final flush raise.
        self.pipe_closed = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    # -- progress ---------------------------------------------------------------------------
    def progress(self) -> Any:
        """The progress display for a run: the rich bar on a terminal (not quiet, not CI),
        plain lines on stderr with ``--verbose`` elsewhere, else nothing."""
        if self.pipe_closed:
            return ProgressDisplay(False)
        if progress_wanted(self.quiet, self.stdout):
            return ProgressDisplay(True, no_color=no_color())
        if self.verbose:
            return LineProgress(self.stderr)
        return ProgressDisplay(False)
