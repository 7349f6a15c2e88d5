"""`gradprobe check` and `gradprobe run` through a subprocess: every exit code, outputs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from gradprobe.report.model import Report
from gradprobe.suites.runner import SuiteResult

from ..helpers import run_cli, write_models, write_suite

SUITE = """
[defaults]
seed = 3
isolate = false

[checks.good]
target = "models.py:good"

[checks.bad]
target = "models.py:bad"
args = { scale = 2.0 }
"""


@pytest.mark.timeout(120)
def test_run_all_passing_exits_0_and_prints_versions(tmp_path):
    suite = write_suite(tmp_path, SUITE)
    proc = run_cli("run", str(suite), "-k", "good", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "numpy" in proc.stdout and "numba" in proc.stdout and "gradprobe 0" in proc.stdout
    assert "1 passed" in proc.stdout and "bad" not in proc.stdout


@pytest.mark.timeout(120)
def test_mismatch_exits_1_with_reproduce_command_json_and_junit(tmp_path):
    write_suite(tmp_path, SUITE)
    proc = run_cli(
        "run", "--json", "out.json", "--junit", "out.xml", cwd=tmp_path
    )  # suite found as ./gradprobe.toml
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Not equal to tolerance" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("bad: gradprobe"))
    command = line.split(": ", 1)[1]
    assert command == "gradprobe run gradprobe.toml --check bad --seed 3"
    # The printed command reproduces the failure on its own.
    again = run_cli(*command.split()[1:], cwd=tmp_path)
    assert again.returncode == 1 and "1 failed" in again.stdout and "good" not in again.stdout

    data = json.loads((tmp_path / "out.json").read_text())
    assert data["schema_version"] == 1 and data["exit_code"] == 1
    result = SuiteResult.from_dict(data)
    assert [o.status for o in result.outcomes] == ["passed", "failed"]
    assert result.suite == "gradprobe.toml"  # as given, not the machine's absolute path
    bad = result.by_name["bad"].report
    assert isinstance(bad, Report) and [p.name for p in bad.failures] == ["w"]
    assert SuiteResult.from_dict(result.to_dict()).to_dict() == result.to_dict()

    root = ET.parse(tmp_path / "out.xml").getroot()
    assert root.tag == "testsuites"
    (ts,) = root.findall("testsuite")
    assert (ts.get("tests"), ts.get("failures"), ts.get("errors")) == ("2", "1", "0")
    cases = {c.get("name"): c for c in ts.findall("testcase")}
    assert set(cases) == {"good", "bad"}
    assert cases["good"].find("failure") is None
    failure = cases["bad"].find("failure")
    assert failure is not None and "w" in failure.get("message")
    assert "parameter  shape" in failure.text and "Mismatched elements" in failure.text
    assert float(cases["bad"].get("time")) > 0


@pytest.mark.timeout(120)
def test_config_error_exits_2_naming_file_line_and_key(tmp_path):
    write_suite(tmp_path, SUITE.replace("seed = 3", "seed = 3\nsampels = 5"))
    proc = run_cli("run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "gradprobe.toml:4" in proc.stderr and "'sampels'" in proc.stderr
    assert "Fix:" in proc.stderr


@pytest.mark.timeout(120)
def test_bad_input_inside_a_check_exits_2(tmp_path):
    write_models(tmp_path)
    proc = run_cli("check", "models.py:bad_input", "--no-isolate", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ERROR" in proc.stdout


@pytest.mark.timeout(120)
def test_crash_exits_3(tmp_path):
    write_models(tmp_path)
    proc = run_cli("check", "models.py:crashing", "--no-isolate", cwd=tmp_path)
    assert proc.returncode == 3
    assert "boom in the loss" in proc.stdout and "CRASHED" in proc.stdout


@pytest.mark.timeout(120)
def test_budget_stops_cleanly_with_partial_report_exit_3(tmp_path):
    write_models(tmp_path)
    proc = run_cli(
        "check",
        "models.py:good",
        "--budget",
        "5",
        "--json",
        "r.json",
        "--no-isolate",
        cwd=tmp_path,
    )
    assert proc.returncode == 3
    outcome = SuiteResult.from_dict(json.loads((tmp_path / "r.json").read_text())).outcomes[0]
    assert outcome.status == "aborted" and "budget" in outcome.message
    assert outcome.report is not None and not outcome.report.complete


@pytest.mark.timeout(120)
def test_timeout_in_worker_gives_partial_report_exit_3(tmp_path):
    write_models(tmp_path)
    proc = run_cli("check", "models.py:slow", "--timeout", "1", "--json", "r.json", cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    outcome = SuiteResult.from_dict(json.loads((tmp_path / "r.json").read_text())).outcomes[0]
    assert outcome.status == "aborted" and "timeout" in outcome.message
    assert outcome.report is not None and not outcome.report.complete


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_loss_call_that_never_returns_is_killed_exit_3(tmp_path):
    write_models(tmp_path)
    proc = run_cli("check", "models.py:hangs", "--timeout", "3", cwd=tmp_path, timeout=90)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "worker process was killed" in proc.stdout


@pytest.mark.timeout(60)
def test_usage_errors_exit_2(tmp_path):
    write_models(tmp_path)
    assert run_cli("check", cwd=tmp_path).returncode == 2  # missing TARGET
    proc = run_cli("check", "models.py:nope", cwd=tmp_path)
    assert proc.returncode == 2 and "'nope'" in proc.stderr and "good" in proc.stderr
    proc = run_cli("check", "models.py:not_a_problem", "--no-isolate", cwd=tmp_path)
    assert proc.returncode == 2 and "gradprobe.Problem" in proc.stdout
    proc = run_cli("run", cwd=tmp_path)  # no suite file here
    assert proc.returncode == 2 and "no suite found" in proc.stderr


@pytest.mark.timeout(120)
def test_baseline_regression_exits_1_even_when_passing(tmp_path):
    write_suite(
        tmp_path,
        """
        [defaults]
        isolate = false
        [checks.model]
        target = "models.py:good"
        """,
    )
    assert run_cli("run", "--json", "before.json", cwd=tmp_path).returncode == 0
    (tmp_path / "gradprobe.toml").write_text(
        '[defaults]\nisolate = false\n[checks.model]\ntarget = "models.py:slightly_off"\n'
    )
    proc = run_cli("run", "--baseline", "before.json", "--junit", "j.xml", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "REGRESSION model/w" in proc.stdout and "still passes" in proc.stdout
    case = ET.parse(tmp_path / "j.xml").getroot().find("testsuite/testcase")
    assert case.find("failure").get("type") == "Regression"
    # A factor above the growth: no regression, exit 0.
    proc = run_cli("run", "--baseline", "before.json", "--regression-factor", "1e6", cwd=tmp_path)
    assert proc.returncode == 0 and "no regressions" in proc.stdout


@pytest.mark.timeout(120)
def test_pyproject_tool_table_and_plot(tmp_path):
    write_models(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.gradprobe.defaults]\nisolate = false\n'
        '[tool.gradprobe.checks.good]\ntarget = "models.py:good"\n'
    )
    proc = run_cli("run", "--quiet", "--plot", "p.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "parameter  shape" not in proc.stdout  # quiet: no per-check tables
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
