"""One check run in this process, and the outcome every runner returns.

An outcome is ``(status, message, report)``: a status of :data:`.outcome.STATUSES`, the message
a report prints for it, and the (possibly partial) report, or None. :func:`run_here` runs a
check here and never raises for a failing, crashing or stopped check: the engine's
``KeyboardInterrupt`` (carrying the partial report) gives ``"interrupted"``, a ``sys.exit`` in
the user's code ``"crashed"``. The isolated worker (:mod:`.isolation`) runs this in its own
process and sends the report back with :func:`pack_report`; so does a Dask task
(:mod:`.cluster`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import CheckAborted, GradCheckError, InvalidInputError
from ..report.model import Report
from .config import CheckSpec
from .stopping import stop_name
from .tracebacks import crash_text

ProgressFn = Callable[[int, int], None]
#: ``(status, message, report)``.
Outcome = tuple[str, str, "Report | None"]


def run_here(spec: CheckSpec, progress: ProgressFn | None) -> Outcome:
    """Run one check in this process; return its outcome (see the module)."""
    try:
        problem = spec.target.problem(dict(spec.args))
        options = dict(spec.options)
        if progress is not None:
            options["progress"] = progress
        report = problem.run(**options)
    except KeyboardInterrupt as exc:
        return interrupted(getattr(exc, "partial_report", None))
    except SystemExit as exc:  # the loss cannot end the run: this check crashed
        return _exited(exc)
    except Exception as exc:
        return _classify(exc)
    return ("passed" if report.passed else "failed"), "", report


def interrupted(report: Report | None, detail: str = "") -> Outcome:
    """The outcome of a check stopped by Ctrl-C (or SIGTERM), saying what its report holds."""
    if report is not None and report.complete:
        what = "it had just finished: its report is complete"
    elif report is not None and report.n_finished:
        what = f"the report holds the {report.n_finished} parameter(s) finished before it"
    else:
        what = "no parameter had finished"
    return "interrupted", f"interrupted ({stop_name()}){detail}; {what}.", report


def _classify(exc: BaseException) -> Outcome:
    partial = getattr(exc, "partial_report", None)
    if isinstance(exc, CheckAborted):
        return "aborted", f"stopped early ({exc.reason}): {exc}", partial
    if isinstance(exc, InvalidInputError):
        return "error", str(exc), partial
    if isinstance(exc, GradCheckError) and exc.__cause__ is None:
        return "crashed", f"{type(exc).__name__}: {exc}", partial
    return "crashed", crash_text(exc), partial  # the user's frames only


def _exited(exc: SystemExit) -> Outcome:
    return (
        "crashed",
        f"the check's code called sys.exit({exc.code!r}) (SystemExit): a loss, grad or target "
        "must return or raise, not end the process; this check counts as crashed and the "
        "others run.\n" + crash_text(exc),
        getattr(exc, "partial_report", None),
    )


def pack_report(report: Report | None) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """A report as picklable plain data (its JSON dict and the error arrays), or None."""
    if report is None:
        return None
    return report.to_dict(), {n: np.asarray(p.rel_errors) for n, p in report.params.items()}


def unpack_report(packed: Any) -> Report | None:
    """The report :func:`pack_report` packed."""
    if packed is None:
        return None
    data, rel = packed
    report = Report.from_dict(data)
    params = {
        n: dataclasses.replace(p, rel_errors=rel.get(n, np.empty(0)))
        for n, p in report.params.items()
    }
    return dataclasses.replace(report, params=params)
