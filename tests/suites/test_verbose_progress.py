"""--verbose names each parameter as its check begins, isolated or not."""

from __future__ import annotations

import os

import pytest

from ..helpers import run_cli, write_suite

SUITE = """
[checks.good]
target = "models.py:good"
"""


@pytest.mark.parametrize("isolate", [True, False])
def test_verbose_lines_name_each_parameter(tmp_path, isolate):
    suite = write_suite(tmp_path, SUITE)
    args = ["run", str(suite), "--verbose"] + ([] if isolate else ["--no-isolate"])
    proc = run_cli(*args, cwd=tmp_path, env={**os.environ, "CI": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "parameter x (1/2)" in proc.stderr and "parameter w (2/2)" in proc.stderr
    assert "loss evaluations in" in proc.stdout  # per-parameter evaluations and wall time
