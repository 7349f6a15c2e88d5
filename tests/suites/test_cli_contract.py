"""The command line's promises, through real subprocesses: output paths checked before any
work, Ctrl-C writes what finished (exit 130), crashes show the user's frames only, quiet and
verbose, NO_COLOR, closed pipes, module targets from the current folder."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

import gradprobe
from gradprobe.suites.runner import SuiteResult

from ..helpers import (
    interrupt_cli,
    run_cli,
    run_cli_script,
    run_cli_tty,
    write_models,
    write_suite,
)

INTERRUPTED_SUITE = """
[checks.first]
target = "models.py:good"

[checks.second]
target = "models.py:slow_marked"

[checks.third]
target = "models.py:good"
"""

#: An SGR escape that sets a colour (30-37, 90-97, 38;...): what NO_COLOR forbids.
COLOUR = re.compile(r"\x1b\[(?:\d+;)*(?:3[0-8]|9[0-7])(?:;\d+)*m")


# -- output paths ---------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["demo", "check", "run"])
@pytest.mark.parametrize(
    ("flag", "path", "expect"),
    [
        ("--json", "missing/r.json", "folder 'missing' does not exist"),
        ("--junit", "existing_folder", "is a folder"),
        ("--plot", "/proc/gradprobe-test.png", "cannot be written"),
    ],
)
def test_unwritable_output_paths_exit_2_before_any_check_runs(
    tmp_path, command, flag, path, expect
):
    if command == "demo" and flag == "--junit":
        pytest.skip("demo has no --junit")
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc (a path nobody, root included, can create a file in)")
    write_suite(tmp_path, '[checks.a]\ntarget = "models.py:slow_marked"\n')
    (tmp_path / "existing_folder").mkdir()
    args = {"demo": ["demo"], "check": ["check", "models.py:slow_marked"], "run": ["run"]}
    proc = run_cli(*args[command], flag, path, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"gradprobe: error: {flag} {path}: {expect}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "started.txt").exists()  # nothing ran


@pytest.mark.timeout(60)
def test_two_flags_writing_one_file_exit_2(tmp_path):
    proc = run_cli("demo", "--json", "out.x", "--plot", "./out.x", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--json and --plot both write './out.x'" in proc.stderr


@pytest.mark.timeout(120)
def test_a_write_that_fails_at_the_end_keeps_the_results_and_the_other_files(tmp_path):
    write_models(tmp_path)
    (tmp_path / "out").mkdir()
    proc = run_cli(
        "check",
        "models.py:removes_folder",
        "--no-isolate",
        "--json",
        "out/r.json",
        "--junit",
        "j.xml",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    # The results were printed in full, with the exit code the process exits with.
    assert "1 passed — exit code 2" in proc.stdout
    assert "gradprobe: error: --json out/r.json: could not be written" in proc.stderr
    assert "Traceback" not in proc.stderr
    case = ET.parse(tmp_path / "j.xml").getroot().find("testsuite/testcase")
    assert case.get("name") == "removes_folder" and case.find("error") is None


# -- Ctrl-C ----------------------------------------------------------------------------------
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("isolate", "group"),
    [(True, False), (True, True), (False, False)],
    ids=["worker, SIGINT to the parent", "worker, Ctrl-C to the group", "no-isolate"],
)
def test_ctrl_c_writes_what_finished_and_exits_130(tmp_path, isolate, group):
    write_suite(tmp_path, INTERRUPTED_SUITE)
    args = ["run", "--json", "r.json", "--junit", "j.xml"] + ([] if isolate else ["--no-isolate"])
    proc = interrupt_cli(*args, cwd=tmp_path, marker=tmp_path / "started.txt", group=group)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    notices = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(notices) == 1 and "interrupted (Ctrl-C) during second" in notices[0], proc.stderr
    assert "── [1/3] first (models.py:good): passed ──" in proc.stdout
    assert "── [2/3] second (models.py:slow_marked): INTERRUPTED ──" in proc.stdout
    assert "1 passed, 1 interrupted, 1 not run — exit code 130" in proc.stdout
    assert "not run (interrupted): third" in proc.stdout

    result = SuiteResult.from_dict(json.loads((tmp_path / "r.json").read_text()))
    assert [(o.name, o.status) for o in result.outcomes] == [
        ("first", "passed"),
        ("second", "interrupted"),
    ]
    partial = result.by_name["second"].report
    assert partial is not None and not partial.complete
    assert "interrupted" in partial.incomplete_reason
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase")}
    assert set(cases) == {"first", "second", "third"}
    assert cases["second"].find("error").get("type") == "Interrupted"
    assert cases["third"].find("skipped") is not None  # not run: a skipped testcase
    assert result.not_run == ("third",)


@pytest.mark.timeout(120)
def test_ctrl_c_in_check(tmp_path):
    write_models(tmp_path)
    proc = interrupt_cli(
        "check", "models.py:slow_marked", "--no-isolate", "-q", "--json", "r.json",
        cwd=tmp_path, marker=tmp_path / "started.txt",
    )  # fmt: skip
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert "1 interrupted — exit code 130" in proc.stdout and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["exit_code"] == 130


def test_ctrl_c_in_demo_prints_and_writes_the_partial_report(tmp_path, monkeypatch, capsys):
    from gradprobe import cli
    from gradprobe.cli import demo
    from gradprobe.examples import make_mlp
    from gradprobe.suites.outcome import EXIT_INTERRUPT

    m = make_mlp()
    partial = gradprobe.check(m.loss, m.grad, m.params, samples=8)
    partial = dataclasses.replace(
        partial,
        params={"W1": partial.params["W1"]},
        complete=False,
        incomplete_reason="interrupted (KeyboardInterrupt)",
        passed=False,
    )

    def interrupted_check(*args, **kwargs):
        exc = KeyboardInterrupt()
        exc.partial_report = partial  # as the engine attaches it
        raise exc

    monkeypatch.setattr(demo, "check", interrupted_check)
    code = cli.main(["demo", "--json", str(tmp_path / "d.json")])
    out, err = capsys.readouterr()
    assert code == EXIT_INTERRUPT == 130
    assert "gradient check INCOMPLETE: interrupted (KeyboardInterrupt)" in out and "W1" in out
    assert err.startswith("gradprobe: interrupted (Ctrl-C)")
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["complete"] is False and [p["name"] for p in data["params"]] == ["W1"]


# -- crashes, usage errors -------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("isolate", [True, False])
def test_a_crash_exits_3_with_the_users_frames_only(tmp_path, isolate):
    write_models(tmp_path)
    args = ["check", "models.py:crashing"] + ([] if isolate else ["--no-isolate"])
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Traceback (your code only, most recent call last):" in out
    assert f'File "{tmp_path / "models.py"}"' in out and "in loss" in out
    assert "RuntimeError: boom in the loss" in out and "LossEvaluationError:" in out
    frames = re.findall(r'File "([^"]+)"', out)
    assert frames and not [f for f in frames if "gradprobe" in f.split(os.sep)]


@pytest.mark.timeout(60)
def test_unknown_target_argument_exits_2_naming_the_file_and_line(tmp_path):
    write_suite(tmp_path, '[checks.a]\ntarget = "models.py:bad"\nargs = { scael = 2.0 }\n')
    proc = run_cli("run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("gradprobe: error: gradprobe.toml:3: [checks.a] key 'args'")
    assert "no argument 'scael'; its arguments: ['scale']" in proc.stderr
    proc = run_cli("check", "models.py:bad", "--arg", "scael=2", cwd=tmp_path)
    assert proc.returncode == 2 and "--arg scael=2: bad() (defined at models.py:" in proc.stderr


@pytest.mark.timeout(120)
def test_timeout_message_quotes_the_users_timeout(tmp_path):
    write_models(tmp_path)
    proc = run_cli("check", "models.py:slow", "--timeout", "2", "--no-isolate", cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "time limit of 2 s (timeout=2) reached" in proc.stdout
    assert "gradient check INCOMPLETE: CheckAborted: time limit of 2 s" in proc.stdout
    assert "FAILED" not in proc.stdout


@pytest.mark.timeout(120)
def test_module_target_from_the_folder_holding_it(tmp_path):
    write_models(tmp_path)
    proc = run_cli_script("check", "models:good", "-q", cwd=tmp_path)  # as the installed script
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed — exit code 0" in proc.stdout
    write_suite(tmp_path, '[checks.a]\ntarget = "models:bad"\n')
    proc = run_cli_script("run", "-q", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr


# -- quiet, verbose, colour, pipes -----------------------------------------------------------
@pytest.mark.timeout(120)
def test_demo_quiet_prints_only_the_summary_line():
    proc = run_cli("demo", "-q")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradprobe: gradient check passed (seed 0")
    proc = run_cli("demo", "-q", "--bug", "sign")
    assert proc.returncode == 1 and len(proc.stdout.splitlines()) == 1


@pytest.mark.timeout(120)
def test_run_quiet_prints_the_summary_and_verbose_the_details(tmp_path):
    write_suite(tmp_path, '[defaults]\nisolate = false\n[checks.a]\ntarget = "models.py:good"\n')
    quiet = run_cli("run", "-q", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("summary:") and "parameter  shape" not in quiet.stdout
    verbose = run_cli("run", "-v", cwd=tmp_path, env={**os.environ, "CI": "1"})
    assert verbose.returncode == 0, verbose.stderr
    assert "details:" in verbose.stdout and "timings: compile" in verbose.stdout
    assert re.search(r"  w \(2, 3\) float64: 6 of 6 entries checked one by one", verbose.stdout)
    assert re.search(r"\[1/1\] a: [\d,]+ / [\d,]+ loss evaluations", verbose.stderr)
    assert run_cli("run", "-q", "-v", cwd=tmp_path).returncode == 2  # one or the other


@pytest.mark.timeout(180)
def test_colour_on_a_terminal_and_none_with_no_color(tmp_path):
    pytest.importorskip("rich")
    write_suite(tmp_path, '[checks.a]\ntarget = "models.py:bad"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NO_COLOR", "TERM")}
    code, out = run_cli_tty("run", cwd=tmp_path, env={**env, "TERM": "xterm"})
    assert code == 1 and COLOUR.search(out), out[-2000:]
    code, out = run_cli_tty("run", cwd=tmp_path, env={**env, "TERM": "xterm", "NO_COLOR": "1"})
    assert code == 1 and "FAILED" in out
    assert not COLOUR.search(out), [m.group(0) for m in COLOUR.finditer(out)][:5]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("bug", "code"), [(None, 0), ("sign", 1)])
def test_a_closed_pipe_exits_quietly_with_the_results_code(bug, code):
    args = [sys.executable, "-m", "gradprobe", "demo"] + (["--bug", bug] if bug else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"model: ")
    proc.stdout.close()  # `gradprobe demo | head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=100) == code, err
    assert err == ""


@pytest.mark.timeout(120)
def test_a_closed_pipe_still_writes_the_outputs_of_a_run(tmp_path):
    write_suite(tmp_path, '[defaults]\nisolate = false\n[checks.a]\ntarget = "models.py:bad"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradprobe", "run", "--json", "r.json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=100) == 1, err
    assert err == "" and json.loads((tmp_path / "r.json").read_text())["exit_code"] == 1
