"""Kinks: entries whose step crosses a non-differentiable point are classified, not failed."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.examples import make_batchnorm_mlp, make_conv, make_mlp

rng = np.random.default_rng(0)
W = rng.standard_normal((6, 5))


def relu_loss(x):
    return float(np.sum(np.maximum(W @ x, 0.0) ** 1) + 0.5 * np.sum(x**2))


def relu_grad(x):
    return W.T @ (W @ x > 0).astype(float) + x


def kinky_point():
    # x with W[0] @ x == 0 exactly up to rounding: every step on x crosses the kink of unit 0.
    x = np.random.default_rng(1).standard_normal(5)
    x[4] = -(W[0, :4] @ x[:4]) / W[0, 4]
    return x


def test_relu_at_zero_is_a_kink_not_a_failure():
    report = gradprobe.check(relu_loss, relu_grad, kinky_point())
    p = report.params["x"]
    assert report.passed, str(report)
    assert p.n_kinks >= 1 and p.n_failed == 0
    assert "kink" in str(report)
    assert any(e.kink for e in p.worst_entries)


@pytest.mark.parametrize(
    ("f", "g", "x"),
    [
        # abs at 0 with the subgradient +1 (np.sign gives 0, which the symmetric central
        # difference matches without any kink).
        (
            lambda x: float(np.sum(np.abs(x))),
            lambda x: np.where(x >= 0, 1.0, -1.0),
            np.array([0.0, 1.5, -2.0]),
        ),
        # max at a tie with the subgradient given to one tied entry (giving both the full
        # gradient is a bug: tests/checking/test_ties.py).
        (
            lambda x: float(np.max(x)),
            lambda x: np.eye(x.size)[np.argmax(x)],
            np.array([1.0, 1.0, 0.3]),
        ),
    ],
    ids=["abs", "max"],
)
def test_abs_and_max_kinks(f, g, x):
    report = gradprobe.check(f, g, x)
    assert report.passed, str(report)
    assert report.params["x"].n_kinks >= 1


def test_a_wrong_gradient_at_a_kink_still_fails():
    # The analytic value must lie between the one-sided differences (a subgradient).
    def wrong(x):
        return relu_grad(x) + np.array([0.0, 0.0, 5.0, 0.0, 0.0])

    report = gradprobe.check(relu_loss, wrong, kinky_point())
    assert not report.passed
    assert report.params["x"].worst_index == (2,)


def test_step_crossing_a_kink_only_at_the_default_step_is_retried():
    # Unit 0 sits 1e-6 from its kink: the default step (6e-6) crosses it, an 8x smaller one
    # does not, so the retry passes the entries outright.
    x = kinky_point()
    x[4] += 1e-6 / W[0, 4]
    report = gradprobe.check(relu_loss, relu_grad, x)
    assert report.passed, str(report)


@pytest.mark.parametrize(
    "make",
    [
        lambda s, dt: make_mlp((16, 12, 12, 5), seed=s, dtype=dt, activation="relu"),
        lambda s, dt: make_conv(seed=s, dtype=dt),
        lambda s, dt: make_batchnorm_mlp(seed=s, dtype=dt, activation="relu"),
    ],
    ids=["relu-mlp", "conv", "bn-relu"],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu_models_with_planted_kinks_pass_and_count_them(make, dtype):
    total = 0
    for seed in range(3):
        m = make(seed, dtype)
        report = gradprobe.check(m.loss, m.grad, m.params, seed=seed)
        assert report.passed, str(report)
        total += sum(p.n_kinks for p in report.params.values())
    if dtype == np.float64:
        assert total > 0


# Planted kinks sit in W1 columns 0-2 (MLP), K channels 0-1 (conv), W1 columns 0-1 (batch
# norm); an error elsewhere must be caught even though the retry and kink logic ran nearby.
_AWAY_FROM_KINKS = {
    "relu-mlp": (
        lambda s, dt: make_mlp((16, 12, 12, 5), seed=s, dtype=dt, activation="relu"),
        "W1",
        lambda idx: idx[1] >= 3,
    ),
    "conv": (lambda s, dt: make_conv(seed=s, dtype=dt), "K", lambda idx: idx[0] >= 2),
    "bn-relu": (
        lambda s, dt: make_batchnorm_mlp(seed=s, dtype=dt, activation="relu"),
        "W1",
        lambda idx: idx[1] >= 2,
    ),
}


@pytest.mark.parametrize("name", sorted(_AWAY_FROM_KINKS))
@pytest.mark.parametrize(
    ("dtype", "rel"), [(np.float64, 1e-4), (np.float32, 0.2)], ids=["float64", "float32"]
)
def test_errors_near_kinky_models_are_not_excused(name, dtype, rel):
    make, pname, away = _AWAY_FROM_KINKS[name]
    for seed in range(8):
        m = make(seed, dtype)
        g = m.grad(m.params)[pname]
        idx = [i for i in np.ndindex(g.shape) if away(i) and abs(g[i]) > 0.1 * np.abs(g).max()]
        target = idx[np.random.default_rng(seed).integers(len(idx))]

        def bad(p, m=m, target=target):
            out = m.grad(p)
            out[pname][target] *= 1 + rel
            return out

        report = gradprobe.check(m.loss, bad, m.params, seed=seed)
        assert not report.params[pname].passed, f"seed {seed}, {target}:\n{report}"


def test_float32_kink_seen_only_at_the_first_step_is_classified():
    # At an 8x smaller float32 step the one-sided differences are round-off; the entry's
    # kink is judged from the first step's one-sided interval (formerly a false alarm).
    m = make_mlp((48, 24, 24, 10), seed=3, dtype=np.float32, activation="relu")
    report = gradprobe.check(m.loss, m.grad, m.params, seed=3)
    assert report.passed, str(report)
    assert report.params["W1"].n_kinks > 0
