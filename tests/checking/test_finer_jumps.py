"""Jumps finer than the step (issue 21, float32): a piecewise constant loss whose grid is finer
than float32's default step (``round(x, 3)``: 0.024 at |x| = 5 spans ~24 jumps) is a staircase
that reads as a slope at every step the check takes. The pre-flight finds it piecewise
constant, and the entries that fail are found flat at finer steps: jumps, not failures. No
wrong gradient of a smooth loss hides behind the rule."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.checking.kinks import flat, flat_steps
from gradprobe.checking.noise import (
    PIECEWISE_CONSTANT,
    crosses_jumps,
    estimate_loss_noise,
    resolution,
    value_grid,
)
from gradprobe.evaluate import SerialEvaluator
from gradprobe.layout import normalize_params
from gradprobe.numerics.tolerances import NOISE_HALF_POINTS

FINER = "piecewise constant on a grid finer than the step"


def _x(seed: int, dtype, n: int = 20) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 5).astype(dtype)


def _g(seed: int, dtype, n: int = 20) -> np.ndarray:
    return np.random.default_rng(seed + 1000).standard_normal(n).astype(dtype)


def _zero(p):
    return {"x": np.zeros_like(p["x"])}


STAIRCASES = {
    "round": lambda g: lambda p: float(np.sum(np.round(p["x"], 3))),
    "weighted round": lambda g: lambda p: float(np.sum(g * np.round(p["x"], 3))),
    "floor": lambda g: lambda p: float(np.sum(np.floor(p["x"] * 1000) / 1000)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(STAIRCASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_staircases_pass_in_float32_and_float64(dtype, kind, seed):
    loss = STAIRCASES[kind](_g(seed, dtype))
    r = gradprobe.check(loss, _zero, {"x": _x(seed, dtype)})
    assert r.passed, str(r)
    assert r.measured["noise"] == "piecewise constant"
    statement = r.params["x"].coverage.statement
    # float64's step (6e-6 relative) is finer than the grid: its jumps are found at the step.
    assert (FINER in statement) == (dtype == np.float32), statement
    assert r.params["x"].diagnosis is None


def test_float32_staircase_report_says_piecewise_and_lists_the_jumps():
    r = gradprobe.check(STAIRCASES["round"](None), _zero, {"x": _x(0, np.float32)})
    assert r.passed, str(r)
    assert any("stays exactly equal but for jumps far above its rounding" in w for w in r.warnings)
    statement = r.params["x"].coverage.statement
    assert FINER in statement and "jumps, not failures" in statement
    assert r.params["x"].n_failed == 0 and r.params["x"].bad_indices == ()


def _sin_loss(g, offset=0.0):
    return lambda p: float(np.float32(offset) + np.sum(g * np.sin(p["x"])))


MUTANTS = {
    "x1.01": lambda a: a * np.float32(1.01),
    "x2": lambda a: 2 * a,
    "sign": lambda a: -a,
    "all zero": np.zeros_like,
}


@pytest.mark.parametrize("offset", [0.0, 1e4], ids=["plain", "large offset"])
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_float32_wrong_gradients_of_a_smooth_loss_still_fail(mutant, offset):
    g, x = _g(5, np.float32, 30), _x(5, np.float32, 30)
    r = gradprobe.check(
        _sin_loss(g, offset), lambda p: {"x": MUTANTS[mutant](g * np.cos(p["x"]))}, {"x": x}
    )
    assert [p.name for p in r.failures] == ["x"], str(r)
    assert FINER not in r.params["x"].coverage.statement


@pytest.mark.parametrize("offset", [0.0, 1e4], ids=["plain", "large offset"])
@pytest.mark.parametrize("entry", [0, 7, 19])
def test_float32_one_entry_zeroed_is_found_there(entry, offset):
    # Its slope changes the loss by far more than its rounding at steps finer than the
    # check's: never flat there. With a large offset the loss's rounding is coarse, and no
    # step finer than the check's resolves the slope: not tried, still failed.
    g, x = _g(6, np.float32, 30), _x(6, np.float32, 30)

    def grad(p):
        out = g * np.cos(p["x"])
        out[entry] = 0.0
        return {"x": out}

    r = gradprobe.check(_sin_loss(g, offset), grad, {"x": x})
    assert r.params["x"].bad_indices == ((entry,),), str(r)
    assert r.params["x"].diagnosis.kind == "zero"


def test_a_zero_gradient_of_a_staircase_plus_a_slope_fails():
    # Not flat at any step: the slope 0.02 x is there at every scale.
    r = gradprobe.check(
        lambda p: float(np.sum(np.round(p["x"], 3)) + np.float32(0.01) * np.sum(p["x"] ** 2)),
        _zero,
        {"x": _x(3, np.float32)},
    )
    assert [p.name for p in r.failures] == ["x"], str(r)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float16_computed_loss_with_a_zero_gradient_still_fails_in_float32(seed):
    # Rounded to float16's grid, the loss is a staircase too; its values carry 11 bits, so
    # its rounding is float16's and no finer step resolves a slope: nothing is called flat.
    g, x = _g(seed, np.float32, 30), _x(seed, np.float32, 30)
    r = gradprobe.check(
        lambda p: float(np.sum((g * np.sin(p["x"])).astype(np.float16))), _zero, {"x": x}
    )
    assert [p.name for p in r.failures] == ["x"], str(r)


def test_staircase_entries_and_a_wrong_entry_in_one_parameter():
    # The first 10 entries feed a staircase (zero gradient, right), the others a smooth term
    # whose gradient is off by 1.5x: those fail, the staircase's are jumps.
    g = _g(7, np.float32)

    def loss(p):
        x = p["x"]
        return float(np.sum(g[:10] * np.round(x[:10], 3)) + np.sum(g[10:] * np.sin(x[10:])))

    def grad(p):
        out = np.zeros_like(p["x"])
        out[10:] = 1.5 * g[10:] * np.cos(p["x"][10:])
        return {"x": out}

    r = gradprobe.check(loss, grad, {"x": _x(7, np.float32)})
    rep = r.params["x"]
    assert not rep.passed
    assert rep.bad_indices and all(i[0] >= 10 for i in rep.bad_indices), str(r)
    jumps = rep.diagnosis.evidence["jumps"]
    assert jumps and all(j < 10 for j in jumps)
    assert FINER in rep.coverage.statement
    assert rep.diagnosis.kind == "scale", str(r)


@pytest.mark.parametrize("n", [20, 400, 3000])
def test_noise_estimate_finds_a_float32_staircase_of_any_size(n):
    # Over 400 entries every point of the noise estimate crosses a jump somewhere: along a
    # few entries the loss is flat or a staircase (8 evaluations more, zero gradient only).
    x, g = _x(n, np.float32, n), _g(n, np.float32, n)
    layout, base, _ = normalize_params(x)
    ev = SerialEvaluator(lambda v: float(np.sum(g * np.round(v, 3))), layout, base)
    est = estimate_loss_noise(ev, ev.base_loss(), np.random.default_rng(0), zero_gradient=True)
    assert est.status == PIECEWISE_CONSTANT and est.sigma == 0.0
    assert est.n_evaluations <= 4 * NOISE_HALF_POINTS
    # With a gradient that is not zero everywhere nothing is called piecewise constant.
    assert estimate_loss_noise(ev, ev.base_loss(), np.random.default_rng(0)).status in (
        "measured",
        "inconclusive",
    )


# -- the rules alone ---------------------------------------------------------------------------


def test_value_grid_and_resolution():
    assert value_grid([12.345]) == np.finfo(np.float64).eps
    assert value_grid([float(np.float32(12.345))]) == np.finfo(np.float32).eps
    assert value_grid([0.0]) == 0.0
    eps32 = float(np.finfo(np.float32).eps)
    # float32 values of a float32 loss: its own epsilon; float16's grid is far coarser.
    assert resolution([float(np.float32(12.345)), 3.0], eps32) == eps32
    assert resolution([float(np.float16(3.3)), float(np.float16(1.7))], eps32) > 1000 * eps32


def test_crosses_jumps_tells_a_staircase_from_rounding():
    eps = float(np.finfo(np.float32).eps)
    base = float(np.float32(18.316))
    staircase = [base] * 3 + [base - 0.001] * 6
    assert crosses_jumps(staircase, eps)
    # Changes of an ulp or two beside ties are rounding of a flat loss, not jumps.
    ulp = float(np.spacing(np.float32(base)))
    assert not crosses_jumps([base] * 3 + [base + ulp] * 3 + [base + 2 * ulp] * 3, eps)
    # A smooth loss changes at every point; a flat one at none.
    assert not crosses_jumps([base + 0.001 * i for i in range(9)], eps)
    assert not crosses_jumps([base] * 9, eps)
    # A float16 loss's values change by its own coarse ulp: rounding, not jumps.
    h = float(np.float16(18.3))
    assert not crosses_jumps([h] * 5 + [h + float(np.spacing(np.float16(h)))] * 4, eps)


def test_flat_needs_ties_where_the_slope_would_show():
    numeric, rounding = np.array([1.0]), 1e-6
    fine, coarse, usable = flat_steps(numeric, np.array([5.0]), rounding, 0.0049)
    assert usable[0] and coarse[0] == 4 * fine[0]
    taken = np.array([[fine[0], coarse[0], fine[0], coarse[0]]])
    f0 = 7.0
    assert flat(np.array([[f0, f0, f0, f0, f0]]), taken, numeric, rounding)[0]
    # flat on one side at both steps, a jump on the other: flat
    assert flat(np.array([[f0, f0, f0, f0, f0 + 1e-3]]), taken, numeric, rounding)[0]
    # the loss changes at the fine step on both sides: a slope, not flat
    assert not flat(np.array([[f0, f0 + 1e-5, f0, f0 - 1e-5, f0]]), taken, numeric, rounding)[0]
    # ties where the slope changes the loss by less than its rounding say nothing
    assert not flat(np.array([[f0] * 5]), taken, np.array([1e-4]), rounding)[0]
    # float64's step: no finer step than the check's own to try
    assert not flat_steps(numeric, np.array([5.0]), 1e-15, 6.06e-6)[2][0]
