"""Jumps are not gradient bugs (issue 21): where the loss changes across a step by an amount
that does not shrink with the step, the entry is a discontinuity, reported as such."""

from __future__ import annotations

import numpy as np

import gradprobe


def _x():
    x = np.random.default_rng(0).standard_normal((3, 4))
    x[0, 0] = 0.1235 + 1e-7  # just past a rounding boundary of np.round(x, 3)
    return x


def test_step_function_entry_is_a_jump_not_a_failure():
    y = _x()
    y[2, 1] = 1e-8  # the step x > 0 lies within the finite-difference step
    r = gradprobe.check(
        lambda p: float(np.sum(p["x"] > 0) + np.sum(p["x"] ** 2)),
        lambda p: {"x": 2 * p["x"]},
        {"x": y},
    )
    assert r.passed, str(r)
    st = r.params["x"].coverage.statement
    assert "the loss jumps at 1 entry ([2, 1])" in st and "piecewise constant" in st
    assert r.params["x"].n_kinks == 0


def test_round_jump_beside_a_real_bug_hides_nothing():
    x, w = _x(), _x()
    r = gradprobe.check(
        lambda p: float(np.sum(np.round(p["x"], 3)) + np.sum(np.sin(p["w"]))),
        lambda p: {"x": np.zeros_like(p["x"]), "w": 1.02 * np.cos(p["w"])},
        {"x": x, "w": w},
    )
    assert [p.name for p in r.failures] == ["w"]
    assert r.params["w"].diagnosis.kind == "scale"
    assert "the loss jumps at 1 entry ([0, 0])" in r.params["x"].coverage.statement


def test_a_wrong_slope_beside_a_jump_still_fails():
    # Entries away from the jump keep their derivative: a wrong one fails there.
    y = _x()
    y[2, 1] = 1e-8

    def grad(p):
        g = 2 * p["x"]
        g[1, 1] += 0.5
        return {"x": g}

    r = gradprobe.check(lambda p: float(np.sum(p["x"] > 0) + np.sum(p["x"] ** 2)), grad, {"x": y})
    assert r.params["x"].bad_indices == ((1, 1),)


def _staircase(x, g):
    return float(np.sum(g * np.round(x, 3)))


def test_a_wholly_piecewise_constant_loss_is_not_a_zero_gradient():
    # The whole loss is piecewise constant: flat at a few ulps in every direction. Its step is
    # not widened (widened, it crosses many jumps, whose staircase reads as a slope of g).
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal(20) * 3, rng.standard_normal(20)
    x[4] = 0.0115 + 1e-8  # a jump of round(x, 3) within the step
    r = gradprobe.check(lambda p: _staircase(p["x"], g), lambda p: {"x": np.zeros(20)}, {"x": x})
    assert r.passed, str(r)
    assert r.measured["noise"] == "piecewise constant"
    assert any("as for a piecewise constant loss" in w for w in r.warnings)
    assert "the loss jumps at 1 entry ([4])" in r.params["x"].coverage.statement
    floor = gradprobe.check(
        lambda p: float(np.sum(np.floor(8 * p["x"]))), lambda p: {"x": np.zeros(20)}, {"x": x}
    )
    assert floor.passed, str(floor)


def test_a_smooth_loss_computed_coarsely_with_a_zero_gradient_still_fails():
    # Flat at a few ulps with a zero gradient, these look piecewise constant to the pre-flight
    # too; but at the parameters' own step (where they are checked) the loss rounded to float32
    # or to 1e-9 changes, and the zero gradient is found wrong.
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal(20), rng.standard_normal(20)
    for loss in (
        lambda p: float(np.float32(np.sum(g * np.sin(p["x"])))),
        lambda p: round(float(np.sum(g * np.sin(p["x"]))), 9),
        lambda p: float(np.sum(g.astype(np.float32) * np.sin(p["x"].astype(np.float32)))),
    ):
        r = gradprobe.check(loss, lambda p: {"x": np.zeros(20)}, {"x": x})
        assert [p.name for p in r.failures] == ["x"], str(r)
        assert r.params["x"].diagnosis.kind == "zero"
