"""The result of a check: frozen dataclasses a person reads in seconds and a machine parses.

``to_dict``/``to_json`` give a stable, versioned schema; ``Report.from_dict`` reads it back.
The text (``str(report)``, the table, the ``numpy.testing``-style failure blocks) is written by
:mod:`gradprobe.report.text` and the pictures by :mod:`gradprobe.report.plot`; the methods here
only delegate to them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import GradientMismatchError
from . import text
from .jsonable import jsonable, split_settings
from .parts import Coverage, Diagnosis, EntryCheck, float_or_none

#: 2: ``measured`` apart from ``settings`` (version 1 files are still read).
SCHEMA_VERSION = 2
#: The schema versions :meth:`Report.from_dict` reads.
READABLE_SCHEMA_VERSIONS = (1, 2)
MAX_SHOWN_ENTRIES = 5
#: ``ParamReport.bad_indices`` keeps at most this many entries.
MAX_BAD_INDICES = 100


@dataclass(frozen=True)
class ParamReport:
    """The verdict for one parameter.

    Attributes
    ----------
    name, shape, dtype
        The parameter.
    n_total : int
        Entries in the parameter.
    n_checked : int
        Entries checked one by one against a finite difference.
    sampling : str
        How those entries were chosen (``"all"`` or ``"stratified"``).
    max_rel_error : float
        Largest relative error among the checked entries (inf when one is NaN).
    worst_index : tuple of int or None
        Index of the worst entry: the failing entry furthest past its tolerance, or the entry
        with the largest relative error when all pass.
    passed : bool
        No checked entry failed (kinks excluded), the probes found no disagreement too
        widespread or too frequent to localize, the analytic gradient is finite and the
        check finished (a probe's suspicion that the entries do not confirm, or that stays
        within ``rtol``, does not fail it: :func:`gradprobe.checking.verdict.passes`).
    n_failed : int
        Checked entries that failed (kinks excluded).
    worst_entries : tuple of EntryCheck
        Up to five entries, worst first.
    rtol, atol : float
        The tolerance applied.
    step : float
        The relative step ``eps`` used (``h = eps * max(1, |x|)``).
    method : str
        The finite-difference scheme.
    diagnosis : Diagnosis or None
        The likely cause, for failing parameters.
    n_kinks : int
        Entries whose one-sided differences disagree (not counted as failures).
    bad_indices : tuple of tuple of int
        Entries localized as wrong (by individual checks or probe bisection).
    widespread : bool
        Probes disagreed beyond ``rtol`` across the whole parameter and most entries checked
        one by one fail; localization stopped early.
    capped : bool
        Probes disagreed beyond ``rtol`` in more places than ``bad_indices`` can hold;
        localization stopped at that many entries.
    coverage : Coverage or None
        Probe and sample coverage (None only in a report read from an older file).
    rel_errors : ndarray
        Relative error of every checked entry (for plots; not in ``to_dict``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    n_total: int
    n_checked: int
    sampling: str
    max_rel_error: float
    worst_index: tuple[int, ...] | None
    passed: bool
    n_failed: int
    worst_entries: tuple[EntryCheck, ...]
    rtol: float
    atol: float
    step: float
    method: str = "central"
    diagnosis: Diagnosis | None = None
    n_kinks: int = 0
    bad_indices: tuple[tuple[int, ...], ...] = ()
    widespread: bool = False
    capped: bool = False
    coverage: Coverage | None = None
    rel_errors: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)
    #: Largest relative error among entries resolvable above the round-off floor (their
    #: allowance is set by rtol, not by the floor) and not kinks; NaN when there is none. The
    #: table shows this one for passing parameters.
    max_rel_error_resolved: float = math.nan
    #: Checked entries whose allowance is the round-off floor (their difference is noise).
    n_at_floor: int = 0
    #: Loss evaluations spent on this parameter's sample, probes and bisection (the
    #: diagnosis's few extra evaluations are not counted here; 0 when not recorded). Its wall
    #: time is in ``Report.timings["param:<name>"]``.
    n_evaluations: int = 0
    #: False when the check stopped (time limit, budget, Ctrl-C) while this parameter was
    #: being checked: the entries finished by then are reported and ``passed`` is False, but it
    #: counts among ``Report.failures`` only when one of them failed.
    finished: bool = True

    @property
    def headline_rel_error(self) -> float:
        """The relative error the report's table shows: for a failing parameter the largest
        among the failing entries its failure block shows (so the two agree; an entry at the
        round-off floor may have a larger classic relative error, in ``max_rel_error``); for
        a passing one the maximum over entries resolvable above the round-off floor (NaN when
        none is: their differences are noise, not evidence)."""
        if not self.n_checked:
            return math.nan
        if self.passed:
            return self.max_rel_error_resolved
        shown = self.failing_entries
        return max(e.rel_error for e in shown) if shown else self.max_rel_error

    @property
    def failing_entries(self) -> tuple[EntryCheck, ...]:
        return tuple(e for e in self.worst_entries if not e.passed and not e.kink)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "n_total": self.n_total,
            "n_checked": self.n_checked,
            "sampling": self.sampling,
            "max_rel_error": float_or_none(self.max_rel_error),
            "max_rel_error_resolved": float_or_none(self.max_rel_error_resolved),
            "n_at_floor": self.n_at_floor,
            "n_evaluations": self.n_evaluations,
            "worst_index": None if self.worst_index is None else list(self.worst_index),
            "passed": self.passed,
            "n_failed": self.n_failed,
            "worst_entries": [e.to_dict() for e in self.worst_entries],
            "rtol": self.rtol,
            "atol": self.atol,
            "step": self.step,
            "method": self.method,
            "diagnosis": None if self.diagnosis is None else self.diagnosis.to_dict(),
            "n_kinks": self.n_kinks,
            "bad_indices": [list(i) for i in self.bad_indices],
            "widespread": self.widespread,
            "capped": self.capped,
            "coverage": None if self.coverage is None else self.coverage.to_dict(),
            "finished": self.finished,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParamReport:
        mre = d.get("max_rel_error")
        return cls(
            name=d["name"],
            shape=tuple(d["shape"]),
            dtype=d["dtype"],
            n_total=int(d["n_total"]),
            n_checked=int(d["n_checked"]),
            sampling=d["sampling"],
            max_rel_error=math.inf if mre is None and d["n_checked"] else float(mre or 0.0),
            max_rel_error_resolved=(
                math.nan
                if d.get("max_rel_error_resolved") is None
                else float(d["max_rel_error_resolved"])
            ),
            n_at_floor=int(d.get("n_at_floor", 0)),
            n_evaluations=int(d.get("n_evaluations", 0)),
            worst_index=None if d.get("worst_index") is None else tuple(d["worst_index"]),
            passed=bool(d["passed"]),
            n_failed=int(d["n_failed"]),
            worst_entries=tuple(EntryCheck.from_dict(e) for e in d.get("worst_entries", [])),
            rtol=float(d["rtol"]),
            atol=float(d["atol"]),
            step=float(d["step"]),
            method=d.get("method", "central"),
            diagnosis=None if d.get("diagnosis") is None else Diagnosis.from_dict(d["diagnosis"]),
            n_kinks=int(d.get("n_kinks", 0)),
            bad_indices=tuple(tuple(i) for i in d.get("bad_indices", [])),
            widespread=bool(d.get("widespread", False)),
            capped=bool(d.get("capped", False)),
            coverage=None if d.get("coverage") is None else Coverage.from_dict(d["coverage"]),
            finished=bool(d.get("finished", True)),
        )

    def failure_text(self) -> str:
        """The ``assert_allclose``-style block for a failing parameter (empty when it passed)."""
        return text.failure_block(
            self, max_shown=MAX_SHOWN_ENTRIES, max_bad_indices=MAX_BAD_INDICES
        )


