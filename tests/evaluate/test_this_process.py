"""The check's own process is one of the evaluators on gradprobe's pool (evaluate/ahead.py):
it takes the next chunk whenever it would wait, and every chunk until a worker is up. Reports
stay the same bit for bit; errors, Ctrl-C and the time limit in its chunks behave as in the
serial loop."""

from __future__ import annotations

import time
from dataclasses import replace

import joblib
import numpy as np
import pytest

import gradprobe
from gradprobe import CheckAborted, LossEvaluationError
from gradprobe.evaluate import ahead, parallel, pool

from ..helpers import assert_bitwise_unchanged, report_core, snapshot
from ..helpers import live_workers as _workers

#: Every call goes to the pool (the loss is fast), and this process evaluates too.
HELPING = replace(
    parallel.DEFAULT_POLICY,
    min_dispatch_seconds=0.0,
    auto_dispatch_seconds=0.0,
    process_start_seconds=0.0,
    block_dispatch_seconds=0.0,
    running_plan_seconds=0.0,
    this_process_evaluates=True,
)


def _loss(p):
    return float(np.sum(np.tanh(p["W"] @ p["x"])) + 0.5 * np.sum(p["b"] ** 2))


def _grad(p):
    t = 1.0 - np.tanh(p["W"] @ p["x"]) ** 2
    return {"W": np.outer(t, p["x"]), "x": p["W"].T @ t, "b": p["b"]}


def _params():
    rng = np.random.default_rng(11)
    return {
        "W": rng.standard_normal((30, 20)),
        "x": rng.standard_normal(20),
        "b": rng.standard_normal(200),
    }


class _Spy:
    """Counts the chunks this process ran and the tasks sent to the pool."""

    def __init__(self, monkeypatch):
        self.here = 0
        self.sent = 0
        run_here, pump = ahead.Feeder._run_here, ahead.Feeder._pump

        def counted_run_here(feeder, slot):
            self.here += 1
            run_here(feeder, slot)

        def counted_pump(feeder):
            before = len(feeder._running)
            pump(feeder)
            self.sent += max(0, len(feeder._running) - before)

        monkeypatch.setattr(ahead.Feeder, "_run_here", counted_run_here)
        monkeypatch.setattr(ahead.Feeder, "_pump", counted_pump)


@pytest.mark.timeout(180)
def test_with_no_worker_up_this_process_evaluates_every_chunk(monkeypatch):
    """A check never waits for workers to start: until one is up, this process runs the
    chunks itself, and the report is the serial one bit for bit."""
    params = _params()
    saved = snapshot(params)
    serial = gradprobe.check(_loss, _grad, params, n_jobs=1, seed=4)
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", HELPING)
    monkeypatch.setattr(ahead, "submit", _never_submitted)
    monkeypatch.setattr(parallel, "pool_ready", lambda: False)
    spy = _Spy(monkeypatch)
    with joblib.parallel_config(backend="loky"):
        placed = gradprobe.check(_loss, _grad, params, n_jobs=2, seed=4)
    assert spy.here > 0 and spy.sent == 0
    assert placed.measured["executor"].startswith("joblib chunks (loky, 2 workers)")
    assert report_core(placed) == report_core(serial)
    assert placed.n_evaluations == serial.n_evaluations
    assert_bitwise_unchanged(params, saved)
    pool.shutdown_workers()


def _never_submitted(*args):
    raise AssertionError("a task was sent to a pool that has no worker up")


@pytest.mark.timeout(180)
def test_this_process_and_a_worker_share_a_plan_bit_for_bit(monkeypatch):
    """With a worker up, it takes the first queued chunks and this process the next ones:
    both evaluate, and the report is the serial one bit for bit."""
    params = _params()
    serial = gradprobe.check(_loss, _grad, params, n_jobs=1, seed=5)
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", HELPING)
    pool.warm_up(1)
    deadline = time.monotonic() + 60
    while not pool.pool_ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.pool_ready()
    spy = _Spy(monkeypatch)
    with joblib.parallel_config(backend="loky"):
        placed = gradprobe.check(_loss, _grad, params, n_jobs=2, seed=5)
    assert spy.here > 0 and spy.sent > 0
    assert report_core(placed) == report_core(serial)
    pool.shutdown_workers()


def _raising_at(p, where=(2, 3)):
    if p["W"][where] > 10.0:
        raise ValueError("boom")
    return _loss(p)


@pytest.mark.timeout(180)
def test_a_loss_error_in_this_process_names_the_entry_as_the_serial_loop_does(monkeypatch):
    params = _params()
    params["W"][2, 3] = 10.0 - 1e-9  # only its upward perturbation raises
    saved = snapshot(params)
    with pytest.raises(LossEvaluationError) as serial:
        gradprobe.check(_raising_at, _grad, params, n_jobs=1, samples="all")
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", HELPING)
    monkeypatch.setattr(parallel, "pool_ready", lambda: False)
    with joblib.parallel_config(backend="loky"), pytest.raises(LossEvaluationError) as placed:
        gradprobe.check(_raising_at, _grad, params, n_jobs=2, samples="all")
    assert placed.value.param == serial.value.param == "W"
    assert placed.value.index == serial.value.index == (2, 3)
    assert str(placed.value) == str(serial.value)
    assert_bitwise_unchanged(params, saved)
    pool.shutdown_workers()


def _interrupted_at(p):
    if p["b"][7] > 10.0:
        raise KeyboardInterrupt
    return _loss(p)


