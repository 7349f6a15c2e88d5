"""Example models with hand-written backprop, and planted bugs for demos, docs and tests.

``make_mlp()`` builds a tanh MLP with a softmax cross-entropy loss averaged over a batch and an
L2 penalty ``0.5 * l2 * sum(W**2)`` on the weights. ``bug=`` plants one classic backprop mistake
(see :data:`MLP_BUGS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MLP_BUGS", "ExampleModel", "make_mlp"]

#: Planted bugs of the example MLP: kind -> (what it does, parameters it breaks).
MLP_BUGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "transpose": ("dW2 is returned transposed (W2 is square, so the shape fits)", ("W2",)),
    "scale": (
        "the loss averages over the batch but the backward pass sums (gradients x batch size)",
        ("W1", "b1", "W2", "b2", "W3", "b3"),
    ),
    "sign": ("the first tanh derivative is written (h**2 - 1) instead of (1 - h**2)", ("W1", "b1")),
    "missing-term": ("the L2 term l2 * W is left out of every weight gradient", ("W1", "W2", "W3")),
    "zero": ("the backward pass never fills db1 (left at zero)", ("b1",)),
    "swapped": ("db1 and db2 (same shape) are returned under each other's names", ("b1", "b2")),
    "activation": (
        "the second tanh derivative is written (1 - h) instead of (1 - h**2)",
        ("W1", "b1", "W2", "b2"),
    ),
}


@dataclass(frozen=True)
class ExampleModel:
    """A model ready to check: ``gradprobe.check(m.loss, m.grad, m.params)``.

    Attributes
    ----------
    name : str
        Short description.
    params : dict of str to ndarray
        Parameters at which to check.
    loss : callable
        ``loss(params) -> float``.
    grad : callable
        ``grad(params) -> dict of arrays``, the hand-written backward pass.
    bug : str or None
        The planted bug, if any.
    expected_failures : tuple of str
        Parameters the planted bug breaks (empty for a correct model).
    data : dict
        Inputs and labels (for batched or jitted variants of the same model).
    """

    name: str
    params: dict[str, np.ndarray]
    loss: Callable[[Mapping[str, np.ndarray]], float]
    grad: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
    bug: str | None = None
    expected_failures: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)
    #: The same loss for ``check(..., batched=True)``: every parameter arrives with a leading
    #: axis (B copies of the perturbed one, 1 of the others); returns B losses.
    batched_loss: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def make_mlp(
    sizes: tuple[int, ...] = (64, 32, 32, 10),
    batch: int = 16,
    *,
    l2: float = 1e-3,
    seed: int = 0,
    bug: str | None = None,
    dtype: Any = np.float64,
    activation: str = "tanh",
) -> ExampleModel:
    """A tanh MLP with softmax cross-entropy (mean over ``batch``) and L2 on the weights.

    Parameters
    ----------
    sizes : tuple of int
        Layer widths, input first. Parameters are ``W1, b1, W2, b2, ...``.
    batch : int
        Examples in the fixed random batch.
    l2 : float
        L2 coefficient: the loss adds ``0.5 * l2 * sum(W**2)`` for every weight.
    seed : int
        Seeds the data and the initial parameters.
    bug : str, optional
        One of :data:`MLP_BUGS` to plant a backprop bug.
    dtype : numpy dtype
        Parameter and data dtype.
    activation : {"tanh", "relu"}
        Hidden activation. With ``"relu"`` three hidden units of the first layer get a bias
        that puts example 0's pre-activation at 0 (within rounding): every step on their
        weights crosses a kink, which a checker must classify rather than fail. The planted
        bugs keep their meaning ("sign" negates the first ReLU derivative, "activation" uses
        the output ``h`` instead of the step ``h > 0`` in the second).
    """
    if activation not in ("tanh", "relu"):
        raise ValueError(f"activation: expected 'tanh' or 'relu', found {activation!r}")
    act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0.0))
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"sizes: expected at least two positive widths, found {sizes!r}")
    if bug is not None and bug not in MLP_BUGS:
        raise ValueError(f"bug: expected None or one of {sorted(MLP_BUGS)}, found {bug!r}")
    n_layers = len(sizes) - 1
    if bug in ("transpose", "swapped", "activation") and n_layers < 3:
        raise ValueError(f"bug {bug!r} needs at least three layers, found sizes {sizes!r}")
    if bug == "transpose" and sizes[1] != sizes[2]:
        raise ValueError(f"bug 'transpose' needs a square W2, found sizes {sizes!r}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], size=batch)
    params: dict[str, np.ndarray] = {}
    for i in range(n_layers):
        fan_in = sizes[i]
        params[f"W{i + 1}"] = (
            rng.standard_normal((sizes[i], sizes[i + 1])) / np.sqrt(fan_in)
        ).astype(dtype)
        params[f"b{i + 1}"] = (0.1 * rng.standard_normal(sizes[i + 1])).astype(dtype)
    if activation == "relu" and n_layers > 1:
        k = min(3, sizes[1])
        params["b1"][:k] = -(X[0] @ params["W1"][:, :k])

    def forward(p: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        hs = [X]
        h = X
        for i in range(1, n_layers + 1):
            z = h @ p[f"W{i}"] + p[f"b{i}"]
            h = act(z) if i < n_layers else z
            hs.append(h)
        return hs, h

    def loss(p: Mapping[str, np.ndarray]) -> float:
        _, logits = forward(p)
        data_term = -_log_softmax(logits)[np.arange(batch), y].mean()
        reg = sum(np.sum(p[f"W{i}"] ** 2) for i in range(1, n_layers + 1))
        return float(data_term + 0.5 * l2 * reg)

    def batched_loss(p: Mapping[str, np.ndarray]) -> np.ndarray:
        # W: (B, n, m) and b: (B, m) with B copies or 1; h: (B or 1, batch, n).
        h = X[np.newaxis]
        for i in range(1, n_layers + 1):
            z = h @ p[f"W{i}"] + p[f"b{i}"][:, np.newaxis, :]
            h = act(z) if i < n_layers else z
        # Only the labelled log-probabilities are needed: logit_y - logsumexp(logits).
        top = h.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(h - top).sum(axis=-1)) + top[..., 0]
        data_term = (lse - h[:, np.arange(batch), y]).mean(axis=1)
        # einsum sums each copy's squares without a (B, n, m) temporary.
        reg = sum(np.einsum("bij,bij->b", p[f"W{i}"], p[f"W{i}"]) for i in range(1, n_layers + 1))
        return data_term + 0.5 * l2 * reg

    def grad(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        hs, logits = forward(p)
        probs = np.exp(_log_softmax(logits))
        dz = probs
        dz[np.arange(batch), y] -= 1.0
        if bug != "scale":
            dz = dz / batch
        g: dict[str, np.ndarray] = {}
        for i in range(n_layers, 0, -1):
            W = p[f"W{i}"]
            g[f"W{i}"] = hs[i - 1].T @ dz + (0.0 if bug == "missing-term" else l2 * W)
            g[f"b{i}"] = dz.sum(axis=0)
            if i > 1:
                h = hs[i - 1]
                if activation == "relu":
                    dtanh = (h > 0).astype(h.dtype)
                    if bug == "sign" and i == 2:
                        dtanh = -dtanh
                    elif bug == "activation" and i == 3:
                        dtanh = h
                elif bug == "sign" and i == 2:
                    dtanh = h**2 - 1.0
                elif bug == "activation" and i == 3:
                    dtanh = 1.0 - h
                else:
                    dtanh = 1.0 - h**2
                dz = (dz @ W.T) * dtanh
        if bug == "transpose":
            g["W2"] = np.ascontiguousarray(g["W2"].T)
        elif bug == "zero":
            g["b1"] = np.zeros_like(g["b1"])
        elif bug == "swapped":
            g["b1"], g["b2"] = g["b2"], g["b1"]
        return {name: g[name].astype(dtype, copy=False) for name in params}

    expected = MLP_BUGS[bug][1] if bug else ()
    label = "-".join(str(s) for s in sizes)
    return ExampleModel(
        name=f"{activation} MLP {label}, softmax CE over {batch}, L2 {l2:g}"
        + (f", planted bug {bug!r}" if bug else ""),
        params=params,
        loss=loss,
        grad=grad,
        bug=bug,
        expected_failures=tuple(n for n in expected if n in params),
        data={"X": X, "y": y, "l2": l2, "sizes": tuple(sizes)},
        batched_loss=batched_loss,
    )
