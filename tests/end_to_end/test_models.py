"""Correct example models pass under 20 seeds; random smooth compositions never cry wolf and
never miss a relative error of 1e-4 (hypothesis property tests)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import gradprobe
from gradprobe.examples import make_batchnorm_mlp, make_conv, make_mlp, make_rnn

MODELS = {
    "mlp-tanh": lambda s, dt: make_mlp((16, 12, 12, 5), seed=s, dtype=dt),
    "mlp-relu": lambda s, dt: make_mlp((16, 12, 12, 5), seed=s, dtype=dt, activation="relu"),
    "conv": lambda s, dt: make_conv(seed=s, dtype=dt),
    "rnn": lambda s, dt: make_rnn(seed=s, dtype=dt),
    "batchnorm": lambda s, dt: make_batchnorm_mlp(seed=s, dtype=dt),
    "batchnorm-relu": lambda s, dt: make_batchnorm_mlp(seed=s, dtype=dt, activation="relu"),
}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_correct_models_pass_under_20_seeds(name, dtype):
    for seed in range(20):
        m = MODELS[name](seed, dtype)
        report = gradprobe.check(m.loss, m.grad, m.params, seed=seed)
        assert report.passed, f"seed {seed}:\n{report}"


def test_default_tanh_mlp_passes_with_probes():
    m = make_mlp()
    assert gradprobe.check(m.loss, m.grad, m.params).passed


def test_default_relu_mlp_passes_with_probes():
    m = make_mlp(activation="relu")
    assert gradprobe.check(m.loss, m.grad, m.params).passed


def test_default_relu_mlp_passes_with_entry_checks():
    m = make_mlp(activation="relu")
    report = gradprobe.check(m.loss, m.grad, m.params, probes=0)
    assert report.passed, str(report)
    assert sum(p.n_kinks for p in report.params.values()) > 0


# -- property tests: random smooth compositions ---------------------------------------------------
_FUNCS = {
    "sin": (np.sin, np.cos),
    "tanh": (np.tanh, lambda u: 1.0 - np.tanh(u) ** 2),
    "softplus": (lambda u: np.logaddexp(0.0, u), lambda u: 0.5 * (1.0 + np.tanh(0.5 * u))),
    "square": (lambda u: u**2, lambda u: 2.0 * u),
    "log1p2": (lambda u: np.log1p(u**2), lambda u: 2.0 * u / (1.0 + u**2)),
}


@st.composite
def compositions(draw):
    """L(x) = sum_k c_k f_k(A_k . x + b_k) + 0.5 * lam * |x|^2 for x of shape (n,)."""
    n = draw(st.integers(2, 12))
    k = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    names = [draw(st.sampled_from(sorted(_FUNCS))) for _ in range(k)]
    A = rng.standard_normal((k, n)) * draw(st.sampled_from([0.3, 1.0, 3.0]))
    b = rng.standard_normal(k)
    c = rng.standard_normal(k)
    lam = draw(st.sampled_from([0.0, 1e-3, 1.0]))
    x = rng.standard_normal(n) * draw(st.sampled_from([0.1, 1.0, 10.0]))

    def loss(v):
        u = A @ v + b
        return float(
            sum(c[j] * _FUNCS[nm][0](u[j]) for j, nm in enumerate(names)) + 0.5 * lam * v @ v
        )

    def grad(v):
        u = A @ v + b
        du = np.array([c[j] * _FUNCS[nm][1](u[j]) for j, nm in enumerate(names)])
        return A.T @ du + lam * v

    return loss, grad, x


PROPERTY = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(compositions())
def test_exact_gradients_of_smooth_compositions_never_fail(problem):
    loss, grad, x = problem
    report = gradprobe.check(loss, grad, x)
    assert report.passed, str(report)


@PROPERTY
@given(compositions(), st.floats(1e-4, 0.5), st.sampled_from([-1.0, 1.0]))
def test_one_planted_relative_error_always_fails(problem, rel, sign):
    loss, grad, x = problem
    g = grad(x)
    j = int(np.argmax(np.abs(g)))
    # A relative error of an entry that is zero (or round-off) is no error at all.
    assume(abs(g[j]) >= 1e-2)
    bad = g.copy()
    bad[j] *= 1.0 + sign * rel
    report = gradprobe.check(loss, bad, x)
    assert not report.passed, str(report)
    assert report.params["x"].worst_index == (j,)
