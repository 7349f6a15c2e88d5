"""The package's shape: layers whose imports only point down, one job per module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gradprobe

ROOT = Path(gradprobe.__file__).resolve().parent
MAX_LINES = 500


def test_imports_only_point_down():
    pytest.importorskip("importlinter")
    # The contracts live in pyproject.toml ([tool.importlinter]); run from the repository root.
    repo = ROOT.parents[1]
    if not (repo / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run(
        [str(lint)], cwd=repo, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_says_its_job_and_stays_small(path):
    text = path.read_text()
    n = text.count("\n")
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)}: {n} lines (at most {MAX_LINES})"
    if path.name != "_version.py":
        assert ast.get_docstring(ast.parse(text)), (
            f"{path.relative_to(ROOT)} has no module docstring saying its job"
        )
