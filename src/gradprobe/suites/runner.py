"""Running a suite's checks so that nothing hangs, and the outcome of each.

Each check runs, by default, in a fresh worker process (``spawn``): the check's own ``timeout``
stops it cleanly with a partial report, and a hard watchdog kills the worker when no result
arrives within ``timeout`` plus a grace period (a loss call stuck in C code that never returns).
``isolate = false`` runs in this process instead (the check's own timeout still applies).

:class:`SuiteResult` is what ``gradprobe run --json`` writes: a versioned schema holding each
check's status and full report, read back by :meth:`SuiteResult.from_dict` (baselines use it).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import multiprocessing
import platform
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import CheckAborted, GradCheckError, InvalidInputError
from ..report.model import Report, jsonable
from .config import CheckSpec
from .outcome import EXIT_CODES, STATUSES

__all__ = [
    "EXIT_CODES",
    "STATUSES",
    "SUITE_SCHEMA_VERSION",
    "CheckOutcome",
    "SuiteResult",
    "run_check",
    "versions",
]

SUITE_SCHEMA_VERSION = 1
#: Seconds a worker may take to start (import numpy, numba, gradprobe) before it counts as hung.
STARTUP_LIMIT = 120.0


def _grace(timeout: float) -> float:
    # The check's own timeout fires between (or, via SIGALRM, inside) Python-level loss calls;
    # the watchdog waits a little longer so that clean stop can deliver its partial report.
    return 5.0 + 0.25 * timeout


def versions() -> dict[str, str]:
    """Versions that matter for reproducing a check."""
    import numba

    return {
        "gradprobe": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(terse=True),
    }


@dataclass(frozen=True)
class CheckOutcome:
    """What happened to one check.

    Attributes
    ----------
    name : str
        The check's name.
    target : str
        Its target as written.
    status : str
        ``"passed"``, ``"failed"`` (a gradient mismatch), ``"error"`` (bad options or inputs),
        ``"aborted"`` (timeout or budget; ``report`` is partial) or ``"crashed"`` (the loss,
        grad or target raised, or the worker was killed).
    message : str
        One line (or a traceback for crashes); empty when passed.
    report : Report or None
        The full report, or the partial one, when there is one.
    duration : float
        Wall seconds, worker start-up included.
    options : mapping
        The options applied over the Problem's own.
    args : mapping
        Keyword arguments of the target function.
    reproduce : str
        A command that reruns this check alone.
    """

    name: str
    target: str
    status: str
    message: str = ""
    report: Report | None = None
    duration: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)
    args: Mapping[str, Any] = field(default_factory=dict)
    reproduce: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def seed(self) -> int:
        if self.report is not None:
            return self.report.seed
        return int(self.options.get("seed", 0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "status": self.status,
            "exit_code": self.exit_code,
            "message": self.message,
            "duration": self.duration,
            "seed": self.seed,
            "options": jsonable(dict(self.options)),
            "args": jsonable(dict(self.args)),
            "reproduce": self.reproduce,
            "report": None if self.report is None else self.report.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckOutcome:
        status = d["status"]
        if status not in STATUSES:
            raise ValueError(f"check status: expected one of {list(STATUSES)}, found {status!r}")
        return cls(
            name=str(d["name"]),
            target=str(d.get("target", "")),
            status=status,
            message=str(d.get("message", "")),
            report=None if d.get("report") is None else Report.from_dict(d["report"]),
            duration=float(d.get("duration", 0.0)),
            options=dict(d.get("options", {})),
            args=dict(d.get("args", {})),
            reproduce=str(d.get("reproduce", "")),
        )


@dataclass(frozen=True)
class SuiteResult:
    """The outcomes of a run, with the versions and time needed to reproduce it."""

    outcomes: tuple[CheckOutcome, ...]
    suite: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    created: str = ""

    @property
    def exit_code(self) -> int:
        return max((o.exit_code for o in self.outcomes), default=0)

    @property
    def by_name(self) -> Mapping[str, CheckOutcome]:
        return MappingProxyType({o.name: o for o in self.outcomes})

    @property
    def counts(self) -> dict[str, int]:
        """Checks by status, every status listed (in :data:`STATUSES` order)."""
        return {s: sum(o.status == s for o in self.outcomes) for s in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``schema_version``, versions, and every check with its report."""
        return {
            "schema_version": SUITE_SCHEMA_VERSION,
            "kind": "gradprobe.suite",
            "suite": self.suite,
            "created": self.created,
            "versions": dict(self.versions),
            "exit_code": self.exit_code,
            "counts": self.counts,
            "checks": [o.to_dict() for o in self.outcomes],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SuiteResult:
        """Read back :meth:`to_dict`'s output (raises ``ValueError`` on another schema)."""
        if d.get("kind") != "gradprobe.suite" or d.get("schema_version") != SUITE_SCHEMA_VERSION:
            raise ValueError(
                f"expected a gradprobe suite result (kind 'gradprobe.suite', schema_version "
                f"{SUITE_SCHEMA_VERSION}), found kind {d.get('kind')!r}, schema_version "
                f"{d.get('schema_version')!r}"
            )
        return cls(
            outcomes=tuple(CheckOutcome.from_dict(c) for c in d["checks"]),
            suite=d.get("suite"),
            versions=dict(d.get("versions", {})),
            created=str(d.get("created", "")),
        )


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -- running one check ----------------------------------------------------------------------
ProgressFn = Callable[[int, int], None]


def _classify(exc: BaseException) -> tuple[str, str, Report | None]:
    partial = getattr(exc, "partial_report", None)
    if isinstance(exc, CheckAborted):
        return "aborted", f"stopped early ({exc.reason}): {exc}", partial
    if isinstance(exc, InvalidInputError):
        return "error", str(exc), partial
    if isinstance(exc, GradCheckError):
        return "crashed", f"{type(exc).__name__}: {exc}", partial
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8))
    return "crashed", text.rstrip(), partial


