"""Example checks for ``gradprobe run examples/gradprobe.toml``.

Each function returns a :class:`gradprobe.Problem`: the loss, the hand-written gradient, the
parameters and the options of the check. Point a suite at your own functions the same way.
"""

from __future__ import annotations

import numpy as np

import gradprobe
from gradprobe import examples


def _problem(model, **options) -> gradprobe.Problem:
    return gradprobe.Problem(
        loss=model.loss, grad=model.grad, params=model.params, name=model.name, **options
    )


def make_mlp(
    bug: str | None = None, sizes: tuple[int, ...] = (64, 32, 32, 10)
) -> gradprobe.Problem:
    """The built-in tanh MLP (softmax cross-entropy, L2), optionally with a planted bug."""
    return _problem(examples.make_mlp(sizes=tuple(sizes), bug=bug))


def make_mlp_float32() -> gradprobe.Problem:
    """The same MLP in float32: tolerances follow the dtype (and a warning suggests float64)."""
    return _problem(examples.make_mlp(dtype=np.float32))


def make_conv(bug: str | None = None) -> gradprobe.Problem:
    """A small convolutional layer + dense + softmax cross-entropy."""
    return _problem(examples.make_conv(bug=bug))


def make_rnn(bug: str | None = None) -> gradprobe.Problem:
    """A small tanh RNN unrolled over a few steps."""
    return _problem(examples.make_rnn(bug=bug))


def make_batchnorm_mlp(bug: str | None = None) -> gradprobe.Problem:
    """An MLP with batch normalization (gamma, beta)."""
    return _problem(examples.make_batchnorm_mlp(bug=bug))


def make_least_squares() -> gradprobe.Problem:
    """The README's linear least-squares example, written out in full."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 5)), rng.standard_normal(32)
    params = {"w": rng.standard_normal(5), "b": np.zeros(1)}

    def loss(p):
        r = X @ p["w"] + p["b"] - y
        return 0.5 * np.mean(r**2)

    def grad(p):
        r = X @ p["w"] + p["b"] - y
        return {"w": X.T @ r / len(y), "b": np.array([r.mean()])}

    return gradprobe.Problem(loss=loss, grad=grad, params=params, samples="all")
