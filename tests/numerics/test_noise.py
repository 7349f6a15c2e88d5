"""The loss's measured rounding noise (ECnoise) sets the round-off floor of cancelling losses."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.checking.noise import estimate_loss_noise
from gradprobe.evaluate import SerialEvaluator
from gradprobe.layout import normalize_params
from gradprobe.numerics.tolerances import NOISE_HALF_POINTS, ecnoise

X = np.linspace(-1.0, 1.0, 600)


def cubic(v):
    return np.sum(v**3)


def cubic_grad(v):
    return 3.0 * v**2


@pytest.mark.parametrize("sigma", [1e-12, 1e-8])
def test_ecnoise_recovers_a_known_noise_level(sigma):
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(50):
        t = np.arange(-4, 5) * 1e-6
        values = 1.0 + 0.3 * t + 2.0 * t**2 + rng.normal(0.0, sigma, t.size)
        est = ecnoise(values)
        assert est.status == "measured"
        ratios.append(est.sigma / sigma)
    assert 0.5 < np.median(ratios) < 2.0
    assert max(ratios) < 4.0


def test_ecnoise_flat_and_smooth_values_give_no_estimate():
    assert ecnoise(np.full(9, 2.5)).status == "flat"
    assert ecnoise(np.exp(np.arange(9.0))).sigma == 0.0  # a smooth trend, no noise


def test_cancelling_loss_noise_is_far_above_eps_times_loss():
    layout, base, _ = normalize_params(X)
    ev = SerialEvaluator(cubic, layout, base)
    f0 = ev.base_loss()
    est = estimate_loss_noise(ev, f0, np.random.default_rng(0))
    assert est.status == "measured" and est.n_evaluations == 2 * NOISE_HALF_POINTS
    assert ev.n_evaluations == 1 + 2 * NOISE_HALF_POINTS
    eps = np.finfo(np.float64).eps
    # The terms are O(1): round-off ~ EPS * sqrt(n), whatever |L| (here ~1e-14).
    assert est.sigma > 100 * eps * abs(f0)
    assert 1e-16 < est.sigma < 1e-12


def test_cancelling_loss_correct_gradient_passes():
    for seed in range(5):
        report = gradprobe.check(cubic, cubic_grad, X, seed=seed)
        assert report.passed, str(report)
        assert report.measured["loss_noise"] > 0.0


def test_noise_estimate_is_deterministic_under_the_seed():
    a = gradprobe.check(cubic, cubic_grad, X, seed=3)
    b = gradprobe.check(cubic, cubic_grad, X, seed=3)
    assert a.measured["loss_noise"] == b.measured["loss_noise"]
    assert a.to_dict()["params"] == b.to_dict()["params"]


@pytest.mark.parametrize("rel", [1e-4, -1e-4, 1e-3])
def test_cancelling_loss_planted_error_still_fails(rel):
    g = cubic_grad(X)
    for j in (0, 150, 599):
        bad = g.copy()
        bad[j] *= 1.0 + rel
        report = gradprobe.check(cubic, bad, X, samples="all")
        assert not report.passed
        assert report.params["x"].worst_index == (j,)


def test_ordinary_loss_floor_is_unchanged():
    # For a loss whose value does not cancel, the measured noise is about an ulp of L, below
    # the EPS * |L| floor: the allowance of each entry is what it was without the estimate.
    from gradprobe.examples import make_mlp

    m = make_mlp()
    report = gradprobe.check(m.loss, m.grad, m.params, probes=0)
    loss = m.loss(m.params)
    assert 0.0 < report.measured["loss_noise"] < 16 * np.finfo(np.float64).eps * abs(loss)


def _ecnoise_in_numpy(values):
    """The numpy formulation ecnoise had, kept as the reference its Python floats must match."""
    import math

    from gradprobe.numerics.tolerances import NoiseEstimate

    d = np.asarray(values, dtype=np.float64)
    if d.size < 4 or not np.all(np.isfinite(d)):
        return NoiseEstimate(0.0, 0, "inconclusive")
    scale = math.ldexp(0.5, math.frexp(float(np.max(np.abs(d))))[1]) if np.any(d) else 1.0
    d = d / scale
    levels, sign_change, gamma = [], [], 1.0
    for j in range(1, d.size):
        d = np.diff(d)
        if j == 1 and not np.any(d):
            return NoiseEstimate(0.0, 0, "flat")
        gamma *= 0.5 * j / (2 * j - 1)
        levels.append(scale * math.sqrt(gamma * float(np.mean(d * d))))
        sign_change.append(bool(d.min() < 0.0 < d.max()))
    for k in range(len(levels) - 2):
        window = levels[k : k + 3]
        if max(window) <= 4.0 * min(window) and sign_change[k]:
            return NoiseEstimate(levels[k], k + 1, "measured")
    return NoiseEstimate(0.0, 0, "inconclusive")


def test_ecnoise_in_python_floats_is_the_numpy_formula_to_the_bit():
    rng = np.random.default_rng(0)
    for trial in range(4000):
        n = int(rng.integers(4, 14))
        t = np.arange(n) - n // 2
        kind = trial % 4
        if kind == 0:  # smooth plus noise of any size
            v = 1.0 + 3e-7 * t + rng.normal(0, 10 ** rng.uniform(-16, -8), n)
        elif kind == 1:  # a staircase
            v = np.round(rng.normal(size=n), int(rng.integers(0, 3)))
        elif kind == 2:  # any magnitude
            v = rng.normal(size=n) * 10 ** rng.uniform(-300, 300)
        else:  # flat but one
            v = np.full(n, rng.normal())
            v[rng.integers(n)] += rng.normal() * 1e-12
        assert ecnoise(list(v)) == _ecnoise_in_numpy(v), (trial, v.tolist())


def test_numpy_sum_in_python_is_np_sum_to_the_bit():
    from gradprobe.numerics.directions import numpy_sum

    rng = np.random.default_rng(1)
    for n in range(0, 300):
        x = rng.normal(size=n) * 10 ** rng.uniform(-5, 5, n)
        assert numpy_sum(list(x)) == float(np.sum(x)), n
