"""Test configuration: every parallel call goes to the workers (see the fixture)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _dispatch_every_parallel_call(monkeypatch):
    """Send every parallel call to the workers, however small, so tests exercise them.

    In normal use small calls stay in the calling process (``DispatchPolicy``'s
    ``min_dispatch_seconds`` and ``process_start_seconds``); the tests use small, fast losses
    that would otherwise never reach a worker. Evaluators built without an explicit ``policy``
    use this one. The check's own process does not take chunks here (it would take them all
    before a worker is up): tests of that path set ``this_process_evaluates`` themselves.
    """
    from dataclasses import replace

    from gradprobe.evaluate import parallel

    policy = replace(
        parallel.DEFAULT_POLICY,
        min_dispatch_seconds=0.0,
        process_start_seconds=0.0,
        this_process_evaluates=False,
    )
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", policy)


@pytest.fixture(autouse=True)
def _no_workers_between_tests():
    """Process workers outlive a check (the next check reuses them): stop any a test left, so
    each test starts with none (cheap when none run)."""
    yield
    import sys

    pool = sys.modules.get("gradprobe.evaluate.pool")
    if pool is not None and pool.pool_alive():
        pool.shutdown_workers()
