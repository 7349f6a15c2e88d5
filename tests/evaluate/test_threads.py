"""``thread_safe=True``: "auto" measures in the pre-flight whether threads pay and picks them
only then; the report says which ran and why, and is the same bit for bit as a serial one."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import gradprobe
from gradprobe.evaluate import parallel, threads

from ..helpers import report_core


def _loss(p):
    return float(np.sum(np.tanh(p["w"] @ p["v"])))


def _grad(p):
    t = 1 - np.tanh(p["w"] @ p["v"]) ** 2
    return {"w": np.outer(t, p["v"]), "v": p["w"].T @ t}


PARAMS = {
    "w": np.random.default_rng(0).standard_normal((40, 30)),
    "v": np.random.default_rng(1).standard_normal(30),
}


@pytest.fixture
def every_plan_pays(monkeypatch):
    policy = replace(parallel.DEFAULT_POLICY, auto_dispatch_seconds=0.0, block_dispatch_seconds=0.0)
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", policy)
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)


@pytest.mark.timeout(120)
def test_threads_where_calls_run_in_parallel(monkeypatch, every_plan_pays):
    monkeypatch.setattr(threads, "concurrency_ratio", lambda call, n, repeats: 1.1)
    report = gradprobe.check(_loss, _grad, PARAMS, thread_safe=True, seed=2)
    executor = report.measured["executor"]
    assert "(threading, 2 workers)" in executor
    assert "threads: the loss is declared thread-safe and 2 calls at once took 1.10x" in executor
    assert report.settings["thread_safe"] is True
    serial = gradprobe.check(_loss, _grad, PARAMS, n_jobs=1, seed=2)
    drop = ("n_jobs", "executor", "thread_safe")
    assert report_core(report, drop=drop) | {"n_evaluations": 0} == report_core(
        serial, drop=drop
    ) | {"n_evaluations": 0}
    # The measurement's calls are counted: what was spent is what the report says.
    assert report.n_evaluations > serial.n_evaluations


@pytest.mark.timeout(120)
def test_processes_where_the_loss_holds_the_gil(monkeypatch, every_plan_pays):
    monkeypatch.setattr(threads, "concurrency_ratio", lambda call, n, repeats: 1.9)
    report = gradprobe.check(_loss, _grad, PARAMS, thread_safe=True)
    executor = report.measured["executor"]
    assert "(loky, 2 workers)" in executor and "(it holds the GIL)" in executor


@pytest.mark.timeout(120)
def test_no_threads_unless_the_loss_is_declared_thread_safe(monkeypatch, every_plan_pays):
    def never(*args):
        raise AssertionError("measured threads for a loss not declared thread-safe")

    monkeypatch.setattr(threads, "concurrency_ratio", never)
    report = gradprobe.check(_loss, _grad, PARAMS)
    assert "threading" not in report.measured["executor"]


def test_concurrency_ratio_tells_parallel_calls_from_serialized_ones():
    import threading
    import time

    lock = threading.Lock()

    def held(k):  # one at a time, like a loss that holds the GIL
        with lock:
            time.sleep(0.01)

    def free(k):
        time.sleep(0.01)

    assert threads.concurrency_ratio(held, 2, 3) > 1.6
    assert threads.concurrency_ratio(free, 2, 3) < 1.4


def test_thread_safe_must_be_a_flag():
    with pytest.raises(gradprobe.InvalidInputError, match="thread_safe: expected True or False"):
        gradprobe.check(_loss, _grad, PARAMS, thread_safe="yes")


def test_blas_libraries_are_rediscovered_only_after_new_imports(monkeypatch):
    """Rediscovery reads the process's memory map (milliseconds): once per new import, not
    once per check."""
    calls = []
    real = threads._blas_controller
    monkeypatch.setattr(
        threads, "_blas_controller", lambda refresh=False: calls.append(1) or real(refresh)
    )
    threads.refresh_blas_libraries()
    threads.refresh_blas_libraries()
    seen = len(calls)
    assert seen <= 1
    monkeypatch.setitem(__import__("sys").modules, "a_module_just_imported", object())
    threads.refresh_blas_libraries()
    assert len(calls) == seen + 1


@pytest.mark.timeout(120)
def test_threads_take_the_first_blocks_while_the_preflight_runs(monkeypatch, every_plan_pays):
    """On the threading backend the first samples' blocks go to gradprobe's thread pool
    before the pre-flight, as to its process pool: a thread evaluates one while the pre-flight
    waits for it (it would wait in vain if the blocks were only sent when asked for)."""
    import threading
    import time

    import joblib

    import gradprobe.checking.run as run_module

    seen = threading.Event()

    def loss(p):
        if threading.current_thread() is not threading.main_thread():
            seen.set()
        time.sleep(0.0005)  # releases the GIL, as numpy's larger calls do
        return _loss(p)

    preflight = run_module.run_preflight
    waited = []

    def waiting_preflight(*args, **kwargs):
        waited.append(seen.wait(10.0))
        return preflight(*args, **kwargs)

    monkeypatch.setattr(run_module, "run_preflight", waiting_preflight)
    with joblib.parallel_config(backend="threading"):
        report = gradprobe.check(loss, _grad, PARAMS, n_jobs=2, seed=2)
    assert waited == [True]
    assert "(threading, 2 workers)" in report.measured["executor"]
    serial = gradprobe.check(_loss, _grad, PARAMS, n_jobs=1, seed=2)
    drop = ("n_jobs", "executor")
    assert report_core(report, drop=drop) == report_core(serial, drop=drop)


@pytest.mark.timeout(120)
def test_grad_gets_copies_while_threads_may_read_the_base_point(monkeypatch, every_plan_pays):
    """Large parameters go to grad's second call as they are, except where tasks in threads
    of this process may be copying them at that moment."""
    import joblib

    import gradprobe.checking.preflight as preflight_module

    monkeypatch.setattr(preflight_module, "IN_PLACE_BYTES", 0)
    references = []
    mutated = preflight_module.mutated

    def spying(layout, given, reference):
        references.append(reference)
        return mutated(layout, given, reference)

    monkeypatch.setattr(preflight_module, "mutated", spying)
    params = {k: v.copy() for k, v in PARAMS.items()}
    gradprobe.check(_loss, _grad, params, n_jobs=1, seed=2)
    # loss, then grad: grad's reference is the caller's arrays (given the base copies)
    assert all(r is params[k] for r, k in zip(references[1], ("w", "v"), strict=True))
    references.clear()
    with joblib.parallel_config(backend="threading"):
        gradprobe.check(_loss, _grad, params, n_jobs=2, seed=2)
    assert not any(r is params[k] for r, k in zip(references[1], ("w", "v"), strict=True))


@pytest.mark.timeout(60)
def test_a_loss_stuck_in_a_thread_does_not_keep_python_from_exiting(tmp_path):
    """The time limit stops a check whose loss never returns in a thread; the thread cannot be
    stopped, but it is a daemon: the interpreter still exits (and a forked child gets a pool
    of its own, not the parent's threadless one)."""
    import subprocess
    import sys

    code = """
import os, threading, time
from dataclasses import replace
import joblib, numpy as np
import gradprobe
from gradprobe.evaluate import parallel
parallel.DEFAULT_POLICY = replace(parallel.DEFAULT_POLICY, auto_dispatch_seconds=0.0,
                                  block_dispatch_seconds=0.0, min_dispatch_seconds=0.0)
def loss(p):
    time.sleep(0.001)
    if threading.current_thread() is not threading.main_thread() and os.environ.get("STUCK"):
        time.sleep(3600)
    return float(np.sum(p["w"] ** 2))
def grad(p):
    return {"w": 2 * p["w"]}
with joblib.parallel_config(backend="threading"):
    print(gradprobe.check(loss, grad, {"w": np.ones(200)}, n_jobs=2).passed)
    if os.fork() == 0:  # the child checks on threads of its own
        print("child", gradprobe.check(loss, grad, {"w": np.ones(200)}, n_jobs=2).passed, flush=True)
        os._exit(0)
    os.wait()
    os.environ["STUCK"] = "1"
    try:
        gradprobe.check(loss, grad, {"w": np.ones(200)}, n_jobs=2, timeout=2)
    except gradprobe.CheckAborted:
        print("aborted")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "child", "True", "aborted"], out.stdout + out.stderr
