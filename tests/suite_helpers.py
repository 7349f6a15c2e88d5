"""Shared pieces of the suite/CLI tests: a models file with quick problems, a CLI runner."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

MODELS = textwrap.dedent(
    """
    import signal
    import time

    import numpy as np

    import gradprobe

    A = np.array([[3.0, 1.0, 0.5], [1.0, 2.0, 0.2], [0.5, 0.2, 4.0]])
    B = np.array([0.3, -0.7, 1.1])


    def _loss(p):
        return float(0.5 * p["x"] @ A @ p["x"] + B @ p["x"] + np.sum(p["w"] ** 2))


    def _grad(p):
        return {"x": A @ p["x"] + B, "w": 2 * p["w"]}


    def _params():
        rng = np.random.default_rng(0)
        return {"x": rng.standard_normal(3), "w": rng.standard_normal((2, 3))}


    def good(scale=1.0):
        return gradprobe.Problem(loss=_loss, grad=_grad, params=_params())


    def bad(scale=1.5):
        def grad(p):
            g = _grad(p)
            g["w"] = scale * g["w"]
            return g

        return gradprobe.Problem(loss=_loss, grad=grad, params=_params())


    def slightly_off():
        def grad(p):
            g = _grad(p)
            g["w"] = g["w"] * (1 + 1e-7)
            return g

        return gradprobe.Problem(loss=_loss, grad=grad, params=_params())


    def crashing():
        def loss(p):
            if p["w"][0, 0] != _params()["w"][0, 0]:
                raise RuntimeError("boom in the loss")
            return _loss(p)

        return gradprobe.Problem(loss=loss, grad=_grad, params=_params())


    def slow():
        def loss(p):
            time.sleep(0.2)
            return _loss(p)

        return gradprobe.Problem(loss=loss, grad=_grad, params=_params())


    def hangs():
        # Ignores SIGALRM so only the watchdog's kill can stop it, like a C call that never
        # returns.
        base = _params()

        def loss(p):
            if not all(np.array_equal(p[k], base[k]) for k in base):
                signal.signal(signal.SIGALRM, signal.SIG_IGN)
                while True:
                    time.sleep(0.05)
            return _loss(p)

        return gradprobe.Problem(loss=loss, grad=_grad, params=_params())


    def not_a_problem():
        return 42


    def bad_input():
        return gradprobe.Problem(loss=_loss, grad=_grad, params={"x": np.arange(3), "w": np.ones(2)})
    """
)


def write_models(folder: Path) -> Path:
    path = folder / "models.py"
    path.write_text(MODELS)
    return path


def write_suite(folder: Path, body: str, name: str = "gradprobe.toml") -> Path:
    write_models(folder)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120, env=None):
    return subprocess.run(
        [sys.executable, "-m", "gradprobe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )
