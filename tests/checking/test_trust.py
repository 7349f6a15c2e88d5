"""Verdicts and diagnoses that hold in setups users have every day (issue: trust).

Each model here is built in the test, apart from the bundled examples.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe


def _relu_net(seed: int, near_kink: float = 1e-7, batch: int = 12, d: int = 5, h: int = 8):
    """A 2-hidden-layer ReLU regression net with some pre-activations planted ``near_kink``
    away from 0 (the default step of a bias entry crosses them)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, d))
    y = rng.standard_normal(batch)
    p = {
        "W1": rng.standard_normal((h, d)) / np.sqrt(d),
        "b1": 0.1 * rng.standard_normal(h),
        "W2": rng.standard_normal((h, h)) / np.sqrt(h),
        "b2": 0.1 * rng.standard_normal(h),
        "w3": rng.standard_normal(h) / np.sqrt(h),
    }
    z1 = x @ p["W1"].T + p["b1"]
    for j in rng.choice(h, size=3, replace=False):  # three units sit just above their kink
        k = int(rng.integers(batch))
        p["b1"][j] -= z1[k, j] - near_kink

    def forward(q):
        z1 = x @ q["W1"].T + q["b1"]
        a1 = np.maximum(z1, 0.0)
        z2 = a1 @ q["W2"].T + q["b2"]
        a2 = np.maximum(z2, 0.0)
        return z1, a1, z2, a2, a2 @ q["w3"]

    def loss(q):
        return float(0.5 * np.mean((forward(q)[-1] - y) ** 2))

    def grad(q):
        z1, a1, z2, a2, out = forward(q)
        r = (out - y) / batch
        g_a2 = np.outer(r, q["w3"])
        g_z2 = g_a2 * (z2 > 0)
        g_a1 = g_z2 @ q["W2"]
        g_z1 = g_a1 * (z1 > 0)
        return {
            "W1": g_z1.T @ x,
            "b1": g_z1.sum(0),
            "W2": g_z2.T @ a1,
            "b2": g_z2.sum(0),
            "w3": a2.T @ r,
        }

    return loss, grad, p


@pytest.mark.parametrize("seed", range(5))
def test_swap_near_kinks_is_diagnosed_symmetrically(seed):
    loss, grad, params = _relu_net(seed)

    def swapped(q):
        g = grad(q)
        g["b1"], g["b2"] = g["b2"], g["b1"]
        return g

    report = gradprobe.check(loss, swapped, params, probes=0)
    assert {p.name for p in report.failures} == {"b1", "b2"}, str(report)
    d1, d2 = report.params["b1"].diagnosis, report.params["b2"].diagnosis
    assert (d1.kind, d1.evidence["other"]) == ("swapped", "b2"), d1
    assert (d2.kind, d2.evidence["other"]) == ("swapped", "b1"), d2


@pytest.mark.parametrize("seed", range(5))
def test_correct_relu_net_near_kinks_passes(seed):
    loss, grad, params = _relu_net(seed)
    report = gradprobe.check(loss, grad, params)
    assert report.passed, str(report)


@pytest.mark.parametrize("factor", [1.01, 1.0 + 1e-4])
def test_wrong_gradient_near_kinks_still_fails(factor):
    # The kink rule must not explain a real error away: a relative error of 1e-4 (10x rtol)
    # in every entry of W1 fails W1 at every seed, near-kink entries included.
    for seed in range(5):
        loss, grad, params = _relu_net(seed)

        def scaled(q, grad=grad):
            g = grad(q)
            g["W1"] = g["W1"] * factor
            return g

        report = gradprobe.check(loss, scaled, params)
        assert {p.name for p in report.failures} == {"W1"}, str(report)
        assert report.params["W1"].n_failed >= 0.9 * report.params["W1"].n_checked


