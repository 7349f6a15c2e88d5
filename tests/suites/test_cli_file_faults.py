"""Files as Python reads them (issue 26), through real ``gradprobe`` subprocesses: a target's
coding declaration is honoured, a suite or baseline that is not UTF-8 or not a JSON object
exits 2 naming the file, every single mutation of a baseline loads or is refused with a
message, and a target may lie outside the suite's folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .test_cli_faults import MODELS, _cli, _setup

# -- files as Python reads them --------------------------------------------------------------
LATIN1_TARGET = (
    b"# -*- coding: latin-1 -*-\n# caf\xe9\nimport numpy as np\nimport gradprobe\n\n\n"
    b'def good():\n    """r\xe9sum\xe9"""\n    return gradprobe.Problem(\n'
    b"        loss=lambda v: float(v @ v), grad=lambda v: 2 * v, params=np.ones(3)\n    )\n"
)


def test_a_target_with_a_coding_declaration_is_read_as_python_reads_it(tmp_path):
    (tmp_path / "lat.py").write_bytes(LATIN1_TARGET)
    proc = _cli("check", "lat.py:good", "--no-isolate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "gradprobe.toml").write_text('[checks.a]\ntarget = "lat.py:good"\n')
    proc = _cli("run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_target_that_is_not_utf8_and_declares_nothing_exits_2_with_the_fix(tmp_path):
    (tmp_path / "bad.py").write_bytes(LATIN1_TARGET.split(b"\n", 1)[1])  # no declaration
    proc = _cli("check", "bad.py:good", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "bad.py line " in proc.stderr and "coding: latin-1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_suite_that_is_not_utf8_exits_2_naming_the_file_and_line(tmp_path):
    _setup(tmp_path, "")
    (tmp_path / "gradprobe.toml").write_bytes(b'[checks.a]\ntarget = "models.py:good"\n# caf\xe9\n')
    proc = _cli("run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "gradprobe.toml line 3: not valid UTF-8 (byte 0xe9" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"[]", "is not a gradprobe run result: expected a JSON object, found list"),
        (b"null", "is not a gradprobe run result: expected a JSON object, found null"),
        (b"\xff\xfe{}", "is not UTF-8 text (byte 0xff at offset 0)"),
        (b'{"kind": "gradprobe.suite", "schema', "is not readable JSON"),
        (
            b'{"kind": "gradprobe.suite", "schema_version": 1, "checks": '
            b'[{"name": "a", "status": "passed", "report": "x"}]}',
            "is not a gradprobe run result",
        ),
    ],
    ids=["list", "null", "not-utf8", "truncated", "report-not-an-object"],
)
def test_a_corrupted_baseline_exits_2_naming_the_file(tmp_path, content, expect):
    _setup(tmp_path, '[checks.a]\ntarget = "models.py:good"\n')
    (tmp_path / "b.json").write_bytes(content)
    proc = _cli("run", "--baseline", "b.json", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--baseline: b.json {expect}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def _mutations(data, path=()):
    """Every value of the JSON tree replaced, one at a time, by null, a list, a string and a
    number, and every key removed: (path, mutated copy)."""
    import copy

    def replaced(value):
        out = copy.deepcopy(data)
        node = out
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return out

    if path:
        for value in (None, [], "x", 7, KeyError):
            yield path, lambda v=value: replaced(v)
    node = data
    for key in path:
        node = node[key]
    if isinstance(node, dict):
        for key in node:
            yield from _mutations(data, (*path, key))
    elif isinstance(node, list):
        for i in range(min(len(node), 2)):
            yield from _mutations(data, (*path, i))


def test_every_mutation_of_a_baseline_loads_or_is_refused_with_a_message(tmp_path):
    import gradprobe
    from gradprobe.errors import InvalidInputError
    from gradprobe.suites.baseline import load_baseline
    from gradprobe.suites.runner import CheckOutcome, SuiteResult

    x = np.array([0.3, -0.7])
    report = gradprobe.check(lambda v: float(v @ v), lambda v: 2 * v, x)
    result = SuiteResult(outcomes=(CheckOutcome("a", "m.py:f", "passed", report=report),))
    valid = result.to_dict()
    n = 0
    for where, mutate in _mutations(valid):
        (tmp_path / "b.json").write_text(json.dumps(mutate()), encoding="utf-8")
        n += 1
        try:
            load_baseline(tmp_path / "b.json")
        except InvalidInputError as exc:
            assert "b.json" in str(exc), where
    assert n > 100


def test_a_target_outside_the_suites_folder_is_allowed(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "src" / "models.py").write_text(MODELS, encoding="utf-8")
    (tmp_path / "tests" / "gradprobe.toml").write_text(
        f'[checks.up]\ntarget = "../src/models.py:good"\n\n'
        f'[checks.absolute]\ntarget = "{tmp_path / "src" / "models.py"}:good"\n',
        encoding="utf-8",
    )
    proc = _cli("run", "tests/gradprobe.toml", "--no-isolate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed — exit code 0" in proc.stdout
