"""A small tanh RNN classifier with hand-written backpropagation through time, and planted bugs.

``make_rnn()``: ``h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + bh)`` from ``h_0 = 0`` over ``steps``
time steps, logits ``h_T @ Wo + bo``, softmax cross-entropy averaged over the batch, and an L2
penalty ``0.5 * l2 * (sum(Wx**2) + sum(Wh**2) + sum(Wo**2))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .mlp import ExampleModel, _log_softmax

__all__ = ["RNN_BUGS", "make_rnn"]

#: Planted bugs of the RNN: kind -> (what it does, parameters it breaks).
RNN_BUGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "transpose": ("dWh is returned transposed (Wh is square, so the shape fits)", ("Wh",)),
    "scale": (
        "the loss averages over the batch but the backward pass sums (gradients x batch size)",
        ("Wx", "Wh", "bh", "Wo", "bo"),
    ),
    "sign": (
        "the gradient entering the recurrence is negated (dh = -(dlogits @ Wo.T))",
        ("Wx", "Wh", "bh"),
    ),
    "missing-term": ("the L2 term l2 * Wh is left out of dWh", ("Wh",)),
    "zero": ("the backward pass never fills dbo (left at zero)", ("bo",)),
    "truncated": (
        "backpropagation stops after the last time step (no gradient through h_{t-1})",
        ("Wx", "Wh", "bh"),
    ),
}


def make_rnn(
    batch: int = 8,
    steps: int = 5,
    inputs: int = 4,
    hidden: int = 6,
    classes: int = 3,
    *,
    l2: float = 1e-3,
    seed: int = 0,
    bug: str | None = None,
    dtype: Any = np.float64,
) -> ExampleModel:
    """A tanh RNN over ``steps`` steps, classifying from the last state (see the module docstring).

    Parameters
    ----------
    batch, steps, inputs : int
        Shape of the fixed random input sequences.
    hidden, classes : int
        State size and output classes.
    l2 : float
        L2 coefficient on ``Wx``, ``Wh`` and ``Wo``.
    seed : int
        Seeds the data and parameters.
    bug : str, optional
        One of :data:`RNN_BUGS`.
    dtype : numpy dtype
        Parameter and data dtype.
    """
    if bug is not None and bug not in RNN_BUGS:
        raise ValueError(f"bug: expected None or one of {sorted(RNN_BUGS)}, found {bug!r}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((steps, batch, inputs)).astype(dtype)
    y = rng.integers(0, classes, size=batch)
    params = {
        "Wx": (rng.standard_normal((inputs, hidden)) / np.sqrt(inputs)).astype(dtype),
        "Wh": (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(dtype),
        "bh": (0.1 * rng.standard_normal(hidden)).astype(dtype),
        "Wo": (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(dtype),
        "bo": (0.1 * rng.standard_normal(classes)).astype(dtype),
    }
    weights = ("Wx", "Wh", "Wo")

    def forward(p: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        hs = [np.zeros((batch, hidden), dtype=X.dtype)]
        for t in range(steps):
            hs.append(np.tanh(X[t] @ p["Wx"] + hs[-1] @ p["Wh"] + p["bh"]))
        return hs, hs[-1] @ p["Wo"] + p["bo"]

    def loss(p: Mapping[str, np.ndarray]) -> float:
        _, logits = forward(p)
        data_term = -_log_softmax(logits)[np.arange(batch), y].mean()
        return float(data_term + 0.5 * l2 * sum(np.sum(p[w] ** 2) for w in weights))

    def grad(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        hs, logits = forward(p)
        dlogits = np.exp(_log_softmax(logits))
        dlogits[np.arange(batch), y] -= 1.0
        if bug != "scale":
            dlogits = dlogits / batch
        g = {
            "Wo": hs[-1].T @ dlogits,
            "bo": np.zeros(classes) if bug == "zero" else dlogits.sum(axis=0),
            "Wx": np.zeros_like(p["Wx"]),
            "Wh": np.zeros_like(p["Wh"]),
            "bh": np.zeros_like(p["bh"]),
        }
        dh = -(dlogits @ p["Wo"].T) if bug == "sign" else dlogits @ p["Wo"].T
        for t in range(steps, 0, -1):
            h = hs[t]
            dz = dh * (1.0 - h**2)
            g["Wx"] += X[t - 1].T @ dz
            g["Wh"] += hs[t - 1].T @ dz
            g["bh"] += dz.sum(axis=0)
            if bug == "truncated":
                break
            dh = dz @ p["Wh"].T
        for w in weights:
            if not (bug == "missing-term" and w == "Wh"):
                g[w] = g[w] + l2 * p[w]
        if bug == "transpose":
            g["Wh"] = g["Wh"].T
        return {name: np.ascontiguousarray(g[name], dtype=dtype) for name in params}

    return ExampleModel(
        name=f"tanh RNN {inputs}->{hidden} over {steps} steps, softmax CE over {batch}"
        + (f", planted bug {bug!r}" if bug else ""),
        params=params,
        loss=loss,
        grad=grad,
        bug=bug,
        expected_failures=RNN_BUGS[bug][1] if bug else (),
        data={"X": X, "y": y, "l2": l2},
    )
