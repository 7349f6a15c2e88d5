"""A numba-jitted example: the tiny tanh MLP's loss as a function of one flat float64 vector.

``gradprobe.check`` runs such a loss inside its own numba kernel (``prange`` over chunks of
entries, no Python per entry). Needs scipy: numba compiles ``@`` through scipy's BLAS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit

from .mlp import make_mlp

__all__ = ["JittedExample", "make_jitted_mlp"]


@dataclass(frozen=True)
class JittedExample:
    """A jitted two-layer MLP ready for ``gradprobe.check(m.loss, m.grad, m.params)``.

    Attributes
    ----------
    name : str
        Short description.
    params : ndarray
        The flat float64 parameter vector ``[W1.ravel(), b1, W2.ravel(), b2]``.
    loss : numba dispatcher
        ``loss(theta) -> float``, jitted.
    grad : callable
        ``grad(theta) -> ndarray``, the hand-written backward pass (numpy).
    sizes : tuple of int
        ``(n_in, n_hidden, n_out)``.
    """

    name: str
    params: np.ndarray
    loss: Callable[[np.ndarray], float]
    grad: Callable[[np.ndarray], np.ndarray]
    sizes: tuple[int, int, int]


@njit(cache=True)
def _unpack(theta, n_in, n_hidden, n_out):  # type: ignore[no-untyped-def]
    a = n_in * n_hidden
    b = a + n_hidden
    c = b + n_hidden * n_out
    W1 = np.ascontiguousarray(theta[:a]).reshape((n_in, n_hidden))
    W2 = np.ascontiguousarray(theta[b:c]).reshape((n_hidden, n_out))
    return W1, theta[a:b], W2, theta[c : c + n_out]


@njit(cache=True)
def tiny_mlp_loss(theta, X, y, n_hidden, n_out, l2):  # type: ignore[no-untyped-def]
    """Softmax cross-entropy (mean over the rows of ``X``) of a tanh MLP, plus L2 on weights."""
    W1, b1, W2, b2 = _unpack(theta, X.shape[1], n_hidden, n_out)
    h = np.tanh(X @ W1 + b1)
    logits = h @ W2 + b2
    total = 0.0
    for i in range(X.shape[0]):
        top = logits[i].max()
        total += np.log(np.sum(np.exp(logits[i] - top))) + top - logits[i, y[i]]
    return total / X.shape[0] + 0.5 * l2 * (np.sum(W1 * W1) + np.sum(W2 * W2))


def make_jitted_mlp(
    sizes: tuple[int, int, int] = (64, 32, 10), batch: int = 16, *, l2: float = 1e-3, seed: int = 0
) -> JittedExample:
    """The data and initial parameters of ``make_mlp(sizes, batch, l2=l2, seed=seed)``, with a
    jitted loss of the flat parameter vector and its numpy gradient."""
    if len(sizes) != 3:
        raise ValueError(f"sizes: expected (n_in, n_hidden, n_out), found {sizes!r}")
    model = make_mlp(tuple(sizes), batch, l2=l2, seed=seed)
    X = np.ascontiguousarray(model.data["X"], dtype=np.float64)
    y = np.ascontiguousarray(model.data["y"], dtype=np.int64)
    n_in, n_hidden, n_out = (int(s) for s in sizes)
    theta0 = np.concatenate([model.params[k].ravel() for k in ("W1", "b1", "W2", "b2")])

    @njit
    def loss(theta):  # type: ignore[no-untyped-def]
        return tiny_mlp_loss(theta, X, y, n_hidden, n_out, l2)

    def grad(theta: np.ndarray) -> np.ndarray:
        a, b = n_in * n_hidden, n_in * n_hidden + n_hidden
        c = b + n_hidden * n_out
        W1 = theta[:a].reshape(n_in, n_hidden)
        W2 = theta[b:c].reshape(n_hidden, n_out)
        h = np.tanh(X @ W1 + theta[a:b])
        logits = h @ W2 + theta[c:]
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        probs[np.arange(batch), y] -= 1.0
        dz2 = probs / batch
        dz1 = (dz2 @ W2.T) * (1.0 - h**2)
        return np.concatenate(
            [
                (X.T @ dz1 + l2 * W1).ravel(),
                dz1.sum(axis=0),
                (h.T @ dz2 + l2 * W2).ravel(),
                dz2.sum(axis=0),
            ]
        )

    return JittedExample(
        name=f"jitted tanh MLP {n_in}-{n_hidden}-{n_out}, softmax CE over {batch}, L2 {l2:g}",
        params=theta0,
        loss=loss,
        grad=grad,
        sizes=(n_in, n_hidden, n_out),
    )
