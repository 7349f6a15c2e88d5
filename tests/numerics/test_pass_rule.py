"""THE pass rule (Tolerance.compare), alone."""

from __future__ import annotations

import numpy as np

from gradprobe.numerics.tolerances import Tolerance

TOL = Tolerance(rtol=1e-5, atol=0.0, loss_eps=2.2e-16)


def test_relative_error_and_allowance():
    a = np.array([1.0, 1.0, 0.0, 1e-9])
    n = np.array([1.0 + 1e-6, 1.0 + 1e-4, 0.0, -1e-9])
    v = TOL.compare(a, n, np.zeros(4))
    assert v.passed.tolist() == [True, False, True, False]
    assert v.rel_error[1] == abs(a[1] - n[1]) / (a[1] + n[1])
    assert v.rel_error[2] == 0.0  # max(1e-8, |a| + |n|) in the denominator
    assert np.allclose(v.allowed[:2], 1e-5 * (np.abs(a[:2]) + np.abs(n[:2])))


def test_round_off_floor_and_atol_widen_the_allowance():
    a, n = np.array([1.0]), np.array([1.001])
    assert not TOL.compare(a, n, np.zeros(1)).passed[0]
    assert TOL.compare(a, n, np.array([2e-3])).passed[0]
    loose = Tolerance(rtol=1e-5, atol=2e-3, loss_eps=2.2e-16)
    assert loose.compare(a, n, np.zeros(1)).passed[0]


def test_nan_and_infinite_estimates_fail():
    a = np.array([1.0, np.nan, 1.0])
    n = np.array([np.nan, 1.0, np.inf])
    v = TOL.compare(a, n, np.array([0.0, 0.0, np.inf]))
    assert not v.passed.any()
    assert np.isinf(v.rel_error[:2]).all()


def test_within_rtol_ignores_the_floor():
    a, n = np.array([1.0, 1.0]), np.array([1.0, 1.0])
    assert TOL.within_rtol(a, n, np.array([1e-5, 1e-3])).tolist() == [True, False]
