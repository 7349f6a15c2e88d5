"""The result of a check: frozen dataclasses a person reads in seconds and a machine parses.

``str(report)`` is a per-parameter table followed, for each failing parameter, by its worst
entries in the style of ``numpy.testing.assert_allclose``. ``to_dict``/``to_json`` give a stable,
versioned schema; ``Report.from_dict`` reads it back.
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

__all__ = [
    "SCHEMA_VERSION",
    "Coverage",
    "Diagnosis",
    "EntryCheck",
    "ParamReport",
    "Report",
]

SCHEMA_VERSION = 1
MAX_SHOWN_ENTRIES = 5
#: ``ParamReport.bad_indices`` keeps at most this many entries.
MAX_BAD_INDICES = 100


def _fmt(x: float) -> str:
    return f"{x:.6g}" if math.isfinite(x) else str(x)


def _index_str(index: tuple[int, ...] | None) -> str:
    if index is None:
        return "-"
    return "[" + ", ".join(str(i) for i in index) + "]"


def _float_or_none(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class EntryCheck:
    """One entry checked individually.

    Attributes
    ----------
    index : tuple of int
        The entry's index in the parameter.
    analytic, numeric : float
        The user's gradient and the finite-difference estimate.
    rel_error : float
        ``|a - n| / max(1e-8, |a| + |n|)`` (inf when either side is NaN).
    allowed : float
        The largest ``|a - n|`` that passes (relative tolerance or round-off floor, plus atol).
    step : float
        Half the step actually taken, ``((x + h) - (x - h)) / 2``.
    passed : bool
        Whether the entry is within tolerance.
    kink : bool
        The one-sided differences disagree: the step crossed a non-differentiable point.
    """

    index: tuple[int, ...]
    analytic: float
    numeric: float
    rel_error: float
    allowed: float
    step: float
    passed: bool
    kink: bool = False

    @property
    def abs_error(self) -> float:
        return abs(self.analytic - self.numeric)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": list(self.index),
            "analytic": _float_or_none(self.analytic),
            "numeric": _float_or_none(self.numeric),
            "rel_error": _float_or_none(self.rel_error),
            "allowed": _float_or_none(self.allowed),
            "step": _float_or_none(self.step),
            "passed": self.passed,
            "kink": self.kink,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EntryCheck:
        def num(key: str) -> float:
            v = d.get(key)
            return float("nan") if v is None else float(v)

        return cls(
            index=tuple(d["index"]),
            analytic=num("analytic"),
            numeric=num("numeric"),
            rel_error=num("rel_error") if d.get("rel_error") is not None else math.inf,
            allowed=num("allowed"),
            step=num("step"),
            passed=bool(d["passed"]),
            kink=bool(d.get("kink", False)),
        )


@dataclass(frozen=True)
class Diagnosis:
    """The likely cause of a failing parameter.

    Attributes
    ----------
    kind : str
        ``"scale"``, ``"sign"``, ``"transpose"``, ``"zero"``, ``"missing-term"``, ``"swapped"``,
        ``"mismatch"`` (or ``"widespread"``/``"nonfinite"`` where those apply).
    detail : str
        One line a person can act on.
    confidence : float
        How sure the diagnosis is, in [0, 1].
    evidence : mapping
        Numbers behind the verdict (fitted constants, entries confirmed...).
    """

    kind: str
    detail: str
    confidence: float = 1.0
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "detail": self.detail,
            "confidence": self.confidence,
            "evidence": _jsonable(dict(self.evidence)),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Diagnosis:
        return cls(d["kind"], d["detail"], float(d.get("confidence", 1.0)), d.get("evidence", {}))


@dataclass(frozen=True)
class Coverage:
    """What part of a parameter the check covered, and what that says about the rest.

    Attributes
    ----------
    n_probed : int
        Entries covered by directional probes (all of them when probes ran).
    n_probes : int
        Directional probes evaluated (bisection included).
    n_sampled : int
        Entries checked one by one.
    strata : mapping of str to int
        Entries checked one by one, by stratum.
    n_failed_sampled : int
        Of the sampled entries, how many failed.
    upper_bound : float
        Upper bound on the fraction of wrong entries at 95% confidence (1.0 when unknown).
    statement : str
        The same in words.
    """

    n_probed: int
    n_probes: int
    n_sampled: int
    strata: Mapping[str, int]
    n_failed_sampled: int
    upper_bound: float
    statement: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_probed": self.n_probed,
            "n_probes": self.n_probes,
            "n_sampled": self.n_sampled,
            "strata": dict(self.strata),
            "n_failed_sampled": self.n_failed_sampled,
            "upper_bound": self.upper_bound,
            "statement": self.statement,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Coverage:
        return cls(
            n_probed=int(d["n_probed"]),
            n_probes=int(d["n_probes"]),
            n_sampled=int(d["n_sampled"]),
            strata=dict(d.get("strata", {})),
            n_failed_sampled=int(d["n_failed_sampled"]),
            upper_bound=float(d["upper_bound"]),
            statement=str(d["statement"]),
        )


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
        How those entries were chosen (``"all"``, ``"random"``, ``"stratified"``).
    max_rel_error : float
        Largest relative error among the checked entries (inf when one is NaN).
    worst_index : tuple of int or None
        Index of the worst entry: the failing entry furthest past its tolerance, or the entry
        with the largest relative error when all pass.
    passed : bool
        No checked entry failed and no probe found a disagreement.
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
        Probes found disagreement in most of the parameter; localization stopped early.
    coverage : Coverage or None
        Probe and sample coverage, when the probes ran.
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
    coverage: Coverage | None = None
    rel_errors: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)
    #: Largest relative error among entries resolvable above the round-off floor (their
    #: allowance is set by rtol, not by the floor) and not kinks; NaN when there is none. The
    #: table shows this one for passing parameters.
    max_rel_error_resolved: float = math.nan
    #: Checked entries whose allowance is the round-off floor (their difference is noise).
    n_at_floor: int = 0

    @property
    def headline_rel_error(self) -> float:
        """The relative error the report's table shows: the classic maximum for a failing
        parameter; for a passing one the maximum over entries resolvable above the round-off
        floor (NaN when none is: their differences are noise, not evidence)."""
        if not self.n_checked:
            return math.nan
        return self.max_rel_error if not self.passed else self.max_rel_error_resolved

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
            "max_rel_error": _float_or_none(self.max_rel_error),
            "max_rel_error_resolved": _float_or_none(self.max_rel_error_resolved),
            "n_at_floor": self.n_at_floor,
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
            "coverage": None if self.coverage is None else self.coverage.to_dict(),
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
            coverage=None if d.get("coverage") is None else Coverage.from_dict(d["coverage"]),
        )

    def failure_text(self) -> str:
        """The ``assert_allclose``-style block for a failing parameter (empty when it passed)."""
        if self.passed:
            return ""
        lines = [
            f"{self.name}: Not equal to tolerance rtol={self.rtol:g}, atol={self.atol:g} "
            f"(or the round-off floor; {self.method} differences, step {self.step:.3g})",
        ]
        if self.n_checked:
            pct = 100.0 * self.n_failed / self.n_checked
            lines.append(
                f"Mismatched elements: {self.n_failed} / {self.n_checked} checked ({pct:.3g}%)"
            )
        if self.widespread:
            lines.append("Probes disagree across most of the parameter (widespread).")
        shown = [e for e in self.worst_entries if not e.passed and not e.kink]
        if shown:
            lines.append(
                "Max absolute difference: "
                + _fmt(max(e.abs_error for e in shown))
                + "\nMax relative difference: "
                + _fmt(max(e.rel_error for e in shown))
            )
            for e in shown[:MAX_SHOWN_ENTRIES]:
                lines.append(
                    f"  {_index_str(e.index)}: analytic={_fmt(e.analytic)}, "
                    f"numeric={_fmt(e.numeric)}, rel_err={e.rel_error:.3g}"
                )
        extra = [i for i in self.bad_indices if i not in {e.index for e in shown}]
        if extra:
            more = ", ".join(_index_str(i) for i in extra[:MAX_SHOWN_ENTRIES])
            if len(extra) > MAX_SHOWN_ENTRIES:
                kept = len(self.bad_indices) >= MAX_BAD_INDICES
                more += f", ... ({len(extra) - MAX_SHOWN_ENTRIES} more in bad_indices" + (
                    f", which keeps the first {MAX_BAD_INDICES})" if kept else ")"
                )
            lines.append(f"  other wrong entries (sampled or localized by probes): {more}")
        if self.diagnosis is not None:
            lines.append(
                f"  likely cause: {self.diagnosis.kind} — {self.diagnosis.detail} "
                f"(confidence {self.diagnosis.confidence:.0%})"
            )
        return "\n".join(lines)


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
        The options in force (method, samples, tolerances, execution...).
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def failures(self) -> tuple[ParamReport, ...]:
        """The parameters that failed, in order."""
        return tuple(p for p in self.params.values() if not p.passed)

    # -- text ----------------------------------------------------------------------------------
    def summary_line(self) -> str:
        n_fail = len(self.failures)
        status = "passed" if self.passed else "FAILED"
        parts = [f"gradprobe: gradient check {status}"]
        if n_fail:
            parts.append(f" — {n_fail} of {len(self.params)} parameters mismatched")
        if not self.complete:
            parts.append(f" (INCOMPLETE: {self.incomplete_reason})")
        total = self.timings.get("total")
        meta = [f"seed {self.seed}", f"{self.n_evaluations:,} loss evaluations"]
        if total is not None:
            meta.append(f"{total:.3g} s")
        return "".join(parts) + " (" + ", ".join(meta) + ")"

    def table(self) -> str:
        """The per-parameter table."""
        header = ("parameter", "shape", "checked", "max rel err", "worst index", "verdict")
        rows = [header]
        for p in self.params.values():
            checked = f"{p.n_checked:,} / {p.n_total:,}"
            if p.coverage is not None and p.coverage.n_probed:
                checked += " +probes"
            verdict = "ok" if p.passed else "FAIL"
            notes = [f"{p.n_kinks} kinks"] if p.n_kinks else []
            if p.n_at_floor:
                notes.append(f"{p.n_at_floor} at noise floor")
            if p.passed and notes:
                verdict = f"ok ({', '.join(notes)})"
            if not p.passed and p.diagnosis is not None:
                verdict = f"FAIL ({p.diagnosis.kind})"
            rows.append(
                (
                    p.name,
                    str(p.shape),
                    checked,
                    _rel_cell(p),
                    _index_str(p.worst_index),
                    verdict,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        out = []
        for r in rows:
            out.append(
                "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            )
        return "\n".join(out)

    def __str__(self) -> str:
        blocks = [self.summary_line(), "", self.table()]
        for p in self.failures:
            blocks += ["", p.failure_text()]
        coverage = [p.coverage.statement for p in self.params.values() if p.coverage]
        if coverage:
            blocks += ["", "coverage:"] + [
                f"  {p.name}: {p.coverage.statement}"
                for p in self.params.values()
                if p.coverage is not None
            ]
        if self.warnings:
            blocks += ["", "warnings:"] + [f"  - {w}" for w in self.warnings]
        return "\n".join(blocks)

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
            "settings": _jsonable(dict(self.settings)),
            "warnings": list(self.warnings),
            "params": [p.to_dict() for p in self.params.values()],
        }

    def to_json(self, **kwargs: Any) -> str:
        """``to_dict()`` as JSON text (keyword arguments go to ``json.dumps``)."""
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        """Read back what :meth:`to_dict` wrote."""
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"report schema_version: expected {SCHEMA_VERSION}, found {version!r}")
        params = [ParamReport.from_dict(p) for p in d["params"]]
        return cls(
            params={p.name: p for p in params},
            passed=bool(d["passed"]),
            warnings=tuple(d.get("warnings", ())),
            seed=int(d.get("seed", 0)),
            settings=d.get("settings", {}),
            n_evaluations=int(d.get("n_evaluations", 0)),
            timings=d.get("timings", {}),
            complete=bool(d.get("complete", True)),
            incomplete_reason=d.get("incomplete_reason"),
            version=d.get("gradprobe_version", ""),
        )

    def plot(self, path: Any, **kwargs: Any) -> Any:
        """Write a PNG of each parameter's relative errors (log axis, threshold, failures red).

        Needs matplotlib (``pip install "gradprobe[plot]"``); keyword arguments go to
        :func:`gradprobe.plotting.plot_report`. Returns the path written.
        """
        from .plot import plot_report

        return plot_report(self, path, **kwargs)

    def raise_for_failures(self) -> Report:
        """Raise :class:`GradientMismatchError` listing the failures; return self otherwise."""
        if self.passed:
            return self
        lines = [self.summary_line(), ""]
        for p in self.failures:
            lines += [p.failure_text(), ""]
        if not self.failures and not self.complete:
            lines.append(f"The check did not complete: {self.incomplete_reason}.")
        raise GradientMismatchError("\n".join(lines).rstrip(), report=self)


def _rel_cell(p: ParamReport) -> str:
    """The table's relative error: the classic maximum for a failure; for a pass, the maximum
    over entries resolvable above the round-off floor ("-" when none is)."""
    r = p.headline_rel_error
    return f"{r:.2e}" if not math.isnan(r) else "-"


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars, arrays and tuples to JSON types, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def build_param_report(
    *,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    entries: Any,
    sampling: str,
    tolerance: Any,
    relative_step: float,
    method: str,
    **extra: Any,
) -> ParamReport:
    """Summarize per-entry results (a :class:`gradprobe.differences.EntryResults`).

    ``extra`` fills the optional fields (``diagnosis``, ``coverage``, ``bad_indices``...);
    ``passed`` there overrides the entries' verdict (probes may fail a parameter whose sampled
    entries all pass).
    """
    order = entries.worst_order()
    worst = tuple(
        EntryCheck(
            index=tuple(int(i) for i in np.unravel_index(entries.flat_index[j], shape)),
            analytic=float(entries.analytic[j]),
            numeric=float(entries.numeric[j]),
            rel_error=float(entries.rel_error[j]),
            allowed=float(entries.allowed[j]),
            step=float(entries.step[j]),
            passed=bool(entries.passed[j]),
            kink=bool(entries.kink[j]),
        )
        for j in order[:MAX_SHOWN_ENTRIES]
    )
    n_failed = int(np.count_nonzero(entries.failed))
    # Resolvable: the allowance comes from rtol, not from the round-off floor.
    with np.errstate(invalid="ignore"):
        denom = np.maximum(1e-8, np.abs(entries.analytic) + np.abs(entries.numeric))
        resolved = (entries.allowed <= tolerance.rtol * denom + tolerance.atol) & ~entries.kink
    fields: dict[str, Any] = {
        "passed": n_failed == 0,
        "n_kinks": int(np.count_nonzero(entries.kink)),
    }
    fields.update(extra)
    return ParamReport(
        name=name,
        shape=tuple(shape),
        dtype=str(np.dtype(dtype)),
        n_total=int(np.prod(shape, dtype=np.int64)),
        n_checked=entries.size,
        sampling=sampling,
        max_rel_error=float(entries.rel_error.max()) if entries.size else 0.0,
        max_rel_error_resolved=(
            float(entries.rel_error[resolved].max()) if resolved.any() else math.nan
        ),
        n_at_floor=int(np.count_nonzero(~resolved & ~entries.kink)),
        worst_index=worst[0].index if worst else None,
        n_failed=n_failed,
        worst_entries=worst,
        rtol=tolerance.rtol,
        atol=tolerance.atol,
        step=relative_step,
        method=method,
        rel_errors=entries.rel_error,
        **fields,
    )
