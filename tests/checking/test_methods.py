"""Methods (central, richardson, complex-step), steps by dtype, and the truncation retry."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.numerics.steps import METHODS, default_relative_step
from gradprobe.numerics.tolerances import NOISE_HALF_POINTS

rng = np.random.default_rng(0)
A = rng.standard_normal((4, 4))


def closs(x):
    # Accepts complex input: no float(), no abs().
    return np.sum(np.sin(A @ x) * x) + np.exp(x[0]) * x[1]


def cgrad(x):
    g = A.T @ (np.cos(A @ x) * x) + np.sin(A @ x)
    g[0] += np.exp(x[0]) * x[1]
    g[1] += np.exp(x[0])
    return g


X0 = rng.standard_normal(4)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_passes_exact_gradient_and_records_step(method):
    report = gradprobe.check(closs, cgrad, X0, method=method)
    assert report.passed, str(report)
    p = report.params["x"]
    assert p.method == method and report.settings["method"] == method
    assert p.step == pytest.approx(default_relative_step(np.dtype(np.float64), method))
    assert all(e.step > 0 for e in p.worst_entries)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_fails_a_relative_error_of_1e_4(method):
    def bad(x):
        g = cgrad(x)
        g[2] *= 1 + 1e-4
        return g

    report = gradprobe.check(closs, bad, X0, method=method)
    assert not report.passed
    assert report.params["x"].worst_index == (2,)
    assert report.params["x"].n_failed == 1


def test_evaluations_per_entry_by_method():
    fixed = 2 + 2 * NOISE_HALF_POINTS  # base, pre-flight repeat, noise estimate
    counts = {m: gradprobe.check(closs, cgrad, X0, method=m).n_evaluations - fixed for m in METHODS}
    assert counts == {"central": 8, "richardson": 16, "complex-step": 4}


def test_default_steps_follow_the_dtype_epsilon():
    for dt in (np.float32, np.float64):
        eps = np.finfo(dt).eps
        assert default_relative_step(np.dtype(dt)) == pytest.approx(eps ** (1 / 3))
        assert default_relative_step(np.dtype(dt), "richardson") == pytest.approx(eps**0.2)
        assert default_relative_step(np.dtype(dt), "complex-step") == pytest.approx(eps**0.5)


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
def test_complex_step_on_a_real_only_loss_explains_the_fix():
    with pytest.raises(gradprobe.InvalidInputError, match="complex"):
        gradprobe.check(lambda x: float(np.sum(x**2)), lambda x: 2 * x, X0, method="complex-step")


def test_unknown_method_is_refused():
    with pytest.raises(gradprobe.InvalidInputError, match="method: expected one of"):
        gradprobe.check(closs, cgrad, X0, method="forward")


def test_large_parameters_do_not_raise_truncation_false_alarms():
    # |a| ~ 1e3 makes h = EPS**(1/3) * |a| ~ 6e-3: the central difference's truncation error
    # alone exceeds rtol=1e-5 where cos(a) is small; the retry at a smaller step clears it.
    a = np.random.default_rng(5).uniform(900, 1100, size=400)
    report = gradprobe.check(lambda x: float(np.sum(np.sin(x))), np.cos, a)
    assert report.passed, str(report)
    # ... while a wrong gradient at the same scale still fails.
    bad = gradprobe.check(lambda x: float(np.sum(np.sin(x))), lambda x: np.cos(x) * 1.001, a)
    assert not bad.passed


def test_float32_gets_loose_defaults_and_a_warning():
    x = rng.standard_normal(10).astype(np.float32)
    report = gradprobe.check(
        lambda v: float(np.sum(np.tanh(v) ** 2)),
        lambda v: 2 * np.tanh(v) * (1 - np.tanh(v) ** 2),
        x,
        promote=False,
    )
    assert report.passed, str(report)
    p = report.params["x"]
    assert p.rtol == 2e-3 and p.step == pytest.approx(np.finfo(np.float32).eps ** (1 / 3))
    assert any("float64" in w for w in report.warnings)
