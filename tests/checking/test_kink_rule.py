"""THE retry and kink rule, alone, on one-sided errors stated in first-step units."""

from __future__ import annotations

import numpy as np

from gradprobe.checking.kinks import OneSided, classify, retry_passes

A = np.array([1e-6])  # the first comparison's allowance
FLOOR = np.array([1e-9])  # round-off of the smaller step's one-sided values


def _sides(plus, minus):
    return OneSided(np.array([plus]), np.array([minus]))


def test_retry_passes_only_when_the_disagreement_shrank_or_is_within_rtol():
    assert retry_passes(np.array([True]), np.array([1.0]), np.array([9.0]))[0]
    assert not retry_passes(np.array([True]), np.array([4.0]), np.array([9.0]))[0]
    assert retry_passes(np.array([True]), np.array([4.0]), np.array([9.0]), np.array([True]))[0]
    assert not retry_passes(np.array([False]), np.array([0.0]), np.array([9.0]))[0]


def test_smooth_function_with_a_wrong_gradient_is_no_kink():
    # Both sides carry the same error eps, plus curvature that shrinks with the step.
    eps, c = 1e-3, 1e-4
    v = classify(_sides(eps + c, eps - c), _sides(eps + c / 8, eps - c / 8), A, FLOOR)
    assert not v.crossed[0] and not v.kink[0]


def test_kink_at_the_point_with_a_subgradient_between_the_sides():
    # The slope jumps by 1 at x: e+ = +0.4, e- = -0.6 at both steps (the analytic value is a
    # valid subgradient), with a little curvature.
    v = classify(_sides(0.4 + 1e-4, -0.6 - 1e-4), _sides(0.4 + 1e-5, -0.6 - 1e-5), A, FLOOR)
    assert v.crossed[0] and v.kink[0]


def test_kink_at_the_point_with_the_analytic_outside_fails():
    v = classify(_sides(0.4, 0.3), _sides(0.4, 0.3 + 1e-7), A, FLOOR)
    assert not v.kink[0]


def test_kink_near_the_point_with_the_analytic_on_the_smooth_side():
    # The backward step crosses a kink at a distance between h/8 and h; the forward side is
    # smooth and agrees with the analytic value (its error shrinks with the step).
    v = classify(_sides(8e-7, -0.9), _sides(1e-7, -0.3), A, FLOOR)
    assert v.crossed[0] and v.kink[0]


def test_kink_near_the_point_does_not_hide_a_wrong_gradient():
    # Same crossing, but the analytic value is off by 1e-4 on the smooth side too.
    v = classify(_sides(1e-4 + 8e-7, -0.9), _sides(1e-4 + 1e-7, -0.3), A, FLOOR)
    assert not v.kink[0]
