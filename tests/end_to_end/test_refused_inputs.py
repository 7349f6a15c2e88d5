"""Inputs that cannot be checked faithfully are refused with the fix (issue 26): ndarray
subclasses whose meaning a plain copy loses (masked arrays, np.matrix), rtol >= 1 and an
infinite atol (nothing could fail), entries beyond float64's reach, trees nested thousands
deep (the path named, not a RecursionError)."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.errors import InvalidInputError


def _loss(p):
    return float(np.sum(np.asarray(p) ** 2))


def _grad(p):
    return 2 * np.asarray(p)


def test_a_masked_array_is_refused_naming_the_mask_and_the_fix():
    x = np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0])
    with pytest.raises(InvalidInputError, match=r"parameter 'x'.*masked array.*mask would be lost"):
        gradprobe.check(_loss, _grad, x)
    with pytest.raises(InvalidInputError, match=r"parameter 'W'.*x\.filled"):
        gradprobe.check(lambda p: _loss(p["W"]), lambda p: {"W": _grad(p["W"])}, {"W": x})
    assert x.mask.tolist() == [False, True, False]  # the caller's array untouched


def test_a_masked_gradient_is_refused():
    x = np.array([1.0, 2.0])
    with pytest.raises(InvalidInputError, match=r"gradient of 'x'.*masked array"):
        gradprobe.check(_loss, lambda p: np.ma.masked_array(2 * p, mask=[0, 1]), x)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_a_matrix_is_refused_with_the_fix():
    with pytest.raises(InvalidInputError, match=r"numpy\.matrix.*np\.asarray\(m\), and @"):
        gradprobe.check(_loss, _grad, np.matrix([[1.0, 2.0]]))


def test_a_memmap_is_a_plain_array_and_checked(tmp_path):
    x = np.memmap(tmp_path / "x.bin", dtype=np.float64, mode="w+", shape=(3,))
    x[:] = [0.5, -1.0, 2.0]
    assert gradprobe.check(_loss, _grad, x).passed
    assert x.tolist() == [0.5, -1.0, 2.0]


@pytest.mark.parametrize("rtol", [1.0, 2.0, 1e9])
def test_rtol_of_one_or_more_is_refused_because_nothing_could_fail(rtol):
    with pytest.raises(InvalidInputError, match=r"rtol: expected a number below 1.*sign-flipped"):
        gradprobe.check(_loss, lambda p: -_grad(p), np.array([1.0, 2.0]), rtol=rtol)


def test_rtol_just_below_one_still_fails_a_sign_flip():
    report = gradprobe.check(_loss, lambda p: -_grad(p), np.array([1.0, 2.0]), rtol=0.99)
    assert not report.passed


@pytest.mark.parametrize("atol", [float("inf"), float("nan"), -1.0])
def test_atol_must_be_finite_and_non_negative(atol):
    with pytest.raises(InvalidInputError, match=r"atol: expected a finite number >= 0"):
        gradprobe.check(_loss, _grad, np.array([1.0]), atol=atol)


def test_entries_beyond_float64s_reach_are_refused_with_the_index():
    x = np.array([1.0, 1e300])
    with pytest.raises(InvalidInputError, match=r"parameter 'x'.*found 1e\+300 at index \(1,\)"):
        gradprobe.check(_loss, _grad, x)


def test_a_tree_nested_5000_deep_is_refused_naming_the_path():
    tree = [np.ones(2)]
    for _ in range(5000):
        tree = [tree]
    with pytest.raises(InvalidInputError, match=r"nested at most 100 deep.*'\[0\]\[0\]"):
        gradprobe.check(lambda p: 0.0, lambda p: 0.0, tree)
