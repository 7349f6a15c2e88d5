"""The pieces of a parameter's report: an entry checked (:class:`EntryCheck`), a likely cause
(:class:`Diagnosis`) and what the check covered (:class:`Coverage`), each with its schema.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .jsonable import jsonable


def float_or_none(x: Any) -> float | None:
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
            "analytic": float_or_none(self.analytic),
            "numeric": float_or_none(self.numeric),
            "rel_error": float_or_none(self.rel_error),
            "allowed": float_or_none(self.allowed),
            "step": float_or_none(self.step),
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
        One of ``"nonfinite"``, ``"zero"``, ``"unused"``, ``"missing-term"``, ``"sign"``,
        ``"scale"``, ``"transpose"``, ``"swapped"``, ``"shifted"``, ``"partial-factor"``,
        ``"confined"``, ``"mismatch"`` (:mod:`gradprobe.checking.diagnosis` tries them in
        that order, after looking for ``"jumps"``: failing entries of a zero gradient where
        the loss is piecewise constant on a grid finer than the step).
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
            "evidence": jsonable(dict(self.evidence)),
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
