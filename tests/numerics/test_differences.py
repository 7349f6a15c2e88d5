"""The numpy difference quotients and pass rule equal, bit for bit, the scalar loops they
replaced (numba-compiled here, as the old kernels were), NaN, inf, signed zeros and ties
included."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gradprobe.numerics import differences

numba = pytest.importorskip("numba")

SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 1e-9, -3e-300, 2.5, 1e308, np.inf, -np.inf, np.nan])


@numba.njit(cache=False)
def _central_loop(f_plus, f_minus, taken):
    m = f_plus.shape[0]
    numeric = np.empty(m)
    for i in range(m):
        numeric[i] = (f_plus[i] - f_minus[i]) / taken[i]
    return numeric


@numba.njit(cache=False)
def _compare_loop(analytic, numeric, noise, rtol, atol):
    m = analytic.shape[0]
    abs_error = np.empty(m)
    rel_error = np.empty(m)
    allowed = np.empty(m)
    passed = np.empty(m, dtype=np.bool_)
    for i in range(m):
        a = analytic[i]
        n = numeric[i]
        d = abs(a - n)
        abs_error[i] = d
        denom = max(1e-8, abs(a) + abs(n))
        r = d / denom
        rel_error[i] = r if r == r else np.inf
        tol = max(rtol * denom, noise[i]) + atol
        allowed[i] = tol
        passed[i] = d <= tol and abs(n) < np.inf
    return abs_error, rel_error, allowed, passed


@numba.njit(cache=False)
def _one_sided_loop(f_plus, f0, f_minus, forward_taken, backward_taken):
    m = f_plus.shape[0]
    forward = np.empty(m)
    backward = np.empty(m)
    gap = np.empty(m)
    for i in range(m):
        forward[i] = (f_plus[i] - f0) / forward_taken[i]
        backward[i] = (f0 - f_minus[i]) / backward_taken[i]
        gap[i] = abs(forward[i] - backward[i])
    return forward, backward, gap


def _same_bits(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert g.tobytes() == w.tobytes()


def _pairs():
    """Every pair of special values, then random values at mixed scales (fixed seed)."""
    pairs = np.array(list(itertools.product(SPECIAL, SPECIAL)))
    rng = np.random.default_rng(0)
    random = rng.standard_normal((400, 2)) * 10.0 ** rng.integers(-12, 12, (400, 2))
    near = np.stack([random[:, 0], random[:, 0] * (1 + 1e-6 * rng.standard_normal(400))], 1)
    both = np.concatenate([pairs, random, near])
    return np.ascontiguousarray(both[:, 0]), np.ascontiguousarray(both[:, 1])


@pytest.mark.parametrize(
    ("rtol", "atol"), [(1e-5, 0.0), (2e-3, 1e-7), (0.0, 0.0), (1e-5, np.inf), (0.0, -0.0)]
)
def test_compare_equals_the_scalar_loop_bit_for_bit(rtol, atol):
    a, n = _pairs()
    rng = np.random.default_rng(1)
    noise = np.abs(rng.standard_normal(a.size)) * 10.0 ** rng.integers(-16, 0, a.size)
    noise[::7] = 0.0
    noise[1::7] = -0.0
    noise[2::7] = np.nan
    noise[3::7] = np.inf
    _same_bits(differences.compare(a, n, noise, rtol, atol), _compare_loop(a, n, noise, rtol, atol))


def test_difference_quotients_equal_the_scalar_loops_bit_for_bit():
    fp, fm = _pairs()
    rng = np.random.default_rng(2)
    taken = 10.0 ** rng.uniform(-9, -2, fp.size)
    up, down = taken * 0.5, taken * 0.5000001
    _same_bits([differences.central_differences(fp, fm, taken)], [_central_loop(fp, fm, taken)])
    for f0 in (0.0, 1.5, -2e10, np.nan, np.inf):
        _same_bits(
            differences.one_sided_differences(fp, f0, fm, up, down),
            _one_sided_loop(fp, f0, fm, up, down),
        )


def test_no_warnings_on_nonfinite_inputs():
    a, n = _pairs()
    with np.errstate(all="raise"):  # would raise FloatingPointError on any warning
        differences.compare(a, n, np.zeros(a.size), 1e-5, 0.0)
        differences.central_differences(a, n, np.ones(a.size))
        differences.one_sided_differences(a, 1.0, n, np.ones(a.size), np.ones(a.size))


def test_views_and_float32_inputs_are_computed_in_float64():
    f = np.arange(12.0).reshape(6, 2) ** 1.5
    taken = np.full(6, 1e-3, dtype=np.float32)
    got = differences.central_differences(f[:, 0], f[:, 1], taken)
    want = _central_loop(f[:, 0].copy(), f[:, 1].copy(), taken.astype(np.float64))
    _same_bits([got], [want])
