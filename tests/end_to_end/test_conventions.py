"""The conventions of from-scratch code, checked without wrappers.

- the cs231n pair ``forward(x, w, b) -> (out, cache)`` / ``backward(dout, cache) -> (dx, dw,
  db)`` with :func:`gradprobe.check_forward_backward`: forward runs once per evaluation, the
  inputs are named after its arguments, non-float inputs are passed through, several outputs
  work, a planted bug is found in its own input;
- layers that apply the optimizer's update inside backward (ML-From-Scratch's ``Dense``) with
  :class:`gradprobe.testing.RecordingOptimizer` and :func:`~gradprobe.testing.recorded_gradients`.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import gradprobe
from gradprobe.testing import RecordingOptimizer, recorded_gradients

RNG = np.random.default_rng(0)
X, W, B = RNG.standard_normal((5, 2, 3)), RNG.standard_normal((6, 4)), RNG.standard_normal(4)


def affine_forward(x, w, b):
    out = x.reshape(x.shape[0], -1) @ w + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    x, w, _ = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    return dx, dw, dout.sum(axis=0)


def test_the_cs231n_pair_passes_named_after_forwards_arguments():
    report = gradprobe.check_forward_backward(affine_forward, affine_backward, (X, W, B))
    assert report.passed, str(report)
    assert list(report.params) == ["x", "w", "b"]
    assert report.settings["cotangent"] == "normal(seed=0)"


def test_forward_runs_once_per_evaluation():
    calls = {"forward": 0, "backward": 0}

    def forward(x, w, b):
        calls["forward"] += 1
        return affine_forward(x, w, b)

    def backward(dout, cache):
        calls["backward"] += 1
        return affine_backward(dout, cache)

    report = gradprobe.check_forward_backward(forward, backward, (X, W, B), n_jobs=1)
    assert report.passed
    assert calls["backward"] >= 1
    # One forward per loss evaluation (the check's count, in process) and one per backward,
    # and one before them that learns the output's structure.
    assert calls["forward"] == report.n_evaluations + calls["backward"] + 1


def test_a_planted_bug_fails_its_own_input_only():
    def backward(dout, cache):
        dx, dw, db = affine_backward(dout, cache)
        return dx, dw, 2 * db  # the classic: a factor in the bias gradient

    report = gradprobe.check_forward_backward(affine_forward, backward, (X, W, B))
    assert [p.name for p in report.failures] == ["b"]
    assert report.params["b"].diagnosis.kind == "scale"


def conv1d_forward(x, w, conv_param):
    pad = conv_param["pad"]
    xp = np.pad(x, (pad, pad))
    k = len(w)
    out = np.array([xp[i : i + k] @ w for i in range(len(xp) - k + 1)])
    return out, (xp, w, pad)


def conv1d_backward(dout, cache):
    xp, w, pad = cache
    k = len(w)
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i, g in enumerate(dout):
        dxp[i : i + k] += g * w
        dw += g * xp[i : i + k]
    return dxp[pad : len(xp) - pad], dw


def test_non_float_inputs_pass_through_unchecked():
    x, w = RNG.standard_normal(9), RNG.standard_normal(3)
    report = gradprobe.check_forward_backward(conv1d_forward, conv1d_backward, (x, w, {"pad": 1}))
    assert report.passed and list(report.params) == ["x", "w"]
    # A mapping: forward(**inputs), named by its keys.
    by_name = {"x": x, "w": w, "conv_param": {"pad": 1}}
    assert gradprobe.check_forward_backward(conv1d_forward, conv1d_backward, by_name).passed


def lstm_like_forward(x, h, wx):
    a = x @ wx
    next_h, next_c = np.tanh(a) * h, np.sin(a)
    return next_h, next_c, (x, h, wx, a)


def lstm_like_backward(dnext_h, dnext_c, cache):
    x, h, wx, a = cache
    da = dnext_h * h * (1 - np.tanh(a) ** 2) + dnext_c * np.cos(a)
    return da @ wx.T, dnext_h * np.tanh(a), x.T @ da


def test_several_outputs_give_backward_one_upstream_gradient_each():
    x, h, wx = RNG.standard_normal((3, 4)), RNG.standard_normal((3, 5)), RNG.standard_normal((4, 5))
    report = gradprobe.check_forward_backward(lstm_like_forward, lstm_like_backward, (x, h, wx))
    assert report.passed, str(report)
    assert list(report.params) == ["x", "h", "wx"]


def test_mistakes_in_the_convention_get_the_fix():
    with pytest.raises(gradprobe.InvalidInputError, match=r"return \(out, cache\).*check_vjp"):
        gradprobe.check_forward_backward(lambda x: x * 2, lambda d, c: d, (X,))
    with pytest.raises(gradprobe.InvalidInputError, match=r"\(dx, dw, db\), found a tuple of 2"):
        gradprobe.check_forward_backward(
            affine_forward, lambda d, c: affine_backward(d, c)[:2], (X, W, B)
        )
    with pytest.raises(gradprobe.InvalidInputError, match="at least one float array"):
        gradprobe.check_forward_backward(lambda i: (i, None), lambda d, c: d, (np.arange(3),))


class Dense:
    """ML-From-Scratch's fully-connected layer: backward applies the optimizer's update."""

    def __init__(self, n_units, input_shape):
        self.n_units, self.input_shape = n_units, input_shape
        self.trainable = True

    def initialize(self, optimizer):
        limit = 1 / np.sqrt(self.input_shape[0])
        r = np.random.default_rng(3)
        self.W = r.uniform(-limit, limit, (self.input_shape[0], self.n_units))
        self.w0 = np.zeros((1, self.n_units))
        self.W_opt = copy.copy(optimizer)
        self.w0_opt = copy.copy(optimizer)

    def forward_pass(self, X, training=True):
        self.layer_input = X
        return X.dot(self.W) + self.w0

    def backward_pass(self, accum_grad, bug=False):
        W = self.W
        if self.trainable:
            grad_w = self.layer_input.T.dot(accum_grad)
            grad_w0 = np.sum(accum_grad, axis=0, keepdims=True)
            self.W = self.W_opt.update(self.W, 0.5 * grad_w if bug else grad_w)
            self.w0 = self.w0_opt.update(self.w0, grad_w0)
        return accum_grad.dot(W.T)


class BuggyDense(Dense):
    def backward_pass(self, accum_grad):
        return super().backward_pass(accum_grad, bug=True)


@pytest.mark.parametrize("cls", [Dense, BuggyDense])
def test_a_layer_that_updates_its_weights_inside_backward(cls):
    layer = cls(3, input_shape=(4,))
    layer.initialize(optimizer=RecordingOptimizer())
    x = np.random.default_rng(4).standard_normal((6, 4))
    report = gradprobe.check_layer(
        layer,
        x,
        params=["W", "w0"],
        grads=recorded_gradients(W="W_opt", w0="w0_opt"),
        forward="forward_pass",
        backward="backward_pass",
    )
    assert list(report.params) == ["x", "W", "w0"]
    assert [p.name for p in report.failures] == ([] if cls is Dense else ["W"]), str(report)


def test_the_recorder_says_when_backward_never_called_it():
    with pytest.raises(gradprobe.InvalidInputError, match="no update recorded"):
        _ = RecordingOptimizer().grad
    read = recorded_gradients(W="W_opt")
    with pytest.raises(gradprobe.InvalidInputError, match=r"layer\.W_opt to be a RecordingOptimizer"):
        read(Dense(3, (4,)))
    optimizer = RecordingOptimizer()
    w = np.ones(3)
    assert optimizer.update(w, np.full(3, 2.0)) is w
    assert optimizer.grad.tolist() == [2.0, 2.0, 2.0]
