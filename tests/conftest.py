"""Shared fixtures: small deterministic problems with exact gradients."""

from __future__ import annotations

import numpy as np
import pytest


def quadratic_problem(n: int = 5, seed: int = 0):
    """L(x) = 0.5 x^T A x + b^T x with A symmetric; grad = A x + b."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    A = M @ M.T + n * np.eye(n)
    b = rng.standard_normal(n)
    x = rng.standard_normal(n)

    def loss(v):
        return 0.5 * v @ A @ v + b @ v

    def grad(v):
        return A @ v + b

    return loss, grad, x


@pytest.fixture
def quadratic():
    return quadratic_problem()


def snapshot(params):
    """Bit-exact copies of every array in a params container."""
    if isinstance(params, np.ndarray):
        return [params.copy()]
    if isinstance(params, dict):
        return [v.copy() for v in params.values()]
    return [v.copy() for v in params]


def assert_bitwise_unchanged(params, saved):
    current = snapshot(params)
    assert len(current) == len(saved)
    for now, before in zip(current, saved, strict=True):
        assert now.dtype == before.dtype and now.shape == before.shape
        assert now.tobytes() == before.tobytes(), "caller's array was modified"


@pytest.fixture(autouse=True)
def _dispatch_every_parallel_call(monkeypatch):
    """Send every parallel call to the workers, however small, so tests exercise them.

    In normal use small calls stay in the calling process (``DispatchPolicy``'s
    ``min_dispatch_seconds`` and ``process_start_seconds``); the tests use small, fast losses
    that would otherwise never reach a worker. Evaluators built without an explicit ``policy``
    use this one.
    """
    from dataclasses import replace

    from gradprobe.evaluate import parallel

    policy = replace(parallel.DEFAULT_POLICY, min_dispatch_seconds=0.0, process_start_seconds=0.0)
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", policy)
