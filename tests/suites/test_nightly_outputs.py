"""JUnit XML, baselines, plots and the progress display, without subprocesses."""

from __future__ import annotations

import dataclasses
import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import gradprobe
from gradprobe.errors import InvalidInputError
from gradprobe.suites.baseline import compare, load_baseline
from gradprobe.suites.junit import junit_xml
from gradprobe.suites.progress import ProgressDisplay, progress_wanted
from gradprobe.suites.runner import CheckOutcome, SuiteResult


def _report(scale=1.0, seed=0):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 4))
    params = {"a": rng.standard_normal(4), "b": rng.standard_normal((3, 2))}

    def loss(p):
        return float(np.tanh(A @ p["a"]).sum() + np.sum(p["b"] ** 3))

    def grad(p):
        return {"a": A.T @ (1 - np.tanh(A @ p["a"]) ** 2), "b": scale * 3 * p["b"] ** 2}

    return gradprobe.check(loss, grad, params, seed=seed)


def _result(**statuses):
    outcomes = []
    for name, status in statuses.items():
        report = _report(scale=1.5 if status == "failed" else 1.0)
        outcomes.append(
            CheckOutcome(
                name=name,
                target=f"models.py:{name}",
                status=status,
                message="" if status in ("passed", "failed") else f"{status}: \x07 <&> detail",
                report=report if status != "crashed" else None,
                duration=0.25,
                reproduce=f"gradprobe run s.toml --check {name} --seed 0",
            )
        )
    return SuiteResult(outcomes=tuple(outcomes), suite="s.toml", versions={"numpy": "x"})


def test_junit_counts_and_elements_parse():
    result = _result(ok="passed", bad="failed", boom="crashed", slow="aborted", inp="error")
    root = ET.fromstring(junit_xml(result, name="nightly"))
    ts = root.find("testsuite")
    assert ts.get("name") == "nightly"
    assert [ts.get(k) for k in ("tests", "failures", "errors", "skipped")] == ["5", "1", "3", "0"]
    assert root.get("tests") == "5" and float(ts.get("time")) == pytest.approx(1.25)
    cases = {c.get("name"): c for c in ts.iter("testcase")}
    assert all(c.get("classname") == "gradprobe.nightly" for c in cases.values())
    assert cases["bad"].find("failure").get("type") == "GradientMismatch"
    assert "Mismatched elements" in cases["bad"].find("failure").text
    assert cases["boom"].find("error").get("type") == "Crash"
    assert cases["slow"].find("error").get("type") == "Timeout"
    assert cases["inp"].find("error").get("type") == "InvalidInput"
    assert "<&>" in cases["boom"].find("error").text  # escaped and read back; \x07 removed
    assert cases["ok"].find("failure") is None and cases["ok"].find("error") is None
    props = {p.get("name"): p.get("value") for p in ts.find("properties")}
    assert props["numpy_version"] == "x"


def test_suite_result_json_round_trip(tmp_path):
    result = _result(ok="passed", bad="failed", boom="crashed")
    again = SuiteResult.from_dict(result.to_dict())
    assert again.to_dict() == result.to_dict()
    assert again.exit_code == 3 and again.by_name["bad"].exit_code == 1
    with pytest.raises(ValueError, match="schema_version"):
        SuiteResult.from_dict({**result.to_dict(), "schema_version": 99})


def test_baseline_flags_growth_new_and_missing_checks(tmp_path):
    before = _result(a="passed", gone="passed")
    grown = dataclasses.replace(
        before.outcomes[0].report.params["b"],
        max_rel_error=1e-3,
        max_rel_error_resolved=1e-3,
        passed=True,
    )
    report = before.outcomes[0].report
    report = dataclasses.replace(report, params={**report.params, "b": grown})
    now = SuiteResult(
        outcomes=(
            dataclasses.replace(before.outcomes[0], report=report),
            dataclasses.replace(before.outcomes[0], name="new"),
        )
    )
    cmp = compare(now, before)
    assert [(r.check, r.param, r.passed) for r in cmp.regressions] == [("a", "b", True)]
    assert cmp.appeared == ("new",) and cmp.disappeared == ("gone",)
    assert cmp.has_regressions and any("REGRESSION a/b" in line for line in cmp.lines())
    assert not compare(now, before, factor=1e12).regressions
    assert not compare(before, before).has_regressions


def test_baseline_newly_failing_and_bad_files(tmp_path):
    before = _result(a="passed")
    now = _result(a="failed")
    assert compare(now, before).newly_failing == ("a",)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_baseline(tmp_path / "none.json")
    (tmp_path / "r.json").write_text(_report().to_json())  # a single report, not a run
    with pytest.raises(InvalidInputError, match="not a gradprobe run result"):
        load_baseline(tmp_path / "r.json")
    with pytest.raises(InvalidInputError, match="regression-factor"):
        compare(now, before, factor=0.5)


def test_report_plot_writes_png(tmp_path):
    report = _report(scale=1.5)
    out = report.plot(tmp_path / "r.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # From JSON (no per-entry errors): still draws the max.
    back = gradprobe.Report.from_dict(report.to_dict())
    assert back.plot(tmp_path / "b.png").stat().st_size > 5000


def test_progress_quiet_in_ci_and_without_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CI", raising=False)
    assert progress_wanted(False, Tty())
    assert not progress_wanted(True, Tty())
    assert not progress_wanted(False, io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not progress_wanted(False, Tty())


def test_progress_callback_reaches_display():
    seen = []
    report = gradprobe.check(
        lambda v: float(v @ v),
        lambda v: 2 * v,
        np.ones(5),
        progress=lambda d, t: seen.append((d, t)),
    )
    assert report.passed and seen[-1][0] == report.n_evaluations
    assert all(d <= t for d, t in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    with ProgressDisplay(False) as bar:  # disabled: methods are no-ops
        bar.start("x")
        bar.update(1, 2)


def test_baseline_ignores_growth_of_noise_floor_entries():
    # A passing parameter's classic maximum may come from entries whose difference is below
    # the round-off floor (float32): noise, not a regression.
    before = _result(a="passed")
    noisy = dataclasses.replace(
        before.outcomes[0].report.params["b"],
        max_rel_error=1.0,
        max_rel_error_resolved=float("nan"),
        passed=True,
    )
    report = before.outcomes[0].report
    report = dataclasses.replace(report, params={**report.params, "b": noisy})
    now = SuiteResult(outcomes=(dataclasses.replace(before.outcomes[0], report=report),))
    assert not compare(now, before).regressions
