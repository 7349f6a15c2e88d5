"""Suite files: shape, defaults and overrides, selection, and config errors that say where."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest

import gradprobe
from gradprobe.errors import InvalidInputError, SuiteConfigError
from gradprobe.suites.config import load_suite
from gradprobe.suites.problem import Problem
from gradprobe.suites.runner import run_check
from gradprobe.suites.select import select_checks
from gradprobe.suites.targets import parse_target

from ..helpers import write_models, write_suite

GOOD = """
[defaults]
seed = 1
samples = 4
timeout = 30

[checks.mlp]
target = "models.py:good"

[checks.mlp_bug]
target = "models.py:bad"
args = { scale = 3.0 }
samples = "all"
budget = 500

[checks.conv]
target = "models.py:good"
isolate = false
"""


def test_defaults_and_overrides_merge(tmp_path):
    suite = load_suite(write_suite(tmp_path, GOOD))
    assert suite.names == ("mlp", "mlp_bug", "conv")
    mlp, bug, conv = suite.checks
    assert dict(mlp.options) == {"seed": 1, "samples": 4, "timeout": 30}
    assert dict(bug.options) == {"seed": 1, "samples": "all", "timeout": 30, "budget": 500}
    assert dict(bug.args) == {"scale": 3.0} and bug.isolate and not conv.isolate
    assert mlp.target.file == str((tmp_path / "models.py").resolve())


def test_folder_finds_suite_file(tmp_path):
    write_suite(tmp_path, GOOD)
    assert load_suite(tmp_path).path == str((tmp_path / "gradprobe.toml").resolve())


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("mlp", ["mlp", "mlp_bug"]),
        ("mlp and not bug", ["mlp"]),
        ("conv or bug", ["mlp_bug", "conv"]),
        ("not (mlp or conv)", []),
    ],
)
def test_keyword_selection(tmp_path, expr, names):
    suite = load_suite(write_suite(tmp_path, GOOD))
    assert [c.name for c in select_checks(suite, expr)] == names


def test_exact_names_and_bad_expressions(tmp_path):
    suite = load_suite(write_suite(tmp_path, GOOD))
    assert [c.name for c in select_checks(suite, None, ["mlp"])] == ["mlp"]
    with pytest.raises(InvalidInputError, match="no check named"):
        select_checks(suite, None, ["nope"])
    for bad in ("mlp and", "(mlp", "mlp )"):
        with pytest.raises(InvalidInputError, match="-k"):
            select_checks(suite, bad)


def _error(tmp_path, body):
    path = write_suite(tmp_path, body)
    with pytest.raises(SuiteConfigError) as info:
        load_suite(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:") and "Fix" in msg  # the path as it was given
    return msg


def test_unknown_key_names_file_line_and_key(tmp_path):
    msg = _error(tmp_path, GOOD.replace("budget = 500", "budgte = 500"))
    assert "gradprobe.toml:14" in msg and "[checks.mlp_bug] key 'budgte'" in msg
    assert "'budget'" in msg  # the valid keys are listed


@pytest.mark.parametrize(
    ("old", "new", "line", "key"),
    [
        ("seed = 1", "seed = -1", 3, "seed"),
        ("samples = 4", "samples = -1", 4, "samples"),
        ("timeout = 30", 'timeout = "soon"', 5, "timeout"),
        ("budget = 500", "budget = 2.5", 14, "budget"),
        ("isolate = false", 'isolate = "no"', 18, "isolate"),
        ("args = { scale = 3.0 }", "args = 3", 12, "args"),
        # Every option of gradprobe.check is judged by check's own validator.
        ("budget = 500", 'budget = 500\nmethod = "backward"', 15, "method"),
        ("seed = 1", "seed = 1\nprobes = -2", 4, "probes"),
        ("samples = 4", "samples = { x = 1.5 }", 4, "samples"),
        ("timeout = 30", "timeout = 30\nn_jobs = 0", 6, "n_jobs"),
        ("seed = 1", "seed = 1\npromote = 1", 4, "promote"),
        ("budget = 500", 'budget = 500\nmethod = "Central"', 15, "method"),
        ("args = { scale = 3.0 }", 'args = { scale = 3.0 }\nprobes = "many"', 13, "probes"),
    ],
)
def test_bad_values_name_line_key_and_fix(tmp_path, old, new, line, key):
    msg = _error(tmp_path, GOOD.replace(old, new))
    assert f"gradprobe.toml:{line}" in msg and f"key {key!r}" in msg and "write" in msg


def test_progress_is_not_a_suite_key(tmp_path):
    msg = _error(tmp_path, GOOD.replace("seed = 1", "seed = 1\nprogress = 5"))
    assert "gradprobe.toml:4" in msg and "key 'progress'" in msg and "cannot set" in msg


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        ("{ scael = 3.0 }", r"bad\(\) \(defined at \S*models\.py:\d+\)"),
        ("{ scael = 3.0 }", "takes no argument 'scael'; its arguments: ['scale']"),
        ("{ scale = 3.0, extra = 1 }", "no argument 'extra'"),
    ],
)
def test_unknown_args_key_is_a_config_error_with_line(tmp_path, args, expect):
    # Found when the file is read (no import of models.py), not when the check runs.
    msg = _error(tmp_path, GOOD.replace("args = { scale = 3.0 }", f"args = {args}"))
    assert "gradprobe.toml:12: [checks.mlp_bug] key 'args'" in msg
    assert re.search(expect, msg) or expect in msg


def test_missing_required_argument_is_a_config_error(tmp_path):
    body = GOOD + '\n[checks.needs]\ntarget = "extra.py:needs_n"\n'
    (tmp_path / "extra.py").write_text("def needs_n(n, *, scale=1.0):\n    return n\n")
    msg = _error(tmp_path, body)
    assert "gradprobe.toml:20: [checks.needs]" in msg and "needs the argument(s) ['n']" in msg


@pytest.mark.parametrize(
    ("lines", "line", "key"),
    [
        ("samples = 0\nprobes = 0", 22, "samples"),
        ("probes = false\nslice_probes = true", 23, "slice_probes"),
    ],
)
def test_options_that_contradict_each_other_are_caught_at_load(tmp_path, lines, line, key):
    msg = _error(tmp_path, GOOD + f'\n[checks.odd]\ntarget = "models.py:good"\n{lines}\n')
    assert f"gradprobe.toml:{line}: [checks.odd] key {key!r}" in msg


def test_a_relative_suite_path_is_named_as_given(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    write_suite(tmp_path / "sub", GOOD.replace("budget = 500", "budgte = 500"))
    monkeypatch.chdir(tmp_path)
    for given, shown in [
        ("sub/gradprobe.toml", "sub/gradprobe.toml"),
        ("sub", "sub/gradprobe.toml"),
    ]:
        with pytest.raises(SuiteConfigError) as info:
            load_suite(given)
        assert str(info.value).startswith(f"{shown}:14: [checks.mlp_bug] key 'budgte'")
    monkeypatch.chdir(tmp_path / "sub")
    with pytest.raises(SuiteConfigError) as info:
        load_suite()
    assert str(info.value).startswith("gradprobe.toml:14: ")


def test_missing_target_key(tmp_path):
    msg = _error(tmp_path, GOOD.replace('target = "models.py:good"\nisolate', "isolate"))
    assert "[checks.conv]" in msg and "missing key 'target'" in msg and "gradprobe.toml:16" in msg


@pytest.mark.parametrize(
    ("target", "expect"),
    [
        ("nothere.py:good", "does not exist"),
        ("models.py:absent", "defines no module-level 'absent'"),
        ("no_such_pkg_xyz.mod:f", "cannot be found"),
        ("models.py", "expected 'path/to/models.py:function'"),
    ],
)
def test_unresolvable_targets(tmp_path, target, expect):
    msg = _error(tmp_path, GOOD.replace('"models.py:good"', f'"{target}"', 1))
    assert "gradprobe.toml:8" in msg and "key 'target'" in msg and expect in msg


def test_syntax_error_and_unknown_table(tmp_path):
    msg = _error(tmp_path, GOOD + "\n[checks.x\n")
    assert "invalid TOML" in msg and "line" in msg
    msg = _error(tmp_path, GOOD + "\n[extras]\nfoo = 1\n")
    assert "unknown top-level key 'extras'" in msg and "gradprobe.toml:20" in msg


def test_no_checks(tmp_path):
    assert "no checks" in _error(tmp_path, "[defaults]\nseed = 0\n")


def test_pyproject_lines_use_tool_prefix(tmp_path):
    write_models(tmp_path)
    path = tmp_path / "pyproject.toml"
    path.write_text(
        textwrap.dedent(
            """
            [project]
            name = "x"

            [tool.gradprobe.checks.a]
            target = "models.py:good"
            seeed = 2
            """
        )
    )
    with pytest.raises(SuiteConfigError, match=r"pyproject.toml:7: \[tool.gradprobe.checks.a\]"):
        load_suite(tmp_path)


def test_module_target_and_problem_type(tmp_path):
    t = parse_target("gradprobe.examples:make_mlp")
    t.find_problem()
    with pytest.raises(InvalidInputError, match="expected the function to return"):
        t.problem()  # returns an ExampleModel, not a Problem
    write_models(tmp_path)
    problem = parse_target("models.py:good", base_dir=tmp_path).problem()
    assert isinstance(problem, Problem)


def test_run_check_in_process_and_unknown_option_from_problem(tmp_path):
    suite = load_suite(write_suite(tmp_path, GOOD))
    conv = suite.checks[2]
    outcome = run_check(conv)
    assert outcome.status == "passed" and outcome.report.seed == 1
    assert outcome.report.params["w"].n_checked == 4


def test_problem_options_and_immutability():
    x = np.array([1.0, -2.0, 0.5])
    p = gradprobe.Problem(loss=lambda v: float(v @ v), grad=lambda v: 2 * v, params=x, seed=4)
    assert p.run().seed == 4 and p.run(seed=7).seed == 7
    assert p.with_options(samples=2).run().params["x"].n_checked == 2
    with pytest.raises(AttributeError):
        p.loss = None
    with pytest.raises(InvalidInputError, match="unknown option"):
        gradprobe.Problem(loss=lambda v: 0.0, grad=None, params=x, sampels=3)
    with pytest.raises(InvalidInputError, match="loss"):
        gradprobe.Problem(loss=3, grad=None, params=x)
