"""A numba-jitted loss of one flat vector runs inside the numba kernel."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("scipy")  # numba compiles `@` in the jitted example through scipy

import gradprobe
from gradprobe.evaluate import JitEvaluator, SerialEvaluator
from gradprobe.examples.jitted import make_jitted_mlp
from gradprobe.layout import normalize_params

from ..helpers import assert_bitwise_unchanged, report_core, snapshot


@pytest.fixture(scope="module")
def jitted():
    return make_jitted_mlp(sizes=(6, 5, 3), batch=4)


@pytest.mark.timeout(120)
def test_kernel_losses_equal_python_calls_of_the_same_loss(jitted):
    layout, base, _ = normalize_params(jitted.params)
    x = base[0]
    idx = np.arange(x.size, dtype=np.int64)
    values = np.stack([x + 1e-4, x - 1e-4, x + 2e-4], axis=1)
    ref = SerialEvaluator(jitted.loss, layout, base).entry_losses(0, idx, values)
    for threads in (1, 2):
        ev = JitEvaluator(jitted.loss, layout, base, n_threads=threads)
        assert ev.entry_losses(0, idx, values).tobytes() == ref.tobytes()
    vectors = np.stack([x, x * 0.5, x + 1.0])
    got = JitEvaluator(jitted.loss, layout, base, n_threads=2).vector_losses(0, vectors)
    assert got.tolist() == [float(jitted.loss(v.copy())) for v in vectors]


@pytest.mark.timeout(120)
def test_check_uses_the_kernel_and_reports_compile_time(jitted):
    saved = snapshot(jitted.params)
    r1 = gradprobe.check(jitted.loss, jitted.grad, jitted.params, n_jobs=1)
    r2 = gradprobe.check(jitted.loss, jitted.grad, jitted.params, n_jobs=2)
    assert r1.passed and r2.passed
    assert r1.measured["executor"].startswith("numba kernel")
    assert report_core(r1) == report_core(r2)
    assert_bitwise_unchanged(jitted.params, saved)


@pytest.mark.timeout(120)
def test_wrong_gradient_fails_on_the_kernel_path(jitted):
    def bad_grad(theta):
        g = jitted.grad(theta)
        g[3] *= 2.0
        return g

    report = gradprobe.check(jitted.loss, bad_grad, jitted.params, n_jobs=2)
    assert not report.passed
    assert report.params["x"].worst_index == (3,)


@pytest.mark.timeout(180)
def test_compile_time_is_reported_apart_and_paid_once_per_process():
    # A fresh process: the first check loads (or compiles) the kernels and the loss's
    # specialization and reports that under timings["compile"]; a second check of the same
    # loss in the same process has nothing left to compile.
    script = (
        "import gradprobe\n"
        "from gradprobe.examples.jitted import make_jitted_mlp\n"
        "m = make_jitted_mlp()\n"
        "r1 = gradprobe.check(m.loss, m.grad, m.params)\n"
        "r2 = gradprobe.check(m.loss, m.grad, m.params)\n"
        "print(r1.timings['compile'], r1.timings['total'], r2.timings['compile'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=170, check=True
    )
    first, total, second = (float(v) for v in out.stdout.split())
    assert 0.0 < first <= total
    assert second < 0.1 * first, (first, second)
