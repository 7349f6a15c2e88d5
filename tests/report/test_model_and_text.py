"""The result model, its JSON and its text, built by hand (no check runs here)."""

from __future__ import annotations

import json
import math

import pytest

from gradprobe import Diagnosis, EntryCheck, GradientMismatchError, ParamReport, Report
from gradprobe.report.model import MAX_SHOWN_ENTRIES, SCHEMA_VERSION


def _entry(i: int, passed: bool = False) -> EntryCheck:
    a = 0.1 * (i + 1)
    return EntryCheck(
        index=(i, 0),
        analytic=a,
        numeric=-a,
        rel_error=1.0,
        allowed=1e-6,
        step=6e-6,
        passed=passed,
    )


def _param(name: str, n_bad: int) -> ParamReport:
    worst = tuple(_entry(i) for i in range(min(n_bad, MAX_SHOWN_ENTRIES)))
    return ParamReport(
        name=name,
        shape=(20, 1),
        dtype="float64",
        n_total=20,
        n_checked=20,
        sampling="all",
        max_rel_error=1.0 if n_bad else 1e-9,
        worst_index=(0, 0),
        passed=n_bad == 0,
        n_failed=n_bad,
        worst_entries=worst,
        rtol=1e-5,
        atol=0.0,
        step=6e-6,
        bad_indices=tuple((i, 0) for i in range(n_bad)),
        diagnosis=Diagnosis("sign", "analytic = -numeric", 0.9, {"c": -1.0}) if n_bad else None,
        max_rel_error_resolved=math.nan if n_bad else 1e-9,
    )


def _report() -> Report:
    params = {"W": _param("W", 12), "b": _param("b", 0)}
    return Report(params=params, passed=False, seed=3, n_evaluations=80, version="x")


def test_json_round_trip_keeps_every_field():
    report = _report()
    data = json.loads(report.to_json())
    assert data["schema_version"] == SCHEMA_VERSION == 2
    assert [p["name"] for p in data["params"]] == ["W", "b"]
    assert Report.from_dict(data).to_dict() == report.to_dict()


def test_failure_block_is_bounded_and_names_both_sides():
    text = str(_report())
    block = text.split("W: Not equal to tolerance")[1].split("\n\n")[0]
    shown = [ln for ln in block.splitlines() if "analytic=" in ln]
    assert len(shown) == MAX_SHOWN_ENTRIES
    assert "numeric=" in shown[0] and "rel_err=" in shown[0]
    assert "Mismatched elements: 12 / 20 checked" in block
    assert "likely cause: sign" in block
    assert "b: Not equal" not in text  # a passing parameter gets no block


def test_raise_for_failures_carries_the_report():
    report = _report()
    with pytest.raises(GradientMismatchError) as info:
        report.raise_for_failures()
    assert info.value.report is report and "W" in str(info.value)
    ok = Report(params={"b": _param("b", 0)}, passed=True)
    assert ok.raise_for_failures() is ok


def test_an_incomplete_report_without_failures_says_incomplete_not_failed():
    params = {"b": _param("b", 0)}
    report = Report(
        params=params, passed=False, complete=False, incomplete_reason="CheckAborted: time"
    )
    line = report.summary_line()
    assert line.startswith("gradprobe: gradient check INCOMPLETE: CheckAborted: time (1 parameter")
    assert "FAILED" not in line
    empty = Report(params={}, passed=False, complete=False, incomplete_reason="interrupted")
    text = str(empty)
    assert "INCOMPLETE: interrupted (0 parameters finished" in text
    assert "(no parameter was finished)" in text and "parameter  shape" not in text
    # A failure found before the stop is still a failure.
    failing = Report(
        params={"W": _param("W", 2)}, passed=False, complete=False, incomplete_reason="budget"
    )
    assert failing.summary_line().startswith("gradprobe: gradient check FAILED — 1 of 1")
    assert "(INCOMPLETE: budget)" in failing.summary_line()
