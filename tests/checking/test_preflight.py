"""Pre-flight checks: nondeterminism, in-place mutation, non-finite gradients, promote."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.numerics.tolerances import NOISE_HALF_POINTS

from ..helpers import SIN_X as X
from ..helpers import sin_grad as grad
from ..helpers import sin_loss as loss
from ..helpers import sin_params as params


def test_random_loss_raises_nondeterministic_with_causes_and_fix():
    rng = np.random.default_rng(0)

    def dropout_loss(p):
        mask = rng.random(5) > 0.5  # unseeded dropout left on
        return float(np.sum(np.sin(p["w"]) * X * mask) + 0.5 * np.sum(p["v"] ** 2))

    with pytest.raises(gradprobe.NondeterministicLossError) as info:
        gradprobe.check(dropout_loss, grad, params())
    text = str(info.value)
    assert "dropout" in text and "seed" in text and "Fix:" in text
    assert isinstance(info.value, gradprobe.GradCheckError)
    assert info.value.partial_report is not None and not info.value.partial_report.complete


def test_random_grad_raises_nondeterministic():
    rng = np.random.default_rng(0)

    def noisy_grad(p):
        g = grad(p)
        g["w"] = g["w"] + rng.standard_normal(5) * 1e-3
        return g

    with pytest.raises(gradprobe.NondeterministicLossError, match=r"grad: .*second call"):
        gradprobe.check(loss, noisy_grad, params())


def test_deterministic_loss_passes_and_costs_one_extra_evaluation():
    report = gradprobe.check(loss, grad, params())
    assert report.passed, str(report)
    # base + pre-flight repeat + the noise estimate + 2 per entry
    assert report.n_evaluations == 2 + 2 * NOISE_HALF_POINTS + 2 * 8


@pytest.mark.parametrize("who", ["loss", "grad"])
def test_mutation_of_given_parameters_is_refused(who):
    p = params()
    saved = {k: v.copy() for k, v in p.items()}

    def bad_loss(q):
        value = loss(q)
        q["v"] *= 0.5
        return value

    def bad_grad(q):
        g = grad(q)
        q["w"] += 1.0
        return g

    args = (bad_loss, grad) if who == "loss" else (loss, bad_grad)
    name = "v" if who == "loss" else "w"
    with pytest.raises(gradprobe.InvalidInputError, match=rf"{who}: .*\['{name}'\] modified"):
        gradprobe.check(*args, p)
    for k in p:
        assert np.array_equal(p[k], saved[k])


def test_nonfinite_gradient_fails_its_parameter_with_diagnosis_and_others_are_checked():
    def nan_grad(p):
        g = grad(p)
        g["w"][2] = np.nan
        return g

    report = gradprobe.check(loss, nan_grad, params())
    assert not report.passed and report.complete
    w = report.params["w"]
    assert not w.passed and (2,) in w.bad_indices
    assert w.diagnosis is not None and w.diagnosis.kind == "nonfinite"
    assert report.params["v"].passed
    assert any("non-finite" in line for line in report.warnings)
    assert "likely cause: nonfinite" in str(report)


def test_nonfinite_gradient_outside_the_sample_still_fails():
    big = np.random.default_rng(3).standard_normal(5000)

    def g(p):
        out = np.cos(p)
        out[1234] = np.inf
        return out

    report = gradprobe.check(lambda p: float(np.sum(np.sin(p))), g, big, samples=10, probes=0)
    assert not report.passed
    assert (1234,) in report.params["x"].bad_indices


def test_promote_casts_float32_to_float64():
    rng = np.random.default_rng(0)
    p = {"w": rng.standard_normal(6).astype(np.float32)}
    seen = []

    def f(q):
        seen.append(q["w"].dtype)
        return float(np.sum(np.tanh(q["w"]) ** 2))

    def g(q):
        t = np.tanh(q["w"])
        return {"w": 2 * t * (1 - t**2)}

    report = gradprobe.check(f, g, p, promote=True)
    assert report.passed, str(report)
    assert set(seen) == {np.dtype(np.float64)}
    assert report.params["w"].dtype == "float64" and report.params["w"].rtol == 1e-5
    assert any("promoted" in w for w in report.warnings)
    assert p["w"].dtype == np.float32  # caller's array untouched
    plain = gradprobe.check(f, g, p)
    assert plain.params["w"].dtype == "float32"
    assert any("promote=True" in w for w in plain.warnings)


def test_promote_must_be_bool():
    with pytest.raises(gradprobe.InvalidInputError, match="promote: expected True, False or 'auto'"):
        gradprobe.check(loss, grad, params(), promote="yes")
