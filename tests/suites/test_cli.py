"""The command line, through a subprocess: output and exit codes."""

from __future__ import annotations

import json

import pytest

from ..helpers import run_cli


def test_demo_passes_with_exit_0():
    proc = run_cli("demo")
    assert proc.returncode == 0, proc.stderr
    assert "gradient check passed" in proc.stdout
    assert "W1" in proc.stdout


@pytest.mark.parametrize("bug", ["transpose", "sign"])
def test_demo_with_bug_exits_1(bug):
    proc = run_cli("demo", "--bug", bug)
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout and "Not equal to tolerance" in proc.stdout


def test_usage_error_exits_2():
    proc = run_cli("demo", "--bug", "not-a-bug")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_input_error_exits_2():
    proc = run_cli("demo", "--samples", "2.5")
    assert proc.returncode == 2
    assert "samples: expected a fraction" in proc.stderr


def test_no_command_exits_2():
    assert run_cli().returncode == 2


def test_demo_json_output(tmp_path):
    path = tmp_path / "r.json"
    proc = run_cli("demo", "--bug", "zero", "--json", str(path))
    assert proc.returncode == 1
    data = json.loads(path.read_text())
    assert [p["name"] for p in data["params"] if not p["passed"]] == ["b1"]
