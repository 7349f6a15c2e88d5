"""Running a suite's checks so that nothing hangs, and the outcome of each.

Each check runs, by default, in a worker process (``spawn``; a suite's checks share one
:class:`IsolatedWorker`, replaced whenever a check kills it): the check's own ``timeout`` stops
it cleanly with a partial report, and a hard watchdog kills the worker when no result arrives
within ``timeout`` plus a grace period (a loss call stuck in C code that never returns).
``isolate = false`` runs in this process instead (the check's own timeout still applies).

Ctrl-C stops the check in progress either way and :func:`run_check` returns it with status
``"interrupted"`` and the partial report the engine attached to the ``KeyboardInterrupt``: in a
worker, the parent catches the signal, forwards it, and waits up to :data:`INTERRUPT_GRACE`
seconds for that report (the worker starts with Ctrl-C ignored and arms a one-shot handler, so
a second signal cannot interrupt it while it reports). The caller decides whether to go on.

:class:`SuiteResult` is what ``gradprobe run --json`` writes: a versioned schema holding each
check's status and full report, read back by :meth:`SuiteResult.from_dict` (baselines use it).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .._version import __version__
from ..report.jsonable import jsonable
from ..report.model import Report
from .config import CheckSpec
from .inprocess import run_here
from .isolation import IsolatedWorker, run_isolated
from .outcome import EXIT_CODES, STATUSES

ProgressFn = Callable[[int, int], None]


SUITE_SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    """Versions that matter for reproducing a check (read without importing numba)."""
    return {
        "gradprobe": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": _distribution_version("numba"),
        "platform": platform.platform(terse=True),
    }


def _distribution_version(name: str) -> str:
    module = sys.modules.get(name)
    if module is not None:
        return str(module.__version__)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


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
        ``"aborted"`` (timeout or budget; ``report`` is partial), ``"crashed"`` (the loss,
        grad or target raised, or the worker was killed) or ``"interrupted"`` (Ctrl-C;
        ``report`` is partial).
    message : str
        One line (or the user's frames of the traceback for crashes); empty when passed.
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
    #: Checks selected but never started (Ctrl-C came first), in suite order.
    not_run: tuple[str, ...] = ()

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
            "not_run": list(self.not_run),
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
            not_run=tuple(str(n) for n in d.get("not_run", ())),
        )


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -- running one check ----------------------------------------------------------------------
def run_check(
    spec: CheckSpec,
    progress: ProgressFn | None = None,
    *,
    worker: IsolatedWorker | None = None,
    interrupts: Any = None,
) -> CheckOutcome:
    """Run one check (in a worker process unless ``spec.isolate`` is false).

    Parameters
    ----------
    spec : CheckSpec
        The check.
    progress : callable, optional
        ``progress(done, total)`` as loss evaluations are spent.
    worker : IsolatedWorker, optional
        The worker process to run an isolated check in, shared by a suite's checks (replaced
        when a check kills it); default: a fresh one for this check alone.
    interrupts : object, optional
        For an isolated check: the shared Ctrl-C count (``.count``) to watch instead of its
        own SIGINT handler (checks run side by side share one).

    Returns
    -------
    CheckOutcome
        Never raises for a failing, crashing or hanging check. Ctrl-C during the check gives
        status ``"interrupted"`` with the partial report (the caller decides whether to go on).
    """
    start = time.monotonic()
    if spec.isolate and worker is not None:
        status, message, report = worker.run(spec, progress, interrupts)
    elif spec.isolate:
        status, message, report = run_isolated(spec, progress, interrupts)
    else:
        status, message, report = run_here(spec, progress)
    return outcome_of(spec, status, message, report, time.monotonic() - start)


def outcome_of(
    spec: CheckSpec, status: str, message: str, report: Report | None, duration: float
) -> CheckOutcome:
    """The :class:`CheckOutcome` of ``spec`` that ended so (wherever it ran): the evaluations
    counted as spent, a message for a failed check."""
    if report is not None:
        report = spent_evaluations(report)
    if status == "failed" and not message and report is not None:
        message = mismatch_message(report)
    return CheckOutcome(
        name=spec.name,
        target=spec.target.text,
        status=status,
        message=message,
        report=report,
        duration=duration,
        options=dict(spec.options),
        args=dict(spec.args),
    )


def mismatch_message(report: Report) -> str:
    """The one-line message of a failed check: the mismatched parameters and their worst
    relative errors."""
    parts = []
    for p in report.failures:
        err = p.headline_rel_error
        parts.append(p.name if err != err else f"{p.name} (max rel err {err:.2e})")
    if not parts:
        return report.summary_line()
    return f"gradient mismatch in {', '.join(parts)}"


def spent_evaluations(report: Report) -> Report:
    """``report`` counting the loss evaluations spent, not those planned.

    The engine charges a block of evaluations before sending it to joblib workers, so a check
    stopped (Ctrl-C, the hard watchdog) while a block was out counts the whole block, whose
    results never came back (after 4 s, the plan of a 131,082-evaluation sample). For a report
    that did not finish after such a dispatch, the suite's summary, text, JSON and JUnit record
    the evaluations behind the results it keeps (each kept parameter's own count) instead. A
    complete report, or one whose evaluations all ran in the check's own process (counted one
    by one as they ran), is returned as it is.
    """
    if report.complete or "joblib" not in str(report.measured.get("executor", "")):
        return report
    kept = sum(p.n_evaluations for p in report.params.values())
    if kept >= report.n_evaluations:
        return report
    return dataclasses.replace(report, n_evaluations=kept)
