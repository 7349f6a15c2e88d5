"""Ties and kinks checked jointly (issue 22): tied entries moved together."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe

X = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, -1.0, 2.0, 2.0], [0.5, 1.5, -0.3, 0.2]])


def _loss(p):
    return float(np.sum(np.max(p["x"], axis=1)))


def _ties(x):
    return x == np.max(x, axis=1, keepdims=True)


def test_max_giving_every_tied_entry_the_full_gradient_fails_and_is_named_ties():
    r = gradprobe.check(_loss, lambda p: {"x": _ties(p["x"]).astype(float)}, {"x": X})
    px = r.params["x"]
    assert not r.passed
    assert set(px.bad_indices) == {(0, 1), (0, 2), (1, 0), (1, 2), (1, 3)}
    d = px.diagnosis
    assert d.kind == "ties", d
    groups = sorted(sorted(map(tuple, g)) for g in d.evidence["groups"])
    assert groups == [[(0, 1), (0, 2)], [(1, 0), (1, 2), (1, 3)]]


def test_split_subgradient_at_ties_passes():
    def grad(p):
        t = _ties(p["x"]).astype(float)
        return {"x": t / t.sum(axis=1, keepdims=True)}

    assert gradprobe.check(_loss, grad, {"x": X}).passed


def test_subgradient_given_to_one_tied_entry_passes():
    def grad(p):
        g = np.zeros_like(p["x"])
        g[np.arange(3), np.argmax(p["x"], axis=1)] = 1.0
        return {"x": g}

    assert gradprobe.check(_loss, grad, {"x": X}).passed


def _dense_kinks(seed: int, near: float, batch: int = 16, d: int = 6, h: int = 16):
    """ReLU units combined by a max over pairs, every unit with a pre-activation ``near`` 0."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, d))
    y = rng.standard_normal(batch)
    p = {
        "W": rng.standard_normal((h, d)) / np.sqrt(d),
        "b": 0.1 * rng.standard_normal(h),
        "v": rng.standard_normal(h // 2),
    }
    z = x @ p["W"].T + p["b"]
    for j in range(h):
        p["b"][j] -= z[rng.integers(batch), j] - near * rng.choice([-1.0, 1.0])

    def forward(q):
        z = x @ q["W"].T + q["b"]
        pair = np.maximum(z, 0.0).reshape(batch, h // 2, 2)
        m = pair.max(axis=2)
        return z, pair, m, m @ q["v"]

    def loss(q):
        return float(0.5 * np.mean((forward(q)[-1] - y) ** 2))

    def grad(q):
        z, pair, m, out = forward(q)
        dout = (out - y) / batch
        dm = np.outer(dout, q["v"])
        first = pair[:, :, 0] >= pair[:, :, 1]
        dz = np.stack([dm * first, dm * ~first], axis=2).reshape(batch, h) * (z > 0)
        return {"W": dz.T @ x, "b": dz.sum(axis=0), "v": m.T @ dout}

    return loss, grad, p


@pytest.mark.parametrize("near", [1e-9, 1e-7, 1e-5])
@pytest.mark.parametrize("seed", range(4))
def test_correct_relu_max_network_with_dense_kinks_passes(seed, near):
    loss, grad, p = _dense_kinks(seed, near)
    r = gradprobe.check(loss, grad, p)
    assert r.passed, str(r)


def test_wrong_relu_max_network_with_dense_kinks_still_fails_where_planted():
    loss, grad, p = _dense_kinks(0, 1e-7)

    def bad(q):
        g = grad(q)
        g["v"] = g["v"] * 1.05
        return g

    r = gradprobe.check(loss, bad, p)
    assert [q.name for q in r.failures] == ["v"]
    assert r.params["v"].diagnosis.kind == "scale"
