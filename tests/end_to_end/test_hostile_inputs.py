"""Odd and hostile inputs: each gets a clear InvalidInputError or a correct result."""

from __future__ import annotations

import time

import numpy as np
import pytest

import gradprobe
from gradprobe import InvalidInputError

from ..helpers import assert_bitwise_unchanged, snapshot


def test_zero_dimensional_parameter():
    params = {"s": np.array(1.5), "v": np.ones(3)}
    report = gradprobe.check(
        lambda p: float(p["s"] ** 2 + np.sum(p["v"] ** 2)),
        lambda p: {"s": 2 * p["s"], "v": 2 * p["v"]},
        params,
    )
    assert report.passed
    assert report.params["s"].shape == () and report.params["s"].worst_index == ()


def test_zero_dimensional_wrong_gradient_fails_with_empty_index():
    report = gradprobe.check(lambda x: float(x**2), np.array(0.0), np.array(2.0))
    assert not report.passed
    assert report.params["x"].worst_entries[0].index == ()


def test_views_sharing_memory_are_rejected():
    x = np.ones(10)
    with pytest.raises(
        InvalidInputError, match=r"parameters 'a' and 'b': expected separate arrays"
    ):
        gradprobe.check(lambda p: 1.0, lambda p: p, {"a": x[:5], "b": x[4:]})


def test_disjoint_views_of_one_buffer_are_fine():
    x = np.arange(10.0)
    params = {"a": x[:5], "b": x[5:]}
    saved = snapshot(params)
    report = gradprobe.check(
        lambda p: float(np.sum(p["a"] ** 2) + np.sum(p["b"])),
        lambda p: {"a": 2 * p["a"], "b": np.ones(5)},
        params,
    )
    assert report.passed
    assert_bitwise_unchanged(params, saved)


def test_float16_parameters_warn_and_pass_on_exact_quadratic():
    x = np.linspace(-1, 1, 16).astype(np.float16)
    report = gradprobe.check(
        lambda v: float(np.sum(v.astype(np.float64) ** 2)),
        lambda v: 2 * v.astype(np.float64),
        x,
        promote=False,
    )
    assert report.passed, str(report)
    assert report.params["x"].dtype == "float16"
    assert report.params["x"].rtol >= 1e-2
    assert any("float64" in w for w in report.warnings)


def test_complex_parameters_rejected_with_fix():
    with pytest.raises(
        InvalidInputError, match=r"parameter 'x': expected a floating-point dtype, found complex128"
    ):
        gradprobe.check(lambda v: float(np.abs(v).sum()), np.ones(2), np.ones(2, dtype=complex))


def test_gradient_list_for_mapping_params():
    params = {"a": np.arange(3.0), "b": np.ones(2)}
    report = gradprobe.check(
        lambda p: float(np.sum(p["a"] ** 2) + np.sum(p["b"] ** 2)),
        lambda p: [2 * p["a"], 2 * p["b"]],
        params,
    )
    assert report.passed


def test_nan_in_analytic_gradient_is_reported_per_entry():
    x = np.arange(1.0, 6.0)
    g = 2 * x
    g[3] = np.nan
    report = gradprobe.check(lambda v: float(np.sum(v**2)), g, x)
    assert not report.passed
    p = report.params["x"]
    assert p.worst_index == (3,)
    assert np.isnan(p.worst_entries[0].analytic)
    assert p.n_failed == 1
    assert "[3]: analytic=nan" in str(report)
    assert report.to_json()  # NaN/inf are written as null, the JSON stays valid


def test_nan_loss_at_one_perturbed_point_fails_that_entry_only():
    x = np.arange(1.0, 6.0)

    def loss(v):
        if v[2] > 3.0 + 1e-9:
            return float("nan")
        return float(np.sum(v**2))

    report = gradprobe.check(loss, lambda v: 2 * v, x)
    p = report.params["x"]
    assert not p.passed and p.n_failed == 1 and p.worst_index == (2,)


@pytest.mark.timeout(30)
def test_slow_loss_is_stopped_by_timeout():
    calls = []

    def slow(v):
        calls.append(1)
        if len(calls) > 1:
            time.sleep(10)
        return float(np.sum(v**2))

    x = np.ones(3)
    saved = snapshot(x)
    start = time.monotonic()
    with pytest.raises(gradprobe.CheckAborted) as info:
        gradprobe.check(slow, lambda v: 2 * v, x, timeout=1.0)
    assert time.monotonic() - start < 5.0
    assert info.value.reason == "timeout"
    assert info.value.partial_report is not None and not info.value.partial_report.complete
    assert_bitwise_unchanged(x, saved)
    # The message quotes the timeout the user gave, not the time left after start-up.
    assert str(info.value).startswith("time limit of 1 s (timeout=1) reached")
    summary = info.value.partial_report.summary_line()
    assert summary.startswith("gradprobe: gradient check INCOMPLETE: CheckAborted: time limit")
    assert "FAILED" not in summary


def test_budget_stops_cleanly_with_partial_report():
    x = np.ones(50)
    with pytest.raises(gradprobe.CheckAborted) as info:
        gradprobe.check(
            lambda p: float(np.sum(p["a"] ** 2) + np.sum(p["b"] ** 2)),
            lambda p: {"a": 2 * p["a"], "b": 2 * p["b"]},
            {"a": np.ones(3), "b": x},
            budget=20,
        )
    assert info.value.reason == "budget"
    partial = info.value.partial_report
    assert not partial.complete and "budget" in partial.incomplete_reason
    # "a" finished; "b" stopped part-way, its finished entries kept, with no verdict.
    assert list(partial.params) == ["a", "b"]
    assert partial.params["a"].finished and not partial.params["b"].finished
    assert 0 < partial.params["b"].n_checked < 50 and partial.failures == ()
    assert partial.n_evaluations <= 20


def test_quantized_loss_gets_a_noise_warning():
    x = np.linspace(0.1, 3.0, 10)
    report = gradprobe.check(lambda v: int(np.sum(v * 100)), np.full(10, 100.0), x)
    assert any("the loss is noisy" in w for w in report.warnings), report.warnings


def test_cancelling_smooth_loss_gets_no_noise_warning():
    x = np.linspace(-1.0, 1.0, 600)
    report = gradprobe.check(lambda v: float(np.sum(v**3)), lambda v: 3 * v**2, x)
    assert report.passed, str(report)
    assert not any("noisy" in w for w in report.warnings)
