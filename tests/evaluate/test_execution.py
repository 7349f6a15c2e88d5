"""The parallel engine: every executor gives the same report, bit for bit."""

from __future__ import annotations

import functools
import os
from dataclasses import replace

import joblib
import numpy as np
import pytest

import gradprobe
from gradprobe.evaluate import (
    DispatchPolicy,
    JoblibWorkers,
    ParallelEvaluator,
    SerialEvaluator,
    default_policy,
    make_evaluator,
)
from gradprobe.examples import make_mlp
from gradprobe.layout import normalize_params

from ..helpers import assert_bitwise_unchanged, report_core, snapshot


def _small_model(bug=None):
    return make_mlp(sizes=(6, 5, 5, 3), batch=4, bug=bug)


def _losses(evaluator, param=0):
    flat = evaluator.base[param].reshape(-1)
    idx = np.arange(flat.size, dtype=np.int64)
    values = np.stack([flat + 1e-3, flat - 1e-3], axis=1)
    return evaluator.entry_losses(param, idx, values)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_joblib_backends_match_serial_bit_for_bit(backend):
    m = _small_model(bug="sign")
    serial = gradprobe.check(m.loss, m.grad, m.params, seed=3)
    with joblib.parallel_config(backend=backend):
        par = gradprobe.check(m.loss, m.grad, m.params, seed=3, n_jobs=2)
    assert backend in par.measured["executor"]
    assert report_core(par) == report_core(serial)
    assert not par.passed


@pytest.mark.timeout(60)
def test_chunking_does_not_change_losses():
    m = make_mlp(sizes=(64, 32, 10), batch=16)
    layout, base, _ = normalize_params(m.params)
    ref = _losses(SerialEvaluator(m.loss, layout, base))
    with joblib.parallel_config(backend="threading"):
        for chunks in (1, 3, 7):
            policy = replace(default_policy(), chunks_per_worker=chunks)
            with ParallelEvaluator(m.loss, layout, base, n_jobs=2, policy=policy) as ev:
                assert _losses(ev).tobytes() == ref.tobytes()


def _raising_loss(p):
    if p["W1"][1, 2] > 10:
        raise ValueError("boom")
    return float(np.sum(p["W1"] ** 2) + np.sum(p["b1"]))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_worker_error_names_parameter_and_entry(backend):
    rng = np.random.default_rng(0)
    params = {"W1": rng.standard_normal((3, 4)), "b1": rng.standard_normal(4)}
    params["W1"][1, 2] = 10.0 - 1e-7  # only the "+h" perturbation of [1, 2] raises
    saved = snapshot(params)
    with (
        joblib.parallel_config(backend=backend),
        pytest.raises(gradprobe.LossEvaluationError) as info,
    ):
        gradprobe.check(_raising_loss, lambda p: p, params, n_jobs=2)
    assert info.value.param == "W1" and info.value.index == (1, 2)
    assert "W1" in str(info.value) and "[1, 2]" in str(info.value) and "boom" in str(info.value)
    assert_bitwise_unchanged(params, saved)


@pytest.mark.timeout(60)
def test_unpicklable_loss_for_processes_says_use_threads():
    import threading

    lock = threading.Lock()
    x = np.arange(3.0)

    def loss(v):
        with lock:
            return float(v @ v)

    with (
        joblib.parallel_config(backend="loky"),
        pytest.raises(gradprobe.InvalidInputError, match="threading") as info,
    ):
        gradprobe.check(loss, lambda v: 2 * v, x, n_jobs=2)
    assert "module level" in str(info.value)
    with joblib.parallel_config(backend="threading"):
        assert gradprobe.check(loss, lambda v: 2 * v, x, n_jobs=2).passed


@pytest.mark.timeout(120)
def test_all_cores_starts_no_more_workers_than_cores():
    m = _small_model()
    layout, base, _ = normalize_params(m.params)
    with ParallelEvaluator(m.loss, layout, base, n_jobs=-1) as ev:
        _losses(ev)
        workers = ev.placement
        assert 1 <= len({w.split(":")[0] for w in workers.worker_ids}) <= (os.cpu_count() or 1)
        assert workers.n_workers <= (os.cpu_count() or 1)


