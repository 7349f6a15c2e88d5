"""An MLP with batch normalization, hand-written backprop and planted bugs.

``make_batchnorm_mlp()``: ``z = X @ W1`` (no bias: batch norm removes it), batch norm over the
batch ``zhat = (z - mean) / sqrt(var + bn_eps)``, ``u = gamma * zhat + beta``, an activation
(tanh or ReLU), logits ``h @ W2 + b2``, softmax cross-entropy averaged over the batch, and an L2
penalty ``0.5 * l2 * (sum(W1**2) + sum(W2**2))``. Batch statistics are those of the fixed
batch (training mode, deterministic).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .mlp import ExampleModel, _log_softmax

__all__ = ["BATCHNORM_BUGS", "make_batchnorm_mlp"]

#: Planted bugs of the batch-norm MLP: kind -> (what it does, parameters it breaks).
BATCHNORM_BUGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "scale": (
        "the loss averages over the batch but the backward pass sums (gradients x batch size)",
        ("W1", "gamma", "beta", "W2", "b2"),
    ),
    "sign": ("dbeta is negated", ("beta",)),
    "missing-term": ("the L2 term l2 * W2 is left out of dW2", ("W2",)),
    "zero": ("the backward pass never fills dgamma (left at zero)", ("gamma",)),
    "swapped": (
        "dgamma and dbeta (same shape) are returned under each other's names",
        ("gamma", "beta"),
    ),
    "batch-stats": (
        "the batch mean and variance are treated as constants in the backward pass",
        ("W1",),
    ),
}


def make_batchnorm_mlp(
    batch: int = 16,
    inputs: int = 6,
    hidden: int = 8,
    classes: int = 4,
    *,
    l2: float = 1e-3,
    bn_eps: float = 1e-5,
    activation: str = "tanh",
    seed: int = 0,
    bug: str | None = None,
    dtype: Any = np.float64,
) -> ExampleModel:
    """A one-hidden-layer MLP with batch norm (see the module docstring).

    Parameters
    ----------
    batch, inputs, hidden, classes : int
        Batch size and layer widths.
    l2 : float
        L2 coefficient on ``W1`` and ``W2``.
    bn_eps : float
        Batch-norm variance offset.
    activation : {"tanh", "relu"}
        Hidden activation. With ``"relu"`` ``beta`` is set so that example 0's first two
        normalized units sit at 0 (ReLU kinks).
    seed : int
        Seeds the data and parameters.
    bug : str, optional
        One of :data:`BATCHNORM_BUGS`.
    dtype : numpy dtype
        Parameter and data dtype.
    """
    if bug is not None and bug not in BATCHNORM_BUGS:
        raise ValueError(f"bug: expected None or one of {sorted(BATCHNORM_BUGS)}, found {bug!r}")
    if activation not in ("tanh", "relu"):
        raise ValueError(f"activation: expected 'tanh' or 'relu', found {activation!r}")
    if batch < 2:
        raise ValueError(f"batch: expected at least 2 (batch statistics), found {batch}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, inputs)).astype(dtype)
    y = rng.integers(0, classes, size=batch)
    params = {
        "W1": (rng.standard_normal((inputs, hidden)) / np.sqrt(inputs)).astype(dtype),
        "gamma": (1.0 + 0.2 * rng.standard_normal(hidden)).astype(dtype),
        "beta": (0.1 * rng.standard_normal(hidden)).astype(dtype),
        "W2": (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(dtype),
        "b2": (0.1 * rng.standard_normal(classes)).astype(dtype),
    }

    def normalize(p: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        z = X @ p["W1"]
        mu = z.mean(axis=0)
        std = np.sqrt(((z - mu) ** 2).mean(axis=0) + bn_eps)
        return (z - mu) / std, std

    if activation == "relu":
        k = min(2, hidden)
        zhat0, _ = normalize(params)
        params["beta"][:k] = -params["gamma"][:k] * zhat0[0, :k]

    def act(u: np.ndarray) -> np.ndarray:
        return np.tanh(u) if activation == "tanh" else np.maximum(u, 0.0)

    def forward(p: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        zhat, std = normalize(p)
        u = p["gamma"] * zhat + p["beta"]
        h = act(u)
        return zhat, std, u, h, h @ p["W2"] + p["b2"]

    def loss(p: Mapping[str, np.ndarray]) -> float:
        logits = forward(p)[-1]
        data_term = -_log_softmax(logits)[np.arange(batch), y].mean()
        return float(data_term + 0.5 * l2 * (np.sum(p["W1"] ** 2) + np.sum(p["W2"] ** 2)))

    def grad(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        zhat, std, u, h, logits = forward(p)
        dlogits = np.exp(_log_softmax(logits))
        dlogits[np.arange(batch), y] -= 1.0
        if bug != "scale":
            dlogits = dlogits / batch
        g = {
            "W2": h.T @ dlogits + (0.0 if bug == "missing-term" else l2 * p["W2"]),
            "b2": dlogits.sum(axis=0),
        }
        dh = dlogits @ p["W2"].T
        du = dh * ((1.0 - h**2) if activation == "tanh" else (u > 0).astype(u.dtype))
        g["gamma"] = np.zeros_like(p["gamma"]) if bug == "zero" else (du * zhat).sum(axis=0)
        g["beta"] = -du.sum(axis=0) if bug == "sign" else du.sum(axis=0)
        dzhat = du * p["gamma"]
        if bug == "batch-stats":
            dz = dzhat / std
        else:
            dz = (dzhat - dzhat.mean(axis=0) - zhat * (dzhat * zhat).mean(axis=0)) / std
        g["W1"] = X.T @ dz + l2 * p["W1"]
        if bug == "swapped":
            g["gamma"], g["beta"] = g["beta"], g["gamma"]
        return {name: np.ascontiguousarray(g[name], dtype=dtype) for name in params}

    return ExampleModel(
        name=f"batch-norm {activation} MLP {inputs}-{hidden}-{classes}, softmax CE over {batch}"
        + (f", planted bug {bug!r}" if bug else ""),
        params=params,
        loss=loss,
        grad=grad,
        bug=bug,
        expected_failures=BATCHNORM_BUGS[bug][1] if bug else (),
        data={"X": X, "y": y, "l2": l2},
    )
