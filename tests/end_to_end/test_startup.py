"""What a new process loads: ``import gradprobe`` imports no numba, joblib, threadpoolctl, rich
or matplotlib; a check of a plain Python loss loads neither numba nor joblib and reports no
compile time; a jitted loss loads the kernels and reports the time that took. (Timings are
benchmarks/bench_startup.py's business, not the tests'.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("numba", "llvmlite", "joblib", "threadpoolctl", "rich", "matplotlib", "scipy")


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, returned here."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


LOADED = f"""
def loaded():
    return sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
"""


@pytest.mark.timeout(120)
def test_import_gradprobe_loads_no_heavy_dependency():
    out = _fresh(
        "import json, sys\n"
        + LOADED
        + """
import gradprobe
import gradprobe.pytest_plugin
print(json.dumps({"loaded": loaded()}))
"""
    )
    assert out["loaded"] == []


@pytest.mark.timeout(120)
def test_a_plain_check_loads_neither_numba_nor_joblib_and_compiles_nothing():
    out = _fresh(
        "import json, sys\n"
        + LOADED
        + """
import numpy as np
import gradprobe

A = np.diag([1.0, 2.0, 3.0, 4.0, 5.0])
report = gradprobe.check(lambda v: 0.5 * v @ A @ v, lambda v: A @ v, np.arange(5.0))
wrong = gradprobe.check(lambda v: 0.5 * v @ A @ v, lambda v: 1.5 * (A @ v), np.arange(5.0))
print(json.dumps({"loaded": loaded(), "passed": [report.passed, wrong.passed],
                  "compile": report.timings["compile"], "executor": report.measured["executor"]}))
"""
    )
    assert out["passed"] == [True, False]
    assert "numba" not in out["loaded"] and "joblib" not in out["loaded"], out
    assert out["compile"] == 0.0


@pytest.mark.timeout(300)
def test_a_jitted_loss_loads_the_kernels_and_reports_their_compile_time():
    pytest.importorskip("numba")
    out = _fresh(
        """
import json
import gradprobe
from gradprobe.examples.jitted import make_jitted_mlp

m = make_jitted_mlp(sizes=(4, 3, 2), batch=4)
first = gradprobe.check(m.loss, m.grad, m.params)
second = gradprobe.check(m.loss, m.grad, m.params)
print(json.dumps({"executor": first.measured["executor"], "passed": first.passed,
                  "compile": [first.timings["compile"], second.timings["compile"]]}))
"""
    )
    assert out["executor"].startswith("numba kernel") and out["passed"]
    first, second = out["compile"]
    assert first > 0.0  # loaded (from the on-disk cache, or compiled) in this process
    assert second < first  # ready: the second check only looks the specialization up
