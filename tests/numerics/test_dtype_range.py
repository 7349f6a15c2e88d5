"""Steps stay inside the dtype's range (issue 26): a flat float32/float16 loss gets the verdict
float64 gets, the step never grows past what the dtype holds, the loss is never handed an inf
from finite parameters, and no RuntimeWarning escapes gradprobe's arithmetic."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradprobe
from gradprobe.numerics.steps import MAX_LOSS_EPS, central_steps, default_relative_step, in_dtype

A = np.random.default_rng(0).standard_normal((6, 4))


def _hinge_check(dtype):
    w = (0.1 * np.random.default_rng(1).standard_normal(4)).astype(dtype)
    handed = []

    def loss(v):  # exactly 0 around w: every margin is far below 5
        handed.append(bool(np.all(np.isfinite(v))))
        return float(np.sum(np.maximum(0.0, A @ v.astype(np.float64) - 5.0)))

    def grad(v):
        active = (A @ v.astype(np.float64) - 5.0) > 0
        return A.T @ active.astype(np.float64)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.filterwarnings("ignore", "parameters .* are float", UserWarning)
        report = gradprobe.check(loss, grad, w)
    return report, handed


def _measured(report):
    # What the check measured (report.measured where the report has one, else settings).
    return {**report.settings, **dict(getattr(report, "measured", {}) or {})}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_flat_hinge_loss_gets_the_float64_verdict_in_lower_precision(dtype):
    expected, _ = _hinge_check(np.float64)
    report, handed = _hinge_check(np.dtype(dtype))
    assert report.passed == expected.passed is True
    p = report.params["x"]
    assert 0 < p.step < 1  # was 4.5e+99 in float32
    assert _measured(report)["noise"] == _measured(expected)["noise"] == "flat"
    assert _measured(report)["loss_precision"] == float(np.finfo(dtype).eps)
    assert all(handed)


def test_steps_from_finite_values_stay_finite_in_the_dtype():
    big = np.finfo(np.float16).max
    x = np.array([big, -big, 6e4, 0.0], dtype=np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        steps = central_steps(x, 0.1)
    assert np.all(np.isfinite(steps.plus)) and np.all(np.isfinite(steps.minus))
    assert np.all(steps.taken > 0)  # one-sided at the range's end, never a zero divisor
    assert steps.plus[0] == big and steps.minus[1] == -big
    assert in_dtype(np.array([1e300, -np.inf]), np.float32).tolist() == [
        float(np.finfo(np.float32).max),
        -float(np.finfo(np.float32).max),
    ]


def test_a_measured_precision_is_capped():
    # A loss of 0 at the base point with noise around it has no relative precision: the step
    # stays below 1 whatever was measured.
    assert default_relative_step(np.float32, "central", 1e298) == MAX_LOSS_EPS ** (1 / 3)
    assert default_relative_step(np.float64, "central", float("nan")) == pytest.approx(
        6.06e-6, 1e-2
    )
