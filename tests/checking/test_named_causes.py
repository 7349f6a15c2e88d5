"""A named cause is a true cause (issue 22): a relation is named only where it explains each
entry within its numeric error; otherwise the report says what it measured."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe


def _x(shape=(3, 4), seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


def test_dropped_product_rule_term_names_no_cause_and_says_what_it_measured():
    x = _x()
    r = gradprobe.check(
        lambda p: float(np.sum(p["x"] * np.sin(p["x"]))),
        lambda p: {"x": p["x"] * np.cos(p["x"])},  # the sin x term dropped
        {"x": x},
    )
    d = r.params["x"].diagnosis
    assert not r.passed and d.kind == "mismatch", d
    assert "no cause is named" in d.detail
    lo, hi = d.evidence["ratio_range"]
    ratios = (x * np.cos(x)) / (np.sin(x) + x * np.cos(x))
    assert lo == pytest.approx(ratios.min(), rel=1e-4) and hi == pytest.approx(
        ratios.max(), rel=1e-4
    )
    assert "12 of 12 checked entries of x fail in 3 of 3 rows and 4 of 4 columns" in d.detail
    assert "scale" not in d.detail.split("Measured:")[1]


@pytest.mark.parametrize("factor", [1.01, 0.99, 1.003])
def test_uniform_factor_near_one_is_named_scale_with_its_factor(factor):
    x = _x((6, 5), seed=2)
    r = gradprobe.check(
        lambda p: float(np.sum(np.tanh(p["x"]))),
        lambda p: {"x": factor * (1.0 - np.tanh(p["x"]) ** 2)},
        {"x": x},
    )
    d = r.params["x"].diagnosis
    assert d.kind == "scale", d
    assert d.evidence["c"] == pytest.approx(factor, rel=1e-6)
    assert f"{factor:.6g} x numeric" in d.detail


def test_two_relations_that_explain_equally_are_both_listed():
    # f = sum(x**2): n = 2x, so a = 3x is both "1.5 x numeric" and "numeric + 1 * x".
    x = _x((8,), seed=3)
    r = gradprobe.check(
        lambda p: float(np.sum(p["x"] ** 2)), lambda p: {"x": 3.0 * p["x"]}, {"x": x}
    )
    d = r.params["x"].diagnosis
    assert d.kind == "missing-term", d
    assert "2 relations explain" in d.detail and "scale" in d.detail
    assert [alt["kind"] for alt in d.evidence["alternatives"]] == ["scale"]


def test_a_single_wrong_entry_is_not_called_a_scale():
    x = _x((6, 5), seed=4)

    def grad(p):
        g = np.cos(p["x"])
        g[2, 3] *= 1.3
        return {"x": g}

    r = gradprobe.check(lambda p: float(np.sum(np.sin(p["x"]))), grad, {"x": x})
    d = r.params["x"].diagnosis
    assert d.kind != "scale" and r.params["x"].bad_indices == ((2, 3),), d


def test_clipped_gradient_is_named_with_its_cap():
    w = 3.0 * _x((6, 5), seed=2)
    r = gradprobe.check(
        lambda p: float(np.sum(p["x"] ** 3)),
        lambda p: {"x": np.clip(3.0 * p["x"] ** 2, -5.0, 5.0)},
        {"x": w},
    )
    d = r.params["x"].diagnosis
    assert d.kind == "clipped", d
    assert d.evidence["cap"] == pytest.approx(5.0)
    assert "+-5" in d.detail


def test_clipping_in_a_recurrent_backward_pass_is_named():
    rng = np.random.default_rng(0)
    T, H = 6, 4
    xs = rng.standard_normal((T, H))
    W0 = 1.5 * rng.standard_normal((H, H))

    def loss(p):
        h = np.zeros(H)
        total = 0.0
        for t in range(T):
            h = np.tanh(p["W"] @ h + xs[t])
            total += np.sum(h)
        return float(3.0 * total)

    def grad(p):
        hs = [np.zeros(H)]
        for t in range(T):
            hs.append(np.tanh(p["W"] @ hs[-1] + xs[t]))
        dW = np.zeros((H, H))
        dh = np.zeros(H)
        for t in range(T, 0, -1):
            dh = dh + 3.0
            dz = dh * (1 - hs[t] ** 2)
            dW += np.outer(dz, hs[t - 1])
            dh = p["W"].T @ dz
        return {"W": np.clip(dW, -1.0, 1.0)}

    r = gradprobe.check(loss, grad, {"W": W0})
    d = r.params["W"].diagnosis
    assert not r.passed and d.kind == "clipped", d
    assert d.evidence["cap"] == pytest.approx(1.0)
