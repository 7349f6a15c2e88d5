"""What a suite run records and prints: evaluations spent, not-run checks, JUnit class names,
paths as given, a message for every non-passing check, regressions in the totals line, and
the fix texts of a misspelt target or a wrong argument (in process: fast)."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import gradprobe
from gradprobe.cli import main
from gradprobe.errors import SuiteConfigError
from gradprobe.suites.config import load_suite
from gradprobe.suites.junit import junit_xml
from gradprobe.suites.runner import CheckOutcome, SuiteResult, spent_evaluations

from ..helpers import write_suite

SUITE = """
[defaults]
isolate = false
[checks.good]
target = "models.py:good"
[checks.bad]
target = "models.py:bad"
"""


def _report():
    def loss(p):
        return float(np.sum(p["a"] ** 2) + np.sum(p["b"] ** 3))

    def grad(p):
        return {"a": 2 * p["a"], "b": 3 * p["b"] ** 2}

    rng = np.random.default_rng(0)
    return gradprobe.check(loss, grad, {"a": rng.standard_normal(4), "b": rng.standard_normal(3)})


def test_a_stopped_dispatched_check_counts_what_it_kept_not_the_block_charged():
    report = _report()
    kept = sum(p.n_evaluations for p in report.params.values())
    one_param = {"a": report.params["a"]}
    settings = {**report.settings, "executor": "auto (serial + joblib chunks (loky, 2 workers))"}
    stopped = dataclasses.replace(
        report, params=one_param, complete=False, n_evaluations=131_082, settings=settings
    )
    assert spent_evaluations(stopped).n_evaluations == report.params["a"].n_evaluations
    assert "131,082" not in str(spent_evaluations(stopped))
    # Counted one by one in process (exact), or complete: unchanged.
    serial = dataclasses.replace(stopped, settings={**settings, "executor": "auto (serial)"})
    assert spent_evaluations(serial).n_evaluations == 131_082
    assert spent_evaluations(report) is report
    assert kept <= report.n_evaluations


def test_not_run_checks_are_junit_skipped_and_classname_is_not_doubled():
    outcome = CheckOutcome(name="a", target="m.py:a", status="interrupted", message="stopped")
    result = SuiteResult(outcomes=(outcome,), suite="gradprobe.toml", not_run=("b", "c"))
    root = ET.fromstring(junit_xml(result, name="gradprobe"))
    ts = root.find("testsuite")
    assert [ts.get(k) for k in ("tests", "errors", "skipped")] == ["3", "1", "2"]
    cases = {c.get("name"): c for c in ts.iter("testcase")}
    assert list(cases) == ["a", "b", "c"]
    assert cases["b"].find("skipped") is not None and cases["a"].find("skipped") is None
    assert {c.get("classname") for c in cases.values()} == {"gradprobe"}
    assert (
        ET.fromstring(junit_xml(result, name="nightly")).find("testsuite/testcase").get("classname")
        == "gradprobe.nightly"
    )
    # The JSON keeps them too, and reads them back.
    assert SuiteResult.from_dict(result.to_dict()).not_run == ("b", "c")


@pytest.mark.timeout(120)
def test_outputs_record_paths_as_given_and_a_message_for_a_failure(tmp_path, monkeypatch):
    write_suite(tmp_path, SUITE)
    monkeypatch.chdir(tmp_path)
    code = main(["run", "gradprobe.toml", "-q", "--json", "out.json", "--junit", "out.xml"])
    assert code == 1
    text = (tmp_path / "out.json").read_text()
    assert str(tmp_path) not in text and str(tmp_path) not in (tmp_path / "out.xml").read_text()
    data = json.loads(text)
    assert data["suite"] == "gradprobe.toml"
    bad = next(c for c in data["checks"] if c["name"] == "bad")
    assert bad["message"].startswith("gradient mismatch in w (max rel err ")
    assert all(c["message"] for c in data["checks"] if c["status"] != "passed")


@pytest.mark.timeout(120)
def test_totals_line_names_the_regressions(tmp_path, monkeypatch, capsys):
    write_suite(
        tmp_path, '[defaults]\nisolate = false\n[checks.model]\ntarget = "models.py:good"\n'
    )
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-q", "--json", "before.json"]) == 0
    (tmp_path / "gradprobe.toml").write_text(
        '[defaults]\nisolate = false\n[checks.model]\ntarget = "models.py:slightly_off"\n'
    )
    capsys.readouterr()
    assert main(["run", "-q", "--baseline", "before.json"]) == 1
    out = capsys.readouterr().out
    assert "1 passed, 1 regressed against the baseline (model) — exit code 1" in out


def test_totals_line_names_newly_failing_and_missing_checks(tmp_path, monkeypatch, capsys):
    write_suite(tmp_path, SUITE)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-q", "--json", "before.json"]) == 1
    data = json.loads((tmp_path / "before.json").read_text())
    data["checks"][1]["status"] = "passed"  # "bad" passed then
    gone = dict(data["checks"][0], name="gone")  # a check the suite no longer has
    data["checks"].append(gone)
    (tmp_path / "before.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["run", "-q", "--baseline", "before.json"]) == 1
    out = capsys.readouterr().out
    assert (
        "1 passed, 1 failed, 1 regressed against the baseline (bad), 1 in the baseline "
        "missing from this run (gone) — exit code 1"
    ) in out


def test_misspelt_target_offers_only_functions(tmp_path):
    write_suite(tmp_path, '[checks.x]\ntarget = "models.py:god"\n')
    with pytest.raises(SuiteConfigError) as info:
        load_suite(tmp_path / "gradprobe.toml")
    listed = str(info.value).split("functions there: ")[1]
    assert "'good'" in listed and "'bad'" in listed
    for module in ("'np'", "'gradprobe'", "'os'", "'A'"):
        assert module not in listed


def test_wrong_argument_fix_is_built_from_the_functions_parameters(tmp_path, monkeypatch, capsys):
    write_suite(tmp_path, '[checks.x]\ntarget = "models.py:bad"\nargs = { bug = "sign" }\n')
    with pytest.raises(SuiteConfigError, match=r"args = \{ scale = 1\.5 \}") as info:
        load_suite(tmp_path / "gradprobe.toml")
    assert 'bug = "sign" }' not in str(info.value).split("Fix:")[1]
    monkeypatch.chdir(tmp_path)
    assert main(["check", "models.py:slow_marked", "--arg", "bug=1"]) == 2
    err = capsys.readouterr().err
    assert '--arg marker="started.txt" --arg n=40 --arg delay=0.05' in err
