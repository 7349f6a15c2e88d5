"""Every bad input gets an InvalidInputError naming the parameter, expectation and finding."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe import InvalidInputError

from ..helpers import quadratic_problem


def ok_loss(p):
    return float(np.sum(p["w"] ** 2))


def ok_grad(p):
    return {"w": 2 * p["w"]}


PARAMS = {"w": np.arange(1.0, 4.0)}


def test_invalid_input_error_is_a_value_error():
    assert issubclass(InvalidInputError, ValueError)
    assert issubclass(InvalidInputError, gradprobe.GradCheckError)


@pytest.mark.parametrize(
    ("loss", "match"),
    [
        (lambda p: float("nan"), r"loss at the base point: expected a finite value, found nan"),
        (lambda p: np.inf, r"loss at the base point: expected a finite value, found inf"),
        (
            lambda p: p["w"],
            r"loss at the base point: expected a scalar, found an array of shape \(3,\)",
        ),
        (lambda p: "1.0", r"loss at the base point: expected a real scalar .* found str"),
        (lambda p: True, r"expected a real scalar, found a boolean"),
    ],
)
def test_bad_loss_values(loss, match):
    with pytest.raises(InvalidInputError, match=match):
        gradprobe.check(loss, ok_grad, PARAMS)


def test_non_callable_loss():
    with pytest.raises(InvalidInputError, match=r"loss: expected a callable .* found float"):
        gradprobe.check(1.0, ok_grad, PARAMS)


def test_missing_and_extra_gradient_keys():
    with pytest.raises(InvalidInputError, match=r"grad: expected the same names .*missing \['w'\]"):
        gradprobe.check(ok_loss, {"v": np.zeros(3)}, PARAMS)
    with pytest.raises(InvalidInputError, match=r"unexpected \['extra' \(str\)\]"):
        gradprobe.check(ok_loss, {"w": np.zeros(3), "extra": np.zeros(1)}, PARAMS)


def test_gradient_shape_mismatch_names_parameter_and_shapes():
    with pytest.raises(
        InvalidInputError, match=r"gradient of 'w': expected shape \(3,\) .*found \(4,\)"
    ):
        gradprobe.check(ok_loss, {"w": np.zeros(4)}, PARAMS)


def test_transposed_gradient_shape_gets_a_hint():
    params = {"W": np.ones((2, 3))}
    with pytest.raises(InvalidInputError, match=r"transpose"):
        gradprobe.check(lambda p: float(p["W"].sum()), {"W": np.ones((3, 2))}, params)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex128])
def test_non_float_params_rejected(dtype):
    with pytest.raises(InvalidInputError, match=r"parameter 'w': expected a floating-point dtype"):
        gradprobe.check(ok_loss, ok_grad, {"w": np.ones(3, dtype=dtype)})


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_integer_gradient_is_compared_as_float(dtype):
    # A gradient is a set of values (here the exact 2 * w), not a parameter: ints are fine.
    report = gradprobe.check(ok_loss, {"w": np.array([2, 4, 6], dtype=dtype)}, PARAMS)
    assert report.passed
    wrong = gradprobe.check(ok_loss, {"w": np.array([2, 4, 7], dtype=dtype)}, PARAMS)
    assert not wrong.passed and wrong.params["w"].bad_indices == ((2,),)


@pytest.mark.parametrize("dtype", [np.bool_, np.complex128, object])
def test_non_numeric_gradient_rejected(dtype):
    with pytest.raises(InvalidInputError, match=r"gradient of 'w': expected a floating-point"):
        gradprobe.check(ok_loss, {"w": np.array([1, 0, 1], dtype=dtype)}, PARAMS)


def test_int_keys_for_sequence_params_say_the_keys_must_be_the_str_names():
    params = [np.ones(2), np.ones(2)]

    def loss(p):
        return float(np.sum(p[0] ** 2) + np.sum(p[1]))

    with pytest.raises(InvalidInputError) as info:
        gradprobe.check(loss, {0: 2 * params[0], 1: np.ones(2)}, params)
    message = str(info.value)
    # The types are shown, so '0' (str) and 0 (int) no longer read as the same key.
    assert "['0' (str), '1' (str)]" in message and "[0 (int), 1 (int)]" in message
    assert "not str" in message and "{str(k): g" in message
    # The fix the message gives works.
    report = gradprobe.check(loss, {"0": 2 * params[0], "1": np.ones(2)}, params)
    assert report.passed


def test_empty_parameter_rejected():
    with pytest.raises(InvalidInputError, match=r"parameter 'e': expected at least one entry"):
        gradprobe.check(ok_loss, ok_grad, {"w": np.ones(3), "e": np.ones((0, 2))})


@pytest.mark.parametrize("params", [{}, [], "abc", 3])
def test_empty_or_wrong_container(params):
    with pytest.raises(InvalidInputError, match=r"params: expected"):
        gradprobe.check(ok_loss, ok_grad, params)


def test_non_finite_parameter_rejected():
    with pytest.raises(
        InvalidInputError, match=r"parameter 'w': expected finite values, found nan at index \(1,\)"
    ):
        gradprobe.check(ok_loss, ok_grad, {"w": np.array([1.0, np.nan])})


@pytest.mark.parametrize("eps", [0, -1e-6, float("nan"), float("inf"), "big"])
def test_bad_eps(eps):
    with pytest.raises(InvalidInputError, match=r"eps: expected"):
        gradprobe.check(ok_loss, ok_grad, PARAMS, eps=eps)


@pytest.mark.parametrize(
    ("samples", "match"),
    [
        (0.0, r"samples: expected a fraction in \(0, 1\]"),
        (1.5, r"samples: expected a fraction in \(0, 1\]"),
        ("some", r"samples: expected 'all'"),
        (-1, r"samples: expected an int >= 0"),
        ({"nope": 3}, r"samples: unknown parameter names \['nope'\]"),
        ({"w": "x"}, r"samples\['w'\]: expected 'all'"),
    ],
)
def test_bad_samples(samples, match):
    with pytest.raises(InvalidInputError, match=match):
        gradprobe.check(ok_loss, ok_grad, PARAMS, samples=samples)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_jobs": 0}, r"n_jobs: expected a nonzero int"),
        ({"n_jobs": "many"}, r"n_jobs: expected"),
        ({"seed": -1}, r"seed: expected an int >= 0"),
        ({"method": "backward"}, r"method: expected one of"),
        ({"rtol": 0}, r"rtol: expected"),
        ({"atol": -1.0}, r"atol: expected a finite number >= 0"),
        ({"budget": 0}, r"budget: expected an int >= 1"),
        ({"timeout": -3}, r"timeout: expected"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        gradprobe.check(ok_loss, ok_grad, PARAMS, **kwargs)


@pytest.mark.parametrize(
    "value",
    [np.float64(2.0), np.array(2.0), np.array([2.0]), 2, np.float32(2.0)],
    ids=["numpy-scalar", "0d", "1-element", "int", "float32"],
)
def test_scalar_like_losses_accepted(value):
    loss, grad, x = quadratic_problem()
    calls = []

    def wrapped(v):
        calls.append(1)
        return value if len(calls) <= 2 else loss(v)

    # Only the base value (first call and the pre-flight repeat) is odd; it must be accepted.
    report = gradprobe.check(wrapped, grad, x)
    assert report.complete


def test_item_objects_accepted():
    class TensorLike:
        def __init__(self, v):
            self.v = v

        def item(self):
            return self.v

    loss, grad, x = quadratic_problem()
    report = gradprobe.check(lambda v: TensorLike(loss(v)), grad, x)
    assert report.passed


def test_gradient_as_list_for_sequence_params():
    report = gradprobe.check(
        lambda ps: float(np.sum(ps[0] ** 2)), lambda ps: [2 * ps[0]], [np.arange(3.0)]
    )
    assert report.passed


def test_gradient_list_of_wrong_length():
    with pytest.raises(InvalidInputError, match=r"grad: expected 1 gradient arrays .* found 2"):
        gradprobe.check(
            lambda ps: float(np.sum(ps[0] ** 2)), lambda ps: [2 * ps[0], ps[0]], [np.arange(3.0)]
        )
