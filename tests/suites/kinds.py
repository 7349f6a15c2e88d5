"""A models file with one check of every kind (written into a test's folder), and suites of
them: correct checks, planted bugs, a timeout and a worker that dies."""

from __future__ import annotations

import textwrap
from pathlib import Path

KINDS_MODELS = textwrap.dedent(
    """
    import os
    import time

    import numpy as np

    import gradprobe


    def _point():
        rng = np.random.default_rng(0)
        return {"x": rng.standard_normal((5, 4)), "W": rng.standard_normal((4, 3)) / 2}


    def _dense(p):
        return np.tanh(p["x"] @ p["W"])


    def numpy_check(scale=1.0):
        A = np.array([[3.0, 1.0], [1.0, 2.0]])

        def loss(v):
            return float(0.5 * v @ A @ v)

        return gradprobe.Problem(
            loss=loss, grad=lambda v: scale * (A @ v), params=np.array([0.3, -0.7])
        )


    def vjp_check(bug=False):
        def vjp(p, g):
            d = g * (1 - _dense(p) ** 2)
            return {"x": d @ p["W"].T, "W": (-1.0 if bug else 1.0) * (p["x"].T @ d)}

        return gradprobe.Problem.vjp(_dense, vjp, _point(), cotangent_seed=3)


    def jvp_check():
        def jvp(p, t):
            return (1 - _dense(p) ** 2) * (t["x"] @ p["W"] + p["x"] @ t["W"])

        return gradprobe.Problem.jvp(_dense, jvp, _point())


    def hvp_check():
        A = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])
        return gradprobe.Problem.hvp(
            lambda v: A @ v + v**3, lambda v, u: A @ u + 3 * v**2 * u, np.array([0.2, -0.4, 0.9])
        )


    class Dense:
        def __init__(self, bug=False):
            rng = np.random.default_rng(2)
            self.W = rng.standard_normal((4, 3)) / 2
            self.b = 0.1 * rng.standard_normal(3)
            self.dW, self.db = np.zeros_like(self.W), np.zeros_like(self.b)
            self.bug = bug

        def forward(self, x):
            self.x = x
            self.y = np.tanh(x @ self.W + self.b)
            return self.y

        def backward(self, dy):
            d = dy * (1 - self.y**2)
            self.dW += self.x.T @ d
            self.db += d.sum(axis=0) * (2.0 if self.bug else 1.0)
            return d @ self.W.T


    def layer_check(bug=False):
        x = np.random.default_rng(1).standard_normal((5, 4))
        return gradprobe.Problem.layer(Dense(bug=bug), x, params=["W", "b"])


    def torch_check():
        import torch

        x = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)
        return gradprobe.Problem.torch(lambda t: torch.tanh(t) * t, x)


    def jax_check():
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return gradprobe.Problem.jax(lambda t: jnp.sin(t) * t, jnp.linspace(-1.0, 1.0, 6))


    def slow_check(delay=0.05):
        def loss(v):
            time.sleep(delay)
            return float(np.sum(v**2))

        return gradprobe.Problem(loss=loss, grad=lambda v: 2 * v, params=np.ones(400))


    def hangs_check():
        # Never returns once perturbed (a C call stuck forever, as far as the check can tell).
        def loss(v):
            while v[0] != 1.0:
                time.sleep(0.05)
            return float(np.sum(v**2))

        return gradprobe.Problem(loss=loss, grad=lambda v: 2 * v, params=np.ones(3), n_jobs=1)


    def dies_check():
        def loss(v):
            if v[0] != 1.0:
                os._exit(17)  # the process running the check dies, as a segfault would
            return float(np.sum(v**2))

        return gradprobe.Problem(loss=loss, grad=lambda v: 2 * v, params=np.ones(3), n_jobs=1)
    """
)

#: A mixed suite: a correct check, a planted bug, a timeout and a worker that dies.
MIXED_SUITE = """
[defaults]
seed = 1
[checks.correct]
target = "kinds_models.py:vjp_check"
[checks.planted]
target = "kinds_models.py:layer_check"
args = { bug = true }
[checks.times_out]
target = "kinds_models.py:slow_check"
timeout = 1
[checks.dies]
target = "kinds_models.py:dies_check"
[checks.numpy]
target = "kinds_models.py:numpy_check"
"""


def write_kinds(folder: Path, suite: str | None = None) -> Path:
    """Write kinds_models.py (and ``suite`` as gradprobe.toml) into ``folder``."""
    (folder / "kinds_models.py").write_text(KINDS_MODELS)
    path = folder / "gradprobe.toml"
    if suite is not None:
        path.write_text(textwrap.dedent(suite))
    return path
