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
