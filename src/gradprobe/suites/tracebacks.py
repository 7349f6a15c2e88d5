"""The user's part of a traceback: what a crash of a loss, grad or target function shows.

A crash is reported with the frames of the user's code only: gradprobe's own frames and those
of the machinery that carried the call (joblib, loky, multiprocessing, concurrent.futures,
threading) are left out, as pytest hides its own. A loss that raised in a worker process comes
back with its remote traceback as text; its user frames are kept the same way.
"""

from __future__ import annotations

import os
import re
import traceback
from pathlib import Path

_GRADPROBE = str(Path(__file__).resolve().parents[1])
_STDLIB = os.path.dirname(os.__file__)
#: Machinery between gradprobe and the user's code, by top-level folder name.
_CARRIERS = {"joblib", "loky", "multiprocessing", "concurrent", "distributed", "dask"}
_CARRIER_FILES = {"threading.py", "runpy.py", "signal.py", "contextlib.py"}
#: One frame of a traceback written as text: its "File" line and the source line under it.
_TEXT_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+, in .*\n(?:    .*\n)?', re.M)


def is_internal_file(filename: str) -> bool:
    """Whether a frame's file is gradprobe's or the machinery's (not the user's code)."""
    if filename.startswith("<frozen importlib"):  # the import system, importing the target
        return True
    try:
        path = str(Path(filename).resolve())
    except (OSError, RuntimeError, ValueError):
        path = filename
    if path.startswith(_GRADPROBE + os.sep) or path == _GRADPROBE:
        return True
    parts = Path(path).parts
    if any(part in _CARRIERS for part in parts):
        return True
    return path.startswith(_STDLIB + os.sep) and Path(path).name in _CARRIER_FILES


def _user_frames(exc: BaseException) -> list[str]:
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not is_internal_file(f.filename)
    ]
    return traceback.format_list(frames)


def _remote_frames(exc: BaseException) -> list[str]:
    """User frames from a traceback carried as text (joblib's ``_RemoteTraceback``)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = getattr(cause, "tb", None)
        if isinstance(text, str):
            return [
                m.group(0)
                for m in _TEXT_FRAME.finditer(text)
                if not is_internal_file(m.group("file"))
            ]
        cause = cause.__cause__
    return []


def crash_text(exc: BaseException) -> str:
    """The user's frames of a crash, most recent last, then ``Type: message``.

    For a gradprobe error raised ``from`` the user's exception (``LossEvaluationError`` from a
    ``ZeroDivisionError`` in the loss) the frames and the first message are the user's
    exception's, and gradprobe's message (which parameter and entry) comes last, as Python
    prints a chain. Without any user frame, just ``Type: message``.
    """
    head = f"{type(exc).__name__}: {exc}"
    origin = exc.__cause__ if exc.__cause__ is not None else exc
    frames = _user_frames(origin) or _remote_frames(origin)
    if not frames:
        return head
    lines = ["Traceback (your code only, most recent call last):\n", *frames]
    if origin is not exc:
        lines += [*traceback.format_exception_only(type(origin), origin), "\n"]
    return "".join(lines) + head
