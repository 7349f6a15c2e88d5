"""A small 1-D convolutional classifier with hand-written backprop and planted bugs.

``make_conv()``: input ``X`` of shape (batch, channels, length), a valid 1-D convolution with
kernel ``K`` (out channels, in channels, width) and bias ``c``, ReLU, a dense layer ``W, b`` on
the flattened feature map, softmax cross-entropy averaged over the batch, and an L2 penalty
``0.5 * l2 * (sum(K**2) + sum(W**2))``. The convolution is a cross-correlation, as in every
deep-learning library. Example 0's first two pre-activations sit at 0 (ReLU kinks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .mlp import ExampleModel, _log_softmax

__all__ = ["CONV_BUGS", "make_conv"]

#: Planted bugs of the conv model: kind -> (what it does, parameters it breaks).
CONV_BUGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "scale": (
        "the loss averages over the batch but the backward pass sums (gradients x batch size)",
        ("K", "c", "W", "b"),
    ),
    "sign": ("the ReLU derivative is negated in the backward pass", ("K", "c")),
    "missing-term": ("the L2 term l2 * K is left out of dK", ("K",)),
    "zero": ("the backward pass never fills dc (left at zero)", ("c",)),
    "flip": (
        "dK is computed for a flipped kernel (convolution vs cross-correlation mixed up)",
        ("K",),
    ),
}


def make_conv(
    batch: int = 8,
    channels: int = 3,
    length: int = 12,
    out_channels: int = 4,
    width: int = 3,
    classes: int = 5,
    *,
    l2: float = 1e-3,
    seed: int = 0,
    bug: str | None = None,
    dtype: Any = np.float64,
) -> ExampleModel:
    """A conv1d -> ReLU -> dense -> softmax CE model (see the module docstring).

    Parameters
    ----------
    batch, channels, length : int
        Shape of the fixed random input.
    out_channels, width : int
        Convolution output channels and kernel width.
    classes : int
        Output classes.
    l2 : float
        L2 coefficient on ``K`` and ``W``.
    seed : int
        Seeds the data and parameters.
    bug : str, optional
        One of :data:`CONV_BUGS`.
    dtype : numpy dtype
        Parameter and data dtype.
    """
    if bug is not None and bug not in CONV_BUGS:
        raise ValueError(f"bug: expected None or one of {sorted(CONV_BUGS)}, found {bug!r}")
    if width > length:
        raise ValueError(f"width: expected at most length={length}, found {width}")
    rng = np.random.default_rng(seed)
    n_out = length - width + 1
    X = rng.standard_normal((batch, channels, length)).astype(dtype)
    y = rng.integers(0, classes, size=batch)
    Xw = sliding_window_view(X, width, axis=2)  # (batch, channels, n_out, width)
    K = rng.standard_normal((out_channels, channels, width)) / np.sqrt(channels * width)
    params = {
        "K": K.astype(dtype),
        "c": (0.1 * rng.standard_normal(out_channels)).astype(dtype),
        "W": (
            rng.standard_normal((out_channels * n_out, classes)) / np.sqrt(out_channels * n_out)
        ).astype(dtype),
        "b": (0.1 * rng.standard_normal(classes)).astype(dtype),
    }
    # Kinks: example 0's pre-activation at position 0 of the first two channels is 0.
    k = min(2, out_channels)
    params["c"][:k] = -np.einsum("ck,ock->o", Xw[0, :, 0, :], params["K"][:k])

    def forward(p: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = np.einsum("bclk,ock->bol", Xw, p["K"]) + p["c"][None, :, None]
        h = np.maximum(z, 0.0)
        logits = h.reshape(batch, -1) @ p["W"] + p["b"]
        return z, h, logits

    def loss(p: Mapping[str, np.ndarray]) -> float:
        _, _, logits = forward(p)
        data_term = -_log_softmax(logits)[np.arange(batch), y].mean()
        return float(data_term + 0.5 * l2 * (np.sum(p["K"] ** 2) + np.sum(p["W"] ** 2)))

    def grad(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        z, h, logits = forward(p)
        dlogits = np.exp(_log_softmax(logits))
        dlogits[np.arange(batch), y] -= 1.0
        if bug != "scale":
            dlogits = dlogits / batch
        g = {
            "W": h.reshape(batch, -1).T @ dlogits + l2 * p["W"],
            "b": dlogits.sum(axis=0),
        }
        dh = (dlogits @ p["W"].T).reshape(h.shape)
        mask = (z > 0).astype(z.dtype)
        dz = dh * (-mask if bug == "sign" else mask)
        dK = np.einsum("bol,bclk->ock", dz, Xw)
        if bug == "flip":
            dK = dK[:, :, ::-1]
        g["K"] = dK + (0.0 if bug == "missing-term" else l2 * p["K"])
        g["c"] = np.zeros_like(p["c"]) if bug == "zero" else dz.sum(axis=(0, 2))
        return {name: np.ascontiguousarray(g[name], dtype=dtype) for name in params}

    return ExampleModel(
        name=f"conv1d {channels}->{out_channels} (width {width}) + ReLU + dense, softmax CE over "
        f"{batch}" + (f", planted bug {bug!r}" if bug else ""),
        params=params,
        loss=loss,
        grad=grad,
        bug=bug,
        expected_failures=CONV_BUGS[bug][1] if bug else (),
        data={"X": X, "y": y, "l2": l2},
    )