def _embedding_model(rows: int = 2000, dim: int = 16, batch: int = 4000, seed: int = 0):
    """A linear model over an embedding table (rows x dim) looked up by token ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(rows, size=batch)
    target = rng.standard_normal(batch)
    w = rng.standard_normal(dim)
    params = {"E": 0.1 * rng.standard_normal((rows, dim)), "w": w}

    def loss(p):
        h = p["E"][ids]
        return float(0.5 * np.mean((h @ p["w"] - target) ** 2))

    def grad(p):
        h = p["E"][ids]
        r = (h @ p["w"] - target) / batch
        g_e = np.zeros_like(p["E"])
        np.add.at(g_e, ids, np.outer(r, p["w"]))
        return {"E": g_e, "w": h.T @ r}

    return loss, grad, params


@pytest.mark.parametrize("samples", [None, 64, "all"])
def test_error_below_rtol_everywhere_passes_whatever_the_sample(samples):
    # Every gradient entry off by 2e-6 relative: below the default rtol of 1e-5.
    loss, grad, params = _embedding_model(rows=300)

    def scaled(p):
        return {k: v * (1.0 + 2e-6) for k, v in grad(p).items()}

    report = gradprobe.check(loss, scaled, params, samples=samples)
    assert report.passed, str(report)


def test_rtol_is_honoured_by_the_probes():
    loss, grad, params = _embedding_model(rows=300)

    def off(p):
        return {k: v * (1.0 + 1e-4) for k, v in grad(p).items()}

    assert gradprobe.check(loss, off, params, samples=64, rtol=1e-2).passed
    failed = gradprobe.check(loss, off, params, samples=64)
    assert not failed.passed and failed.params["E"].n_failed > 0


def test_bug_in_a_few_rows_of_a_large_table_is_localized_entry_by_entry():
    # 4 rows (64 entries) of a 32,000-entry table are wrong: every one is named, none other,
    # and the parameter is not called widespread.
    loss, grad, params = _embedding_model()
    bad_rows = [17, 640, 641, 1999]

    def buggy(p):
        g = grad(p)
        g["E"][bad_rows] *= 1.5
        return g

    report = gradprobe.check(loss, buggy, params)
    e = report.params["E"]
    assert not e.passed and not e.widespread and not e.capped
    wrong = {(r, c) for r in bad_rows for c in range(16)}
    assert set(e.bad_indices) == wrong, str(report)
    assert "widespread" not in e.coverage.statement
    assert report.params["w"].passed


def _tanh_regression(seed: int = 0):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((64, 10)), rng.standard_normal(64)
    params = {"W": 0.3 * rng.standard_normal((10, 8)), "v": rng.standard_normal(8)}

    def value64(p):
        h = np.tanh(x @ p["W"])
        return 0.5 * np.mean((h @ p["v"] - y) ** 2)

    def grad(p):
        h = np.tanh(x @ p["W"])
        r = (h @ p["v"] - y) / len(y)
        return {"W": x.T @ (np.outer(r, p["v"]) * (1 - h**2)), "v": h.T @ r}

    def cast32(p):  # the loss computed in float32 under float64 parameters
        h = np.tanh(x.astype(np.float32) @ p["W"].astype(np.float32))
        return float(0.5 * np.mean((h @ p["v"].astype(np.float32) - y.astype(np.float32)) ** 2))

    losses = {
        "cast to float32 inside": cast32,
        "float32 return value": lambda p: np.float32(value64(p)),
        "rounded to 1e-9": lambda p: round(float(value64(p)), 9),
    }
    return losses, grad, params


@pytest.mark.parametrize(
    "kind", ["cast to float32 inside", "float32 return value", "rounded to 1e-9"]
)
@pytest.mark.parametrize("seed", range(3))
def test_loss_in_lower_precision_than_its_parameters(kind, seed):
    losses, grad, params = _tanh_regression(seed)
    loss = losses[kind]
    report = gradprobe.check(loss, grad, params)
    assert report.passed, str(report)
    assert any("lower precision than its parameters" in w for w in report.warnings)
    assert report.measured["loss_precision"] > 1e-12
    # A planted 1.5x scale bug in one parameter is still found there, and only there.

    def bad(p):
        g = grad(p)
        g["v"] = 1.5 * g["v"]
        return g

    report = gradprobe.check(loss, bad, params)
    assert [q.name for q in report.failures] == ["v"], str(report)
    assert report.params["v"].diagnosis.kind == "scale"


def _normalization(seed: int, offset: float, axis: int):
    """sum(G * normalize(x)) over ``axis`` (-1: a layer norm; 0: a batch norm's statistics),
    checked with respect to inputs ``offset + N(0, 1)``."""
    rng = np.random.default_rng(seed)
    x = offset + rng.standard_normal((6, 16))
    g_out = rng.standard_normal((6, 16))  # a random upstream gradient, never ones
    eps = 1e-5

    def parts(v):
        c = v - v.mean(axis, keepdims=True)
        s = np.sqrt((c**2).mean(axis, keepdims=True) + eps)
        return c, s

    def loss(p):
        c, s = parts(p["x"])
        return float(np.sum(g_out * c / s))

    def grad(p):
        c, s = parts(p["x"])
        xh = c / s
        mean = lambda a: a.mean(axis, keepdims=True)  # noqa: E731
        return {"x": (g_out - mean(g_out) - xh * mean(g_out * xh)) / s}

    return loss, grad, {"x": x}


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("offset", [1e4, 1e5, 1e6])
def test_inputs_far_from_zero_with_unit_spread(offset, axis):
    for seed in range(4):
        loss, grad, params = _normalization(seed, offset, axis)
        report = gradprobe.check(loss, grad, params)
        assert report.passed, str(report)

        def missing(p, grad=grad):  # the term through the variance left out: a real bug
            g = grad(p)
            c = p["x"] - p["x"].mean(axis, keepdims=True)
            return {"x": g["x"] + 0.01 * c}

        assert not gradprobe.check(loss, missing, params).passed

        def slightly_off(p, grad=grad):  # 10x rtol, on every entry: still found
            return {"x": grad(p)["x"] * (1.0 + 1e-4)}

        assert not gradprobe.check(loss, slightly_off, params).passed


def test_everything_at_the_noise_floor_is_not_called_verified():
    # A softmax summed with an upstream gradient of ones is constant: its gradient is 0 and
    # every difference is round-off. It passes, but the report says nothing was verified.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6))

    def loss(p):
        z = x @ p["W"]
        e = np.exp(z - z.max(1, keepdims=True))
        return float(np.sum(e / e.sum(1, keepdims=True)))

    params = {"W": rng.standard_normal((6, 4))}
    report = gradprobe.check(loss, lambda p: {"W": np.zeros((6, 4))}, params)
    assert report.passed
    assert any(
        "nothing was verified" in w and "random upstream gradient" in w for w in report.warnings
    )
    statement = report.params["W"].coverage.statement
    assert "all agree (only within round-off: unverified)" in statement
    assert report.params["W"].coverage.upper_bound == 1.0


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_low_precision_warning_names_its_own_dtype(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5).astype(dtype)
    report = gradprobe.check(lambda v: float(np.sum(v.astype(np.float64) ** 2)), lambda v: 2 * v, x)
    text = " ".join(report.warnings)
    assert np.dtype(dtype).name in text
    assert ("float32" in text) == (dtype == np.float32)


def test_table_relative_error_matches_the_failure_block():
    # A failing parameter whose largest classic relative error sits at an entry near zero:
    # the table shows the largest among the failing entries its block lists.
    loss, grad, params = _embedding_model(rows=40)

    def off(p):
        g = grad(p)
        g["E"][3] *= 1.01
        return g

    report = gradprobe.check(loss, off, params)
    e = report.params["E"]
    assert not e.passed
    shown = [w.rel_error for w in e.worst_entries if not w.passed and not w.kink]
    assert e.headline_rel_error == max(shown)
    row = next(ln for ln in report.table().splitlines() if ln.strip().startswith("E "))
    assert f"{max(shown):.2e}" in row


def test_mixed_precision_parameters_keep_their_own_step_and_rtol():
    # A float64 parameter beside a float32 one is checked with float64's step and rtol; only a
    # loss *measured* coarser than every parameter changes them.
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal(4), "b": rng.standard_normal(3).astype(np.float32)}

    def loss(q):
        return float(np.sum(np.sin(q["a"])) + np.sum(q["b"].astype(np.float64) ** 2))

    report = gradprobe.check(loss, lambda q: {"a": np.cos(q["a"]), "b": 2 * q["b"]}, params)
    assert report.passed, str(report)
    a, b = report.params["a"], report.params["b"]
    assert (a.rtol, b.rtol) == (1e-5, 2e-3)
    assert a.step == pytest.approx(np.finfo(np.float64).eps ** (1 / 3))
    assert b.step == pytest.approx(np.finfo(np.float32).eps ** (1 / 3))
