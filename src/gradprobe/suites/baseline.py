"""Regressions against an earlier run (``gradprobe run --baseline previous.json``).

A parameter regresses when its max relative error grew by more than ``factor`` (default 10)
since the baseline, even if it still passes: a gradient that drifted from 1e-10 to 1e-7 is worth
a look before it crosses the tolerance. Errors below ``floor`` (default 1e-10, round-off level
for float64 central differences) count as ``floor``, so noise between tiny values is not flagged.
Checks and parameters that appeared or disappeared, and checks that passed before and do not
now, are listed too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError
from .runner import SuiteResult

DEFAULT_FACTOR = 10.0
DEFAULT_FLOOR = 1e-10


@dataclass(frozen=True)
class Regression:
    """One parameter whose max relative error grew by more than the factor.

    Attributes
    ----------
    check, param : str
        Where.
    before, after : float
        Max relative error in the baseline and now.
    ratio : float
        ``max(after, floor) / max(before, floor)``.
    passed : bool
        Whether the parameter still passes now.
    """

    check: str
    param: str
    before: float
    after: float
    ratio: float
    passed: bool

    def describe(self) -> str:
        still = "still passes" if self.passed else "now FAILS"
        return (
            f"{self.check}/{self.param}: max rel err {self.before:.2e} -> {self.after:.2e} "
            f"(x{self.ratio:.3g}; {still})"
        )


@dataclass(frozen=True)
class BaselineComparison:
    """The differences between a run and its baseline.

    Attributes
    ----------
    regressions : tuple of Regression
        Parameters whose max relative error grew by more than ``factor``.
    appeared, disappeared : tuple of str
        Checks present only now / only in the baseline.
    params_appeared, params_disappeared : tuple of str
        ``check/param`` present only now / only in the baseline (checks in both).
    newly_failing : tuple of str
        Checks that passed in the baseline and do not now.
    factor, floor : float
        The thresholds used.
    """

    regressions: tuple[Regression, ...]
    appeared: tuple[str, ...]
    disappeared: tuple[str, ...]
    params_appeared: tuple[str, ...]
    params_disappeared: tuple[str, ...]
    newly_failing: tuple[str, ...]
    factor: float
    floor: float

    @property
    def has_regressions(self) -> bool:
        """Anything a nightly job should flag (exit code 1)."""
        return bool(self.regressions or self.disappeared or self.newly_failing)

    def by_check(self) -> dict[str, list[str]]:
        """Check name -> lines describing its regressions (for JUnit)."""
        out: dict[str, list[str]] = {}
        for r in self.regressions:
            out.setdefault(r.check, []).append("regression: " + r.describe())
        return out

    def lines(self) -> list[str]:
        """Human-readable lines, empty when nothing changed."""
        out = [f"REGRESSION {r.describe()}" for r in self.regressions]
        out += [f"REGRESSION {n}: passed in the baseline, not now" for n in self.newly_failing]
        out += [
            f"DISAPPEARED check {n} (in the baseline, not in this run)" for n in self.disappeared
        ]
        out += [f"new check {n} (not in the baseline)" for n in self.appeared]
        out += [f"DISAPPEARED parameter {n}" for n in self.params_disappeared]
        out += [f"new parameter {n}" for n in self.params_appeared]
        return out


def load_baseline(path: str | Path) -> SuiteResult:
    """Read a ``gradprobe run --json`` file (raise :class:`InvalidInputError` naming the fix)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(
            f"--baseline: {p} does not exist; write one with `gradprobe run --json {p}`."
        ) from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"--baseline: {p} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); gradprobe writes UTF-8 JSON: regenerate it with "
            f"`gradprobe run --json {p}`."
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"--baseline: {p} is not readable JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"--baseline: {p} is not a gradprobe run result: expected a JSON object, found "
            f"{'null' if data is None else type(data).__name__}; write one with "
            f"`gradprobe run --json {p}`."
        )
    try:
        return SuiteResult.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInputError(
            f"--baseline: {p} is not a gradprobe run result ({exc}); write one with "
            f"`gradprobe run --json {p}` or `gradprobe check ... --json {p}`."
        ) from None


def _max_rel(value: float) -> float:
    # NaN: no entry resolvable above the round-off floor, nothing to compare (the floor).
    return 0.0 if math.isnan(value) else value


def compare(
    current: SuiteResult,
    baseline: SuiteResult,
    *,
    factor: float = DEFAULT_FACTOR,
    floor: float = DEFAULT_FLOOR,
) -> BaselineComparison:
    """Compare ``current`` with ``baseline``.

    Parameters
    ----------
    current, baseline : SuiteResult
        This run and the earlier one.
    factor : float
        A parameter regresses when its max relative error grew by more than this (> 1).
    floor : float
        Errors below it count as ``floor`` (> 0).
    """
    if not (isinstance(factor, (int, float)) and factor > 1):
        raise InvalidInputError(f"--regression-factor: expected a number > 1, found {factor!r}.")
    if not (isinstance(floor, (int, float)) and floor > 0):
        raise InvalidInputError(f"regression floor: expected a number > 0, found {floor!r}.")
    now, before = current.by_name, baseline.by_name
    regressions: list[Regression] = []
    params_appeared: list[str] = []
    params_disappeared: list[str] = []
    newly_failing: list[str] = []
    for name, outcome in now.items():
        old = before.get(name)
        if old is None:
            continue
        if old.status == "passed" and outcome.status != "passed":
            newly_failing.append(name)
        if outcome.report is None or old.report is None:
            continue
        old_params, new_params = old.report.params, outcome.report.params
        params_appeared += [f"{name}/{p}" for p in new_params if p not in old_params]
        params_disappeared += [f"{name}/{p}" for p in old_params if p not in new_params]
        for pname, p in new_params.items():
            q = old_params.get(pname)
            if q is None or not p.n_checked or not q.n_checked:
                continue
            # The headline error (noise-floor entries excluded for passing parameters): the
            # classic maximum of a float32 check is noise and would flag spurious regressions.
            after, prior = _max_rel(p.headline_rel_error), _max_rel(q.headline_rel_error)
            ratio = max(after, floor) / max(prior, floor)
            if ratio > factor:
                regressions.append(Regression(name, pname, prior, after, ratio, p.passed))
    return BaselineComparison(
        regressions=tuple(regressions),
        appeared=tuple(n for n in now if n not in before),
        disappeared=tuple(n for n in before if n not in now),
        params_appeared=tuple(params_appeared),
        params_disappeared=tuple(params_disappeared),
        newly_failing=tuple(newly_failing),
        factor=float(factor),
        floor=float(floor),
    )
