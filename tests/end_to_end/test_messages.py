"""Messages at the public boundary: the user's call and the message, a failure printed once,
names from the user's own code.

- an error a public function raises has no traceback frames inside gradprobe but the one
  that re-raises it at the call (``GRADPROBE_TRACEBACK=full`` keeps them all); the cause of a
  ``LossEvaluationError`` (the user's exception) keeps its own frames;
- ``print(report)`` then ``report.raise_for_failures()`` shows each failure's block once;
- a tuple input of ``check_layer`` is named after ``forward``'s arguments; a parameter under a
  dict attribute (``self.params = {"W": ...}``) gets the path that works in the message.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np
import pytest

import gradprobe
from gradprobe import examples
from gradprobe.tree import argument_names

PACKAGE = Path(gradprobe.__file__).resolve().parent


def _gradprobe_frames(exc: BaseException) -> list[str]:
    return [
        f"{frame.filename}:{frame.name}"
        for frame in traceback.extract_tb(exc.__traceback__)
        if Path(frame.filename).resolve().is_relative_to(PACKAGE)
    ]


def _quadratic():
    w = np.linspace(-1.0, 1.0, 4)
    return (lambda p: float(np.sum(p**2))), w


def _bad_calls():
    loss, w = _quadratic()
    f = lambda p: np.tanh(p)  # noqa: E731
    return {
        "check": lambda: gradprobe.check(
            lambda p: loss(p["w"]), {"w": 2 * w, "extra": w}, {"w": w}
        ),
        "check_vjp": lambda: gradprobe.check_vjp(f, lambda p, g: g[:2], w),
        "check_jvp": lambda: gradprobe.check_jvp(f, lambda p, t: t, w, samples=-1),
        "check_hvp": lambda: gradprobe.check_hvp(lambda p: 2 * p, lambda p, v: 2 * v, w, eps=-1),
        "check_layer": lambda: gradprobe.check_layer(object(), w, params=["W"]),
        "sweep": lambda: gradprobe.sweep(loss, lambda p: 2 * p, w, entries=0),
        "Problem.run": lambda: gradprobe.Problem(
            loss=loss, grad=lambda p: 2 * p, params=w, rtol=-1.0
        ).run(),
    }


@pytest.mark.parametrize("name", sorted(_bad_calls()))
def test_a_refused_input_shows_the_call_not_gradprobe_frames(name):
    with pytest.raises(gradprobe.InvalidInputError) as info:
        _bad_calls()[name]()
    frames = _gradprobe_frames(info.value)
    # Only the line that re-raises it at the public boundary.
    assert len(frames) == 1 and frames[0].endswith("errors.py:public"), frames
    assert Path(traceback.extract_tb(info.value.__traceback__)[0].filename) == Path(__file__)


def test_the_full_traceback_on_request(monkeypatch):
    monkeypatch.setenv("GRADPROBE_TRACEBACK", "full")
    with pytest.raises(gradprobe.InvalidInputError) as info:
        _bad_calls()["check"]()
    assert len(_gradprobe_frames(info.value)) > 2


def test_a_raising_loss_keeps_its_own_frames_as_the_cause():
    def loss(p):
        raise ZeroDivisionError("in the user's loss")

    with pytest.raises(gradprobe.LossEvaluationError) as info:
        gradprobe.check(loss, lambda p: 2 * p, np.ones(3))
    assert len(_gradprobe_frames(info.value)) == 1
    cause = info.value.__cause__
    assert isinstance(cause, ZeroDivisionError)
    assert traceback.extract_tb(cause.__traceback__)[-1].name == "loss"


def test_a_failure_prints_once_whichever_way_it_is_shown():
    m = examples.make_mlp(bug="sign")
    report = gradprobe.check(m.loss, m.grad, m.params)
    # Not shown before: the error carries every failure's block.
    with pytest.raises(gradprobe.GradientMismatchError) as info:
        report.raise_for_failures()
    assert str(info.value).count("Mismatched elements") == len(report.failures) == 2
    # print(report) first: the blocks are in what was printed, not in the error again.
    shown = str(report)
    assert shown.count("Mismatched elements") == 2
    with pytest.raises(gradprobe.GradientMismatchError) as info:
        report.raise_for_failures()
    message = str(info.value)
    assert "Mismatched elements" not in message
    assert message.splitlines()[0] == report.summary_line()
    assert "  W1: 512 of 512 checked entries wrong (likely cause: sign)" in message
    assert "printed before this error" in message
    assert info.value.report is report


class Affine:
    """The common layout of from-scratch code: parameters and gradients in dicts."""

    def __init__(self):
        r = np.random.default_rng(0)
        self.params = {"W": r.standard_normal((4, 3)), "b": np.zeros(3)}
        self.grads = {"W": np.zeros((4, 3)), "b": np.zeros(3)}

    def forward(self, x):
        self.x = x
        return x @ self.params["W"] + self.params["b"]

    def backward(self, g):
        self.grads["W"] += self.x.T @ g
        self.grads["b"] += g.sum(axis=0)
        return g @ self.params["W"].T


def test_check_layer_points_at_a_parameter_under_a_dict_attribute():
    x = np.random.default_rng(1).standard_normal((5, 4))
    with pytest.raises(gradprobe.InvalidInputError) as info:
        gradprobe.check_layer(Affine(), x, params=["W"])
    assert str(info.value).endswith(
        "found no such attribute. It is under a dict attribute: pass params=['params.W', ...] "
        "(and grads=['grads.W', ...])."
    )
    # ... and that path works.
    report = gradprobe.check_layer(
        Affine(), x, params=["params.W", "params.b"], grads=["grads.W", "grads.b"]
    )
    assert report.passed and list(report.params) == ["x", "params.W", "params.b"]


class Gate:
    def forward(self, x, h):
        self.x, self.h = x, h
        return np.tanh(x) * h

    def backward(self, g):
        return g * (1 - np.tanh(self.x) ** 2) * self.h, g * np.tanh(self.x)


class StarGate(Gate):
    def forward(self, *xs):
        return super().forward(*xs)


def test_tuple_inputs_are_named_after_forwards_arguments():
    r = np.random.default_rng(2)
    x, h = r.standard_normal((3, 4)), r.standard_normal((3, 4))
    report = gradprobe.check_layer(Gate(), (x, h), params=[])
    assert report.passed and list(report.params) == ["x", "h"]
    # forward(*xs) has no names to give: by position.
    report = gradprobe.check_layer(StarGate(), (x, h), params=[])
    assert list(report.params) == ["x0", "x1"]


def test_argument_names():
    def f(x, w, /, b=0, *rest, scale=1.0):
        return x

    assert argument_names(f, 3, "input") == ["x", "w", "b"]
    assert argument_names(f, 4, "input") == ["input0", "input1", "input2", "input3"]
    assert argument_names(f, 2, "x", taken=["w"]) == ["x0", "x1"]
    assert argument_names(lambda *a: a, 2, "input") == ["input0", "input1"]
    assert argument_names(max, 2, "input") == ["input0", "input1"]  # no signature