@dataclass(frozen=True)
class Report:
    """The outcome of :func:`gradprobe.check`.

    Attributes
    ----------
    params : mapping of str to ParamReport
        One report per parameter, in the order given.
    passed : bool
        Every parameter passed (and the check completed).
    warnings : tuple of str
        Things the user should know that did not fail the check.
    seed : int
        The seed that reproduces the sample and the probes.
    settings : mapping
        What was asked, after defaults: the options in force (method, samples, tolerances,
        n_jobs, timeout...) and, for a vector-valued check, the cotangent's rule
        (``"cotangent"``) and an adapter's options (``vectorize``, ``jit``).
    n_evaluations : int
        Loss evaluations spent.
    timings : mapping of str to float
        Seconds spent, by phase (``"total"``, ``"compile"``, ...).
    complete : bool
        False for a partial report (time limit, budget, interrupt or error).
    incomplete_reason : str or None
        Why the report is partial.
    version : str
        gradprobe's version.
    measured : mapping
        What the check measured or decided on its own (never asked):
        ``loss_noise``/``noise`` (the loss's noise floor and how it was found),
        ``loss_precision``, ``planned_evaluations``, ``executor`` (where the loss ran), for
        ``check_jvp`` ``jvp_calls``, and for the framework adapters ``framework``, ``device``,
        ``x64``, ``vectorization`` (vmap or per entry, and why), ``jitted`` and
        ``not_checked`` (inputs and outputs left out, and why). Which key belongs here is
        decided by :func:`gradprobe.report.jsonable.split_settings`: a measurement written
        into ``settings`` moves here when the report is built.
    """

    params: Mapping[str, ParamReport]
    passed: bool
    warnings: tuple[str, ...] = ()
    seed: int = 0
    settings: Mapping[str, Any] = field(default_factory=dict)
    n_evaluations: int = 0
    timings: Mapping[str, float] = field(default_factory=dict)
    complete: bool = True
    incomplete_reason: str | None = None
    version: str = ""
    measured: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        asked, found = split_settings(self.settings)
        object.__setattr__(self, "settings", asked)
        # A measurement written into settings (a later dataclasses.replace) is the newer one.
        object.__setattr__(self, "measured", {**self.measured, **found})

    @property
    def n_finished(self) -> int:
        """Parameters whose check finished (an unfinished one holds the entries done by then)."""
        return sum(p.finished for p in self.params.values())

    @property
    def failures(self) -> tuple[ParamReport, ...]:
        """The parameters that failed, in order (an unfinished one only when an entry failed)."""
        return tuple(p for p in self.params.values() if not p.passed and (p.finished or p.n_failed))

    # -- text (gradprobe.report.text) -------------------------------------------------------
    def summary_line(self) -> str:
        """One line: passed or FAILED, failures, seed, loss evaluations, seconds."""
        return text.summary_line(self)

    def table(self) -> str:
        """The per-parameter table."""
        return text.param_table(self)

    def __str__(self) -> str:
        shown = text.report_text(self)
        # Noted (not a field: no effect on ==, to_dict) so that raise_for_failures after
        # print(report) points at the failures printed instead of printing them again.
        object.__setattr__(self, "_shown", True)
        return shown

    # -- machine-readable ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with a ``schema_version`` field."""
        return {
            "schema_version": SCHEMA_VERSION,
            "gradprobe_version": self.version,
            "passed": self.passed,
            "complete": self.complete,
            "incomplete_reason": self.incomplete_reason,
            "seed": self.seed,
            "n_evaluations": self.n_evaluations,
            "timings": dict(self.timings),
            "settings": jsonable(dict(self.settings)),
            "measured": jsonable(dict(self.measured)),
            "warnings": list(self.warnings),
            "params": [p.to_dict() for p in self.params.values()],
        }

    def to_json(self, **kwargs: Any) -> str:
        """``to_dict()`` as JSON text (keyword arguments go to ``json.dumps``)."""
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        """Read back what :meth:`to_dict` wrote (this schema version or an older one)."""
        version = d.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(
                f"report schema_version: expected one of {READABLE_SCHEMA_VERSIONS}, found "
                f"{version!r}"
            )
        settings, measured = split_settings(d.get("settings", {}), version)
        params = [ParamReport.from_dict(p) for p in d["params"]]
        return cls(
            params={p.name: p for p in params},
            passed=bool(d["passed"]),
            warnings=tuple(d.get("warnings", ())),
            seed=int(d.get("seed", 0)),
            settings=settings,
            n_evaluations=int(d.get("n_evaluations", 0)),
            timings=d.get("timings", {}),
            complete=bool(d.get("complete", True)),
            incomplete_reason=d.get("incomplete_reason"),
            version=d.get("gradprobe_version", ""),
            measured={**measured, **d.get("measured", {})},
        )

    def plot(self, path: Any, **kwargs: Any) -> Any:
        """Write a PNG of each parameter's relative errors (log axis, threshold, failures red).

        Needs matplotlib (``pip install "gradprobe[plot]"``); keyword arguments go to
        :func:`gradprobe.report.plot.plot_report`. Returns the path written.
        """
        from .plot import plot_report  # matplotlib loads only when a picture is asked for

        return plot_report(self, path, **kwargs)

    def raise_for_failures(self) -> Report:
        """Raise :class:`GradientMismatchError` listing the failures; return self otherwise.

        After ``print(report)`` (or any ``str(report)``) the message is the summary and the
        failing parameters' names, pointing at the report shown, so a failure prints once."""
        if self.passed:
            return self
        if getattr(self, "_shown", False):
            raise GradientMismatchError(text.shown_failure_message(self), report=self)
        raise GradientMismatchError(text.failure_message(self), report=self)
