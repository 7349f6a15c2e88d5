"""The files a command writes (``--json``, ``--junit``, ``--plot``): checked before any work,
written after it without losing what was printed.

:func:`check_outputs` runs before the first check: a missing folder, a folder given as the
file, a path that cannot be written, two flags writing the same file, or ``--plot`` without
matplotlib stop the command with exit code 2, naming the flag and the path. :func:`write_outputs`
writes each file at the end, whole or not at all (a temporary file moved into place:
:mod:`gradprobe.report.files`); one that still fails (a full disk) is reported on stderr, the
previous file at that path is left as it was, the other files are still written, and the exit
code becomes at least 2 (the one the summary prints).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError
from .console import Console

FLAGS = ("json", "junit", "plot")


@dataclass(frozen=True)
class Output:
    """One file to write: the flag that asked for it and the path as given."""

    flag: str
    path: str


def outputs_of(args: argparse.Namespace) -> list[Output]:
    """The output files the command line asks for, in flag order."""
    return [
        Output(f"--{name}", getattr(args, name))
        for name in FLAGS
        if getattr(args, name, None) is not None
    ]


def _problem(path: Path) -> str | None:
    """Why ``path`` cannot be written, or None (probed by opening it for appending; a file
    created by the probe is removed again)."""
    if str(path) == "":
        return "an empty path; give a file name"
    if path.is_dir():
        return "is a folder; give a file name inside it"
    folder = path.parent
    if not folder.exists():
        return f"folder {str(folder)!r} does not exist; create it first (mkdir -p {folder})"
    if not folder.is_dir():
        return f"{str(folder)!r} is not a folder"
    existed = path.exists()
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        return f"cannot be written ({exc.strerror or exc}); choose a writable path"
    if not existed:
        try:
            os.remove(path)
        except OSError:
            pass
    return None


def check_outputs(outputs: Sequence[Output]) -> None:
    """Raise :class:`InvalidInputError` (exit code 2) for an output that cannot be written."""
    seen: dict[str, str] = {}
    for out in outputs:
        key = os.path.realpath(out.path) if out.path else out.path
        if key in seen:
            raise InvalidInputError(
                f"{seen[key]} and {out.flag} both write {out.path!r}; give each its own file."
            )
        seen[key] = out.flag
        problem = _problem(Path(out.path))
        if problem is not None:
            raise InvalidInputError(f"{out.flag} {out.path}: {problem}.")
    if any(out.flag == "--plot" for out in outputs):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidInputError(
                '--plot needs matplotlib: pip install "gradprobe[plot]" (or leave out --plot).'
            ) from None


def write_outputs(console: Console, writers: Sequence[tuple[Output, Callable[[], None]]]) -> bool:
    """Call each writer; report a failure on stderr and go on with the others.

    Returns True when every file was written.
    """
    ok = True
    for out, write in writers:
        try:
            write()
        except (OSError, ValueError, ImportError, InvalidInputError) as exc:
            ok = False
            why = exc
            if isinstance(exc, OSError) and exc.strerror:  # not the temporary file's name
                why = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else exc.strerror
            console.err(
                f"gradprobe: error: {out.flag} {out.path}: could not be written: {why}. What "
                "was printed above is unaffected, and a file that was there before is left "
                "as it was; rerun with a writable path."
            )
    return ok
