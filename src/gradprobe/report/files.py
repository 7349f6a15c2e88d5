"""Files written whole or not at all: each output (``--json``, ``--junit``, ``--plot``, a report's
JSON or PNG) goes to a temporary file in the same folder, is flushed to disk and moved over
the target with :func:`os.replace`. A reader sees the previous file or the new one, never a
torn one; a write that fails (a full disk, a killed process) leaves the previous file as it
was and no temporary file behind (a SIGKILL mid-write can leave one ``.NAME.*.tmp``, never a
half-written ``NAME``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an error the
    temporary file (written by the block) replaces ``path``; on an error it is removed.

    A new file gets the permissions a plain ``open`` would give it (the umask), an existing
    one keeps its own.
    """
    target = Path(path)
    folder = target.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, _mode_for(target))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all; return ``path``."""
    with replacing(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    return Path(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mode_for(target: Path) -> int:
    try:
        return os.stat(target).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