@pytest.mark.timeout(180)
def test_ctrl_c_in_a_chunk_of_this_process_stops_the_workers_and_keeps_the_arrays(monkeypatch):
    params = _params()
    params["b"][7] = 10.0 - 1e-9
    saved = snapshot(params)
    before = _workers()
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", HELPING)
    monkeypatch.setattr(parallel, "pool_ready", lambda: False)
    with joblib.parallel_config(backend="loky"), pytest.raises(KeyboardInterrupt) as info:
        gradprobe.check(_interrupted_at, _grad, params, n_jobs=2, samples="all")
    assert_bitwise_unchanged(params, saved)
    partial = info.value.partial_report
    assert partial is not None and not partial.complete
    deadline = time.monotonic() + 30
    while _workers() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _workers() <= before  # the pool started for the check is stopped with it


_CALLS = [0]


def _slow(p):
    _CALLS[0] += 1
    time.sleep(0.01)
    return _loss(p)


@pytest.mark.timeout(180)
def test_the_time_limit_holds_inside_a_chunk_of_this_process(monkeypatch):
    """This process checks the deadline between evaluations of its chunks, as the serial
    loop does: a check with a time limit stops long before its plan is done."""
    params = _params()
    saved = snapshot(params)
    # One block per parameter, one chunk per block: without a deadline check inside a
    # chunk, nothing would stop the first parameter's 1,200 evaluations (~12 s).
    from gradprobe.checking import parameter

    monkeypatch.setattr(parameter, "MIN_TIMED_BLOCK", 10**6)
    monkeypatch.setattr(parameter, "MIN_BLOCK_ENTRIES", 10**6)
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", replace(HELPING, chunks_per_worker=1))
    monkeypatch.setattr(parallel, "pool_ready", lambda: False)
    _CALLS[0] = 0
    with joblib.parallel_config(backend="loky"), pytest.raises(CheckAborted) as info:
        gradprobe.check(_slow, _grad, params, n_jobs=2, samples="all", timeout=1.5)
    assert info.value.reason == "timeout"
    assert not info.value.partial_report.complete
    # About 150 evaluations fit in the limit (all in this process: no worker is up), a
    # chunk 600; the plan has 1,640.
    assert _CALLS[0] < 400
    assert_bitwise_unchanged(params, saved)
    pool.shutdown_workers()


def test_the_pool_has_one_worker_fewer_than_the_evaluators():
    layout_params = _params()
    from gradprobe.evaluate import make_evaluator
    from gradprobe.layout import normalize_params

    layout, base, _ = normalize_params(layout_params)
    for evaluates, size in [(True, 2), (False, 3)]:
        policy = replace(HELPING, this_process_evaluates=evaluates)
        with (
            joblib.parallel_config(backend="loky"),
            make_evaluator(_loss, layout, base, n_jobs=3, policy=policy) as ev,
        ):
            assert ev.placement.n_workers == 3 and ev.placement.pool_size == size


MODULE = '''
import numpy as np


def loss(p):
    return float(np.sum(np.tanh(p["W"] @ p["x"])) + 0.5 * np.sum(p["b"] ** 2))
'''


@pytest.mark.timeout(180)
def test_auto_goes_on_here_when_workers_cannot_unpickle_the_loss(monkeypatch, tmp_path):
    """A loss whose module only this process can import (loaded from a file under a name of
    its own): it pickles here, but a worker cannot unpickle it. "auto" finishes the check in
    this process, bit for bit, and says so; an explicit ``n_jobs`` raises as documented."""
    import importlib.util
    import sys

    path = tmp_path / "only_here.py"
    path.write_text(MODULE)
    spec = importlib.util.spec_from_file_location("gradprobe_test_only_here", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "gradprobe_test_only_here", module)
    params = _params()
    saved = snapshot(params)
    serial = gradprobe.check(module.loss, _grad, params, n_jobs=1, seed=6)
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", replace(HELPING, this_process_evaluates=False))
    with joblib.parallel_config(backend="loky", n_jobs=2):
        placed = gradprobe.check(module.loss, _grad, params, seed=6)
        with pytest.raises(gradprobe.InvalidInputError, match="pickle the loss"):
            gradprobe.check(module.loss, _grad, params, seed=6, n_jobs=2)
    assert "could not unpickle the loss" in placed.measured["executor"]
    assert report_core(placed) == report_core(serial)
    assert_bitwise_unchanged(params, saved)
    pool.shutdown_workers()


FRESH = """
import sys, time
import numpy as np
import gradprobe
from gradprobe.evaluate import parallel, pool

starts = []
background = parallel.warm_up_in_background


def spy(n):
    starts.append("joblib" in sys.modules)
    background(n)


parallel.warm_up_in_background = spy


def loss(w):
    time.sleep(0.002)
    return float(w @ w)


x = np.linspace(-1.0, 1.0, 200)
first = gradprobe.check(loss, lambda w: 2 * w, x, samples="all", probes=0)
second = gradprobe.check(loss, lambda w: 2 * w, x, samples="all", probes=0)
print(starts, first.passed, second.passed, pool.pool_alive(), flush=True)
print(first.measured["executor"], flush=True)
"""


@pytest.mark.timeout(180)
def test_a_fresh_process_imports_joblib_and_starts_the_pool_from_another_thread(tmp_path):
    """Before joblib is imported no backend can have been configured: the first check whose
    plan pays starts gradprobe's pool from a thread of its own (which imports joblib), goes on
    meanwhile, and sends blocks once a worker is up; the next check finds the pool running."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    src = str(Path(gradprobe.__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert out.returncode == 0, out.stderr
    facts, executor = out.stdout.strip().splitlines()
    assert facts == "[False] True True True", facts
    assert "auto (serial + joblib chunks (loky" in executor, executor