@pytest.mark.timeout(60)
def test_budget_is_charged_per_chunk_in_the_parent():
    m = _small_model()
    with joblib.parallel_config(backend="threading"), pytest.raises(gradprobe.CheckAborted) as info:
        gradprobe.check(m.loss, m.grad, m.params, n_jobs=2, budget=40)
    assert info.value.reason == "budget"
    assert info.value.partial_report.n_evaluations <= 40


@pytest.mark.timeout(60)
def test_auto_stays_serial_for_a_cheap_loss_and_matches():
    m = _small_model()
    auto = gradprobe.check(m.loss, m.grad, m.params, n_jobs="auto")
    serial = gradprobe.check(m.loss, m.grad, m.params)
    assert auto.measured["executor"] == "auto (serial)"
    assert report_core(auto) == report_core(serial)


@pytest.mark.timeout(60)
def test_make_evaluator_choices():
    m = _small_model()
    layout, base, _ = normalize_params(m.params)
    assert make_evaluator(m.loss, layout, base).executor == "serial"
    with joblib.parallel_config(backend="threading"):
        ev = make_evaluator(m.loss, layout, base, n_jobs=2)
        assert isinstance(ev.placement, JoblibWorkers) and ev.executor.startswith("joblib")
    assert make_evaluator(m.batched_loss, layout, base, batched=True).executor == "batched"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dask_local_cluster_matches_serial():
    distributed = pytest.importorskip("distributed")
    m = _small_model(bug="zero")
    serial = gradprobe.check(m.loss, m.grad, m.params, seed=1)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
        joblib.parallel_config(backend="dask"),
    ):
        par = gradprobe.check(m.loss, m.grad, m.params, seed=1, n_jobs=2)
    assert "dask" in par.measured["executor"]
    assert report_core(par) == report_core(serial)


@pytest.mark.timeout(60)
def test_small_calls_stay_in_process_large_ones_dispatch():
    import time as _time

    policy = DispatchPolicy(min_dispatch_seconds=0.2)
    x = np.linspace(-1.0, 1.0, 12)

    def cheap(v):
        return float(np.sum(np.tanh(v)))

    def slow(v):
        _time.sleep(0.01)
        return float(np.sum(np.tanh(v)))

    layout, base, _ = normalize_params(x)
    with joblib.parallel_config(backend="threading"):
        with ParallelEvaluator(cheap, layout, base, n_jobs=2, policy=policy) as ev:
            ev.base_loss()
            values = np.stack([x + 1e-3, x - 1e-3], axis=1)
            fast = ev.entry_losses(0, np.arange(12), values)
            assert ev.placement.dispatched == 0 and ev.placement.in_process == 1
        with ParallelEvaluator(slow, layout, base, n_jobs=2, policy=policy) as ev:
            ev.base_loss()  # ~10 ms per evaluation: 24 evaluations ~ 0.24 s >= 0.2 s
            slow_losses = ev.entry_losses(0, np.arange(12), values)
            assert ev.placement.dispatched == 1
    assert fast.tobytes() == slow_losses.tobytes()


@pytest.mark.timeout(60)
def test_process_workers_start_only_for_work_that_pays_for_them():
    policy = DispatchPolicy(min_dispatch_seconds=0.2, process_start_seconds=0.5)
    x = np.linspace(-1.0, 1.0, 12)
    layout, base, _ = normalize_params(x)
    with (
        joblib.parallel_config(backend="loky"),
        make_evaluator(_tanh_sum, layout, base, n_jobs=2, policy=policy) as ev,
    ):
        workers = ev.placement
        assert workers.policy is policy and workers.starts_processes  # none started yet
        assert workers.worth_dispatching(24)  # the loss's cost is not measured yet
        ev.base_loss()  # microseconds per evaluation: far below 0.2 s + 0.5 s
        assert not workers.worth_dispatching(24)
        decide = functools.partial(policy.dispatches, loss_seconds=0.01, n_workers=2)
        assert not decide(24, start_processes=True)  # 24 evaluations ~ 0.24 s: under 0.7 s
        assert decide(80, start_processes=True)  # 0.8 s: worth starting the workers
        assert decide(24, start_processes=False)  # once running, only the threshold counts
        assert not decide(24, start_processes=False, auto=True)  # "auto": 0.25 s
        assert not policy.dispatches(10**6, loss_seconds=1.0, n_workers=1, start_processes=False)


def _tanh_sum(v):
    return float(np.sum(np.tanh(v)))