def _run_here(spec: CheckSpec, progress: ProgressFn | None) -> tuple[str, str, Report | None]:
    try:
        problem = spec.target.problem(dict(spec.args))
        options = dict(spec.options)
        if progress is not None:
            options["progress"] = progress
        report = problem.run(**options)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return _classify(exc)
    return ("passed" if report.passed else "failed"), "", report


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


def _worker(conn: Any, spec: CheckSpec, want_progress: bool) -> None:
    """Entry point of the worker process: run the check, send the outcome back."""
    conn.send(("started",))
    last = [0.0]

    def progress(done: int, total: int) -> None:
        t = time.monotonic()
        if t - last[0] > 0.1 or done >= total:
            last[0] = t
            conn.send(("progress", done, total))

    status, message, report = _run_here(spec, progress if want_progress else None)
    conn.send(("result", status, message, _pack_report(report)))
    conn.close()


def run_check(spec: CheckSpec, progress: ProgressFn | None = None) -> CheckOutcome:
    """Run one check (in a worker process unless ``spec.isolate`` is false).

    Parameters
    ----------
    spec : CheckSpec
        The check.
    progress : callable, optional
        ``progress(done, total)`` as loss evaluations are spent.

    Returns
    -------
    CheckOutcome
        Never raises for a failing, crashing or hanging check (KeyboardInterrupt propagates
        after the worker is killed).
    """
    start = time.monotonic()
    if spec.isolate:
        status, message, report = _run_isolated(spec, progress)
    else:
        status, message, report = _run_here(spec, progress)
    return CheckOutcome(
        name=spec.name,
        target=spec.target.text,
        status=status,
        message=message,
        report=report,
        duration=time.monotonic() - start,
        options=dict(spec.options),
        args=dict(spec.args),
    )


def _run_isolated(spec: CheckSpec, progress: ProgressFn | None) -> tuple[str, str, Report | None]:
    # Plain dicts: mapping proxies do not pickle.
    spec = dataclasses.replace(spec, args=dict(spec.args), options=dict(spec.options))
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(child, spec, progress is not None), daemon=True)
    proc.start()
    child.close()
    timeout = spec.timeout
    started_at: float | None = None
    limit = time.monotonic() + STARTUP_LIMIT
    try:
        while True:
            wait = max(0.0, min(0.2, limit - time.monotonic()))
            try:
                ready = parent.poll(wait)
                msg = parent.recv() if ready else None
            except (EOFError, OSError):
                proc.join(5)
                return (
                    "crashed",
                    f"the worker process died (exit code {proc.exitcode}) before reporting; "
                    "run with isolate = false to see the error in this process.",
                    None,
                )
            if msg is not None:
                if msg[0] == "started":
                    started_at = time.monotonic()
                    limit = started_at + timeout + _grace(timeout)
                elif msg[0] == "progress":
                    if progress is not None:
                        progress(int(msg[1]), int(msg[2]))
                elif msg[0] == "result":
                    proc.join(10)
                    return msg[1], msg[2], _unpack_report(msg[3])
                continue
            if time.monotonic() >= limit:
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
                )
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        parent.close()
