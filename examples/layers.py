"""Layers, vector outputs and second order: examples for ``gradprobe.check_layer``,
``check_vjp`` and ``check_hvp``, each with planted bugs.

- :class:`Conv2D`: a numpy convolution layer object (stride 1, no padding) with a cached
  forward and gradients accumulated into ``dW``/``db``. Bugs: ``"transpose"`` (the kernel's
  gradient transposed, ``dW`` of ``W``), ``"flip"`` (the input's gradient correlates with the
  kernel instead of convolving: ``x``).
- :class:`LSTMCell`: ``forward(x, h, c) -> (h_next, c_next)``, ``backward(dh_next, dc_next)
  -> (dx, dh, dc)``. Bugs: ``"forget"`` (the cell state's gradient misses the forget gate:
  ``c``), ``"bias"`` (the forget gate's bias gradient left at zero: ``b``, entries H..2H-1).
- :class:`Logistic`: L2-regularized logistic regression with a hand-written Hessian-vector
  product and the Newton step it drives (conjugate gradients). Bugs: ``"l2"`` (the
  regularization's ``lam * v`` missing from the HVP), ``"curvature"`` (``s`` for ``s(1-s)``).

``python examples/layers.py`` checks each correct example and each bug.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import gradprobe

CONV_BUGS = ("transpose", "flip")
LSTM_BUGS = ("forget", "bias")
LOGISTIC_BUGS = ("l2", "curvature")


def _bug(bug: str | None, known: tuple[str, ...]) -> str | None:
    if bug is not None and bug not in known:
        raise ValueError(f"bug: expected None or one of {list(known)}, found {bug!r}.")
    return bug


class Conv2D:
    """2-D cross-correlation of ``x`` (N, C, H, W) with ``W`` (F, C, k, k), plus ``b`` (F,)."""

    def __init__(self, c_in=2, c_out=3, k=3, seed=0, dtype=np.float64, bug=None):
        rng = np.random.default_rng(seed)
        self.bug = _bug(bug, CONV_BUGS)
        self.W = (rng.standard_normal((c_out, c_in, k, k)) / np.sqrt(c_in * k * k)).astype(dtype)
        self.b = (0.1 * rng.standard_normal(c_out)).astype(dtype)
        self.dW, self.db = np.zeros_like(self.W), np.zeros_like(self.b)

    def forward(self, x):
        self.x = x  # cached for backward
        k = self.W.shape[-1]
        windows = sliding_window_view(x, (k, k), axis=(2, 3))  # (N, C, Ho, Wo, k, k)
        return np.einsum("nchwij,fcij->nfhw", windows, self.W) + self.b[:, None, None]

    def backward(self, dout):
        k = self.W.shape[-1]
        windows = sliding_window_view(self.x, (k, k), axis=(2, 3))
        dW = np.einsum("nchwij,nfhw->fcij", windows, dout)
        if self.bug == "transpose":
            dW = dW.transpose(0, 1, 3, 2)
        self.dW += dW
        self.db += dout.sum(axis=(0, 2, 3))
        # The input's gradient is the full convolution of dout with the kernel: correlate the
        # padded dout with the kernel flipped in both spatial axes.
        padded = np.pad(dout, ((0, 0), (0, 0), (k - 1, k - 1), (k - 1, k - 1)))
        kernel = self.W if self.bug == "flip" else self.W[:, :, ::-1, ::-1]
        return np.einsum(
            "nfhwij,fcij->nchw", sliding_window_view(padded, (k, k), axis=(2, 3)), kernel
        )


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


class LSTMCell:
    """One LSTM step: gates ``[i, f, o, g] = x @ Wx + h @ Wh + b`` (4H columns)."""

    def __init__(self, n_in=3, hidden=4, seed=0, dtype=np.float64, bug=None):
        rng = np.random.default_rng(seed)
        self.bug = _bug(bug, LSTM_BUGS)
        self.Wx = (rng.standard_normal((n_in, 4 * hidden)) / np.sqrt(n_in)).astype(dtype)
        self.Wh = (rng.standard_normal((hidden, 4 * hidden)) / np.sqrt(hidden)).astype(dtype)
        self.b = (0.1 * rng.standard_normal(4 * hidden)).astype(dtype)
        self.dWx, self.dWh, self.db = (np.zeros_like(a) for a in (self.Wx, self.Wh, self.b))

    def forward(self, x, h, c):
        H = self.Wh.shape[0]
        a = x @ self.Wx + h @ self.Wh + self.b
        i, f, o = (_sigmoid(a[:, j * H : (j + 1) * H]) for j in range(3))
        g = np.tanh(a[:, 3 * H :])
        c_next = f * c + i * g
        self.cache = (x, h, c, i, f, o, g, np.tanh(c_next))
        return o * self.cache[-1], c_next

    def backward(self, dh_next, dc_next):
        x, h, c, i, f, o, g, tc = self.cache
        dc = dc_next + dh_next * o * (1 - tc**2)
        da = np.concatenate(
            [
                dc * g * i * (1 - i),
                dc * c * f * (1 - f),
                dh_next * tc * o * (1 - o),
                dc * i * (1 - g**2),
            ],
            axis=1,
        )
        self.dWx += x.T @ da
        self.dWh += h.T @ da
        db = da.sum(axis=0)
        if self.bug == "bias":
            H = self.Wh.shape[0]
            db[H : 2 * H] = 0.0
        self.db += db
        dc_prev = dc if self.bug == "forget" else dc * f
        return da @ self.Wx.T, da @ self.Wh.T, dc_prev


class Logistic:
    """``mean(log(1 + exp(-y * X @ w))) + lam/2 |w|^2`` with ``y`` in {-1, +1}; the data
    ``X``, ``y`` are passed as keyword arguments (``static=`` of the checks)."""

    def __init__(self, n=40, d=5, lam=0.1, seed=0, dtype=np.float64, bug=None):
        rng = np.random.default_rng(seed)
        self.bug = _bug(bug, LOGISTIC_BUGS)
        self.lam = lam
        self.data = {
            "X": rng.standard_normal((n, d)).astype(dtype),
            "y": np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(dtype),
        }
        self.params = {"w": (0.5 * rng.standard_normal(d)).astype(dtype)}

    def loss(self, p, X, y):
        z = y * (X @ p["w"])
        return np.mean(np.logaddexp(0.0, -z)) + 0.5 * self.lam * p["w"] @ p["w"]

    def grad(self, p, X, y):
        z = y * (X @ p["w"])
        return {"w": -X.T @ (y * _sigmoid(-z)) / len(y) + self.lam * p["w"]}

    def hvp(self, p, v, X, y):
        s = _sigmoid(X @ p["w"])
        weight = s if self.bug == "curvature" else s * (1 - s)
        hv = X.T @ (weight * (X @ v["w"])) / len(y)
        return {"w": hv if self.bug == "l2" else hv + self.lam * v["w"]}

    def newton_step(self, p, iterations=20):
        """``-H^{-1} g`` by conjugate gradients, touching the Hessian through ``hvp`` only."""
        g = self.grad(p, **self.data)["w"]
        step, r = np.zeros_like(g), -g
        d = r.copy()
        for _ in range(iterations):
            hd = self.hvp(p, {"w": d}, **self.data)["w"]
            alpha = (r @ r) / (d @ hd)
            step, r_next = step + alpha * d, r - alpha * hd
            if np.linalg.norm(r_next) <= 1e-10 * np.linalg.norm(g):
                break
            d, r = r_next + (r_next @ r_next) / (r @ r) * d, r_next
        return step


def check_conv(bug=None, seed=0, dtype=np.float64, **options):
    """``check_layer`` of :class:`Conv2D` on a (2, 2, 5, 5) input."""
    x = np.random.default_rng(seed + 100).standard_normal((2, 2, 5, 5)).astype(dtype)
    layer = Conv2D(seed=seed, dtype=dtype, bug=bug)
    return gradprobe.check_layer(layer, x, params=["W", "b"], seed=seed, **options)


def check_lstm(bug=None, seed=0, dtype=np.float64, **options):
    """``check_layer`` of :class:`LSTMCell` with respect to x, h, c, Wx, Wh and b."""
    rng = np.random.default_rng(seed + 100)
    x, h, c = (rng.standard_normal(s).astype(dtype) for s in ((3, 3), (3, 4), (3, 4)))
    cell = LSTMCell(seed=seed, dtype=dtype, bug=bug)
    inputs = {"x": x, "h": h, "c": c}
    return gradprobe.check_layer(cell, inputs, params=["Wx", "Wh", "b"], seed=seed, **options)


def check_logistic_hvp(bug=None, seed=0, dtype=np.float64, **options):
    """``check_hvp`` of :meth:`Logistic.hvp` against differences of :meth:`Logistic.grad`."""
    model = Logistic(seed=seed, dtype=dtype, bug=bug)
    return gradprobe.check_hvp(
        model.grad, model.hvp, model.params, static=model.data, seed=seed, **options
    )


def main() -> None:
    for name, run, bugs in (
        ("Conv2D", check_conv, CONV_BUGS),
        ("LSTMCell", check_lstm, LSTM_BUGS),
        ("Logistic HVP", check_logistic_hvp, LOGISTIC_BUGS),
    ):
        for bug in (None, *bugs):
            report = run(bug=bug)
            failed = [p.name for p in report.failures]
            print(f"{name:13} bug={bug!s:10} passed={report.passed!s:5} failed={failed}")
    model, p = Logistic(), dict(Logistic().params)
    norms = [np.linalg.norm(model.grad(p, **model.data)["w"])]
    for _ in range(4):  # Newton converges quadratically: the norm squares at each step
        p = {"w": p["w"] + model.newton_step(p)}
        norms.append(np.linalg.norm(model.grad(p, **model.data)["w"]))
    print(
        "logistic regression, |gradient| over 4 Newton steps:", " ".join(f"{n:.2g}" for n in norms)
    )


if __name__ == "__main__":
    main()
