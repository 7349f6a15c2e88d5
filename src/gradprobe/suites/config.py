"""Suites of named checks, read from ``gradprobe.toml`` or ``[tool.gradprobe]`` in pyproject.toml.

The file's shape::

    [run]                 # optional: how the checks are spread (flags override it)
    jobs = 2              # checks at once on this machine (gradprobe run --jobs)
    [defaults]            # applies to every check unless overridden
    seed = 0
    samples = 64
    timeout = 120         # seconds; the check stops with a partial report
    [checks.mlp]          # one table per named check
    target = "models.py:make_mlp"      # path relative to the suite file, or pkg.mod:func
    [checks.mlp_bug]
    target = "models.py:make_mlp"
    args = { bug = "sign" }            # keyword arguments of the target function
    budget = 5000                      # loss evaluations

Every option of :func:`gradprobe.check` but the ``progress`` callback may appear in
``[defaults]`` or a check's table (:data:`gradprobe.options.SUITE_KEYS`), its value checked by
the same validator as ``check``'s. A check also takes ``target`` (required), ``args`` and
``isolate`` (run in a worker process, default true, so a loss call that never returns can be
killed; a check without ``timeout`` is killed after ``DEFAULT_TIMEOUT`` = 1 hour). A mistake
raises :class:`gradprobe.errors.SuiteConfigError` naming the file, the line and key, and the fix.
Choosing checks by name (``-k``, ``--check``) is :mod:`gradprobe.suites.select`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import InvalidInputError, SuiteConfigError
from ..options import OPTIONS, SUITE_KEYS, option_problem, options_conflict
from .targets import Target, parse_target

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


SUITE_FILE = "gradprobe.toml"
#: Keys of a check's table that are not options of gradprobe.check.
CHECK_KEYS = ("target", "args", "isolate")
DEFAULT_KEYS = ("isolate",)
#: Seconds after which an isolated check without its own ``timeout`` is killed (exit code 3):
#: a loss call that never returns must not hang a nightly job.
DEFAULT_TIMEOUT = 3600.0


@dataclass(frozen=True)
class CheckSpec:
    """One named check of a suite.

    Attributes
    ----------
    name : str
        The table name (``[checks.NAME]``).
    target : Target
        The function returning the :class:`gradprobe.Problem`.
    args : mapping
        Keyword arguments for the target function.
    options : mapping
        Options of :func:`gradprobe.check` (defaults merged with the check's own), applied over
        the Problem's options.
    isolate : bool
        Run in a worker process that can be killed when a loss call never returns.
    """

    name: str
    target: Target
    args: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    isolate: bool = True

    @property
    def timeout(self) -> float:
        """The check's ``timeout``, or :data:`DEFAULT_TIMEOUT` so no nightly job hangs."""
        t = self.options.get("timeout")
        return DEFAULT_TIMEOUT if t is None else float(t)


@dataclass(frozen=True)
class Suite:
    """A suite file's checks, in file order (``path`` absolute; ``given`` as the user gave it,
    which outputs record so that they do not name the machine's folders)."""

    path: str
    checks: tuple[CheckSpec, ...]
    given: str = ""
    #: The ``[run]`` table: ``jobs`` (checks at once) and ``scheduler`` (a Dask address).
    run: Mapping[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks)


# -- locating keys in the text ---------------------------------------------------------------
def _header_re(table: str) -> re.Pattern[str]:
    parts = [re.escape(p) for p in table.split(".")]
    dotted = r"\s*\.\s*".join(rf"(?:{p}|\"{p}\"|'{p}')" for p in parts)
    return re.compile(rf"^\s*\[\s*{dotted}\s*\]")


def _line_of(text: str, table: str, key: str | None = None) -> int | None:
    """1-based line of ``key`` inside ``[table]`` (or of the header), found by scanning."""
    lines = text.splitlines()
    header = _header_re(table)
    key_re = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=") if key else None
    for i, line in enumerate(lines):
        if header.match(line):
            if key_re is None:
                return i + 1
            for j in range(i + 1, len(lines)):
                if re.match(r"^\s*\[", lines[j]):
                    break
                if key_re.match(lines[j]):
                    return j + 1
            return i + 1
    # Inline tables or dotted keys: the first line that mentions the key.
    needle = key or table.rsplit(".", 1)[-1]
    for i, line in enumerate(lines):
        if re.search(rf"\b{re.escape(needle)}\b", line):
            return i + 1
    return None


class _Source:
    """The suite text plus where its tables live (``[x]`` or ``[tool.gradprobe.x]``)."""

    def __init__(self, path: str, text: str, prefix: str) -> None:
        self.path, self.text, self.prefix = path, text, prefix

    def error(self, table: str, key: str | None, problem: str, fix: str) -> SuiteConfigError:
        full = f"{self.prefix}{table}"
        line = _line_of(self.text, full, key)
        where = f"{self.path}:{line}" if line else str(self.path)
        what = f"[{full}]" + (f" key {key!r}" if key else "")
        return SuiteConfigError(f"{where}: {what}: {problem}. Fix: {fix}")


# -- values ---------------------------------------------------------------------------------
def _value_problem(key: str, v: Any) -> tuple[str, str] | None:
    """(problem, fix) when a key has a value of the wrong kind, else None. Options of
    gradprobe.check are judged by its own validator (gradprobe.options)."""
    if key in OPTIONS:
        problem = option_problem(key, v)
        return None if problem is None else (problem, f"write e.g. {OPTIONS[key].toml_example}")
    if key == "isolate" and not isinstance(v, bool):
        return f"expected true or false, found {v!r}", "write isolate = true"
    if key == "args" and not isinstance(v, dict):
        return (
            f"expected a table of keyword arguments, found {v!r}",
            'write e.g. args = { bug = "sign" }',
        )
    return None


def _check_table(
    src: _Source, table: str, values: Any, allowed_extra: tuple[str, ...]
) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise src.error(
            table, None, f"expected a table, found {values!r}", f"write it as [{table}]"
        )
    allowed = (*allowed_extra, *SUITE_KEYS)
    for key, v in values.items():
        if key in OPTIONS and key not in allowed:
            raise src.error(
                table,
                key,
                f"{key} is an option of gradprobe.check that a suite file cannot set (a Python "
                "callable)",
                "remove it; the command line draws its own progress bar (hidden by --quiet)",
            )
        if key not in allowed:
            raise src.error(
                table,
                key,
                "unknown key",
                f"use one of {sorted(allowed)} (check the spelling)",
            )
        bad = _value_problem(key, v)
        if bad is not None:
            raise src.error(table, key, *bad)
    return dict(values)


def _run_table(src: _Source, values: Any) -> dict[str, Any]:
    """The ``[run]`` table: how the checks are spread (``gradprobe run`` flags override it)."""
    if not isinstance(values, dict):
        raise src.error("run", None, f"expected a table, found {values!r}", "write it as [run]")
    for key, v in values.items():
        if key == "jobs":
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise src.error(
                    "run", key, f"expected an int >= 1 (checks at once), found {v!r}", "jobs = 2"
                )
        elif key == "scheduler":
            if not isinstance(v, str) or not v.strip():
                raise src.error(
                    "run",
                    key,
                    f"expected a Dask scheduler address, found {v!r}",
                    'scheduler = "tcp://host:8786"',
                )
        else:
            raise src.error("run", key, "unknown key", "use jobs or scheduler")
    return dict(values)


# -- loading --------------------------------------------------------------------------------
def find_suite(path: str | Path | None = None) -> Path:
    """The suite file: ``path`` (a file or a folder), else ./gradprobe.toml or ./pyproject.toml."""
    candidates: list[Path]
    if path is not None:
        p = Path(path)
        if p.is_file():
            return p
        if not p.exists():
            raise SuiteConfigError(
                f"suite {p}: no such file; pass a gradprobe.toml or a pyproject.toml with "
                "[tool.gradprobe]."
            )
        candidates = [p / SUITE_FILE, p / "pyproject.toml"]
    else:
        candidates = [Path(SUITE_FILE), Path("pyproject.toml")]
    for c in candidates:
        if c.name == SUITE_FILE and c.is_file():
            return c
        if c.name == "pyproject.toml" and c.is_file():
            try:
                data = tomllib.loads(c.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError):
                return c  # load_suite reports the syntax error with the file name
            if "gradprobe" in data.get("tool", {}):
                return c
    raise SuiteConfigError(
        f"no suite found (looked for {', '.join(str(c) for c in candidates)}); write a "
        f"{SUITE_FILE} with [checks.NAME] tables or add [tool.gradprobe] to pyproject.toml."
    )


def _read_utf8(file: Path, shown: str) -> str:
    """The text of a TOML file, which TOML requires to be UTF-8 (the error names the line)."""
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SuiteConfigError(
            f"{shown} line {line}: not valid UTF-8 (byte {data[exc.start]:#04x} at offset "
            f"{exc.start}); TOML files are UTF-8: save it as UTF-8 (e.g. iconv -f latin1 -t "
            "utf-8)."
        ) from None


def load_suite(path: str | Path | None = None) -> Suite:
    """Read and validate a suite file (see the module docstring for its shape).

    Raises
    ------
    SuiteConfigError
        Unreadable TOML, an unknown key, a bad value, a missing or unresolvable target; the
        message names the file, the line and key, and the fix.
    """
    given = find_suite(path)
    file = given.resolve()
    shown = str(given)  # messages name the file as the user gave it (relative stays relative)
    text = _read_utf8(file, shown)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteConfigError(f"{shown}: invalid TOML: {exc}. Fix the syntax there.") from None
    prefix = ""
    if file.name == "pyproject.toml":
        tool = data.get("tool", {})
        if "gradprobe" not in tool:
            raise SuiteConfigError(
                f"{shown}: no [tool.gradprobe] table. Fix: add [tool.gradprobe.checks.NAME] "
                "tables, or pass a gradprobe.toml."
            )
        data, prefix = tool["gradprobe"], "tool.gradprobe."
    src = _Source(shown, text, prefix)
    for key in data:
        if key not in ("defaults", "checks", "run"):
            line = _line_of(text, prefix.rstrip(".") or "defaults", key) if prefix else None
            if not prefix:
                line = next(
                    (
                        i + 1
                        for i, ln in enumerate(text.splitlines())
                        if re.match(rf"^\s*\[?\s*{re.escape(key)}\b", ln)
                    ),
                    None,
                )
            where = f"{shown}:{line}" if line else shown
            raise SuiteConfigError(
                f"{where}: unknown top-level key {key!r}. Fix: use [defaults], [run] and "
                "[checks.NAME] tables only."
            )
    defaults = _check_table(src, "defaults", data.get("defaults", {}), DEFAULT_KEYS)
    run = _run_table(src, data.get("run", {}))
    checks_table = data.get("checks")
    if not isinstance(checks_table, dict) or not checks_table:
        raise SuiteConfigError(
            f"{shown}: no checks. Fix: add a table per check, e.g.\n"
            f'  [{prefix}checks.mlp]\n  target = "models.py:make_mlp"'
        )
    specs = []
    for name, table in checks_table.items():
        where = f"checks.{name}"
        values = _check_table(src, where, table, CHECK_KEYS)
        if "target" not in values:
            raise src.error(
                where,
                None,
                "missing key 'target'",
                'add target = "models.py:function" (a path relative to the suite file, '
                'or "pkg.module:function")',
            )
        try:
            target = parse_target(values["target"], base_dir=file.parent)
            target.find_problem()
        except InvalidInputError as exc:
            raise src.error(
                where,
                "target",
                str(exc).rstrip("."),
                "point it at a module-level function returning gradprobe.Problem",
            ) from None
        problem = target.args_problem(dict(values.get("args", {})))
        if problem is not None:
            raise src.error(
                where,
                "args",
                problem,
                f"pass only the function's keyword arguments: {target.args_example()}",
            )
        merged = {**defaults, **values}
        conflict = options_conflict(merged)
        if conflict is not None:
            key, what = conflict
            table_of_key = where if key in values or key not in defaults else "defaults"
            raise src.error(table_of_key, key, what, "change one of the two")
        isolate = merged.pop("isolate", True)
        args = merged.pop("args", {})
        merged.pop("target")
        specs.append(
            CheckSpec(
                name=str(name),
                target=target,
                args=MappingProxyType(dict(args)),
                options=MappingProxyType(merged),
                isolate=bool(isolate),
            )
        )
    return Suite(path=str(file), checks=tuple(specs), given=shown, run=MappingProxyType(run))
