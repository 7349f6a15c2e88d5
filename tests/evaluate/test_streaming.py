"""Every parameter's first sample goes to the workers at once (``Evaluator.prefetch``), and the
check's loss and parameters travel once per check (``evaluate.shared``), not with every task.
Reports stay the same bit for bit; the planned evaluations are what a passing check spends."""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import replace

import joblib
import numpy as np
import pytest

import gradprobe
from gradprobe.evaluate import ahead, parallel
from gradprobe.evaluate.shared import WorkerState, _by_reference
from gradprobe.layout import normalize_params

from ..helpers import report_core

#: Every call goes to the workers, which need no start-up time: what the policy decides
#: apart, the placement is exercised on a small, fast check.
EAGER = replace(
    parallel.DEFAULT_POLICY,
    min_dispatch_seconds=0.0,
    auto_dispatch_seconds=0.0,
    process_start_seconds=0.0,
    block_dispatch_seconds=0.0,
    running_plan_seconds=0.0,
)


def _loss(p):
    return float(np.sum(np.tanh(p["W"] @ p["x"])) + 0.5 * np.sum(p["b"] ** 2) + np.sum(p["c"]))


def _grad(p):
    t = 1.0 - np.tanh(p["W"] @ p["x"]) ** 2
    return {"W": np.outer(t, p["x"]), "x": p["W"].T @ t, "b": p["b"], "c": np.ones_like(p["c"])}


def _params():
    rng = np.random.default_rng(7)
    return {
        "W": rng.standard_normal((40, 30)),
        "x": rng.standard_normal(30),
        "b": rng.standard_normal(300),
        "c": rng.standard_normal((20, 20)),
    }


@pytest.mark.timeout(180)
@pytest.mark.parametrize("chunks", [1, 4])
def test_streamed_samples_give_the_serial_report_bit_for_bit(monkeypatch, chunks):
    params = _params()
    before = {k: v.copy() for k, v in params.items()}
    serial = gradprobe.check(_loss, _grad, params, n_jobs=1, seed=3)
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", replace(EAGER, chunks_per_worker=chunks))
    collected = []
    collect = parallel.JoblibWorkers._collect_sent

    def spy(self, ev, param, *args):
        collected.append(param)
        return collect(self, ev, param, *args)

    monkeypatch.setattr(parallel.JoblibWorkers, "_collect_sent", spy)
    with joblib.parallel_config(backend="loky"):
        placed = gradprobe.check(_loss, _grad, params, n_jobs=2, seed=3)
    assert placed.measured["executor"].startswith("joblib chunks (loky, 2 workers)")
    assert collected == [0, 1, 2, 3]  # every parameter's first sample was sent ahead
    assert report_core(placed) == report_core(serial)
    assert placed.n_evaluations == serial.n_evaluations
    for k in params:
        assert np.array_equal(params[k], before[k])


@pytest.mark.timeout(180)
def test_streamed_samples_find_the_same_bad_entries(monkeypatch):
    def bad_grad(p):
        g = _grad(p)
        g["W"][3, 4] *= 1.5
        g["b"] = -g["b"]
        return g

    params = _params()
    serial = gradprobe.check(_loss, bad_grad, params, n_jobs=1, seed=0)
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", EAGER)
    with joblib.parallel_config(backend="loky"):
        placed = gradprobe.check(_loss, bad_grad, params, n_jobs=2, seed=0)
    assert not placed.passed and placed.params["W"].bad_indices == serial.params["W"].bad_indices
    assert report_core(placed) == report_core(serial)


def test_prefetch_is_collected_by_the_matching_request_only(monkeypatch):
    """A block sent ahead answers the identical request; any other request is evaluated anew,
    and blocks nobody asked for are forgotten when the evaluator closes."""
    from gradprobe.evaluate import make_evaluator

    monkeypatch.setattr(parallel, "DEFAULT_POLICY", EAGER)
    params = _params()
    layout, base, _ = normalize_params(params)
    with joblib.parallel_config(backend="loky"):
        ev = make_evaluator(_loss, layout, [b.copy() for b in base], n_jobs=2)
        with ev:
            ev.base_loss()
            idx = np.array([0, 5, 9], dtype=np.int64)
            values = np.stack([base[0].reshape(-1)[idx] + 1e-3, base[0].reshape(-1)[idx]], axis=1)
            other = np.array([1, 2], dtype=np.int64)
            ev.prefetch([(0, idx, values), (0, other, values[:2])])
            assert len(ev.placement.feeder(ev)) == 2
            got = ev.entry_losses(0, idx, values)
            assert len(ev.placement.feeder(ev)) == 1
            again = ev.entry_losses(0, idx, values)  # no longer sent ahead: evaluated anew
            assert np.array_equal(got, again)
            assert got[0, 1] == got[1, 1] == got[2, 1]  # each column 1 is the base point
        assert len(ev.placement.feeder(ev)) == 0


def test_a_published_state_travels_as_a_path_and_workers_map_it_copy_on_write():
    params = _params()
    layout, base, _ = normalize_params(params)
    arrays = [b.copy() for b in base]
    state = WorkerState(_loss, layout, arrays)
    by_value = pickle.dumps(state)
    state.publish()
    try:
        assert os.path.isdir(state.folder)
        by_path = pickle.dumps(state)
        assert len(by_path) < 300 < len(by_value)
        attached = _by_reference(state.token, state.folder)
        assert _by_reference(state.token, state.folder) is attached  # once per check
        work = attached.working_copies()
        work[0].reshape(-1)[0] += 1.0  # a worker's perturbation stays private
        assert attached.arrays[0].reshape(-1)[0] == arrays[0].reshape(-1)[0]
        assert np.load(os.path.join(state.folder, "0.npy"))[0, 0] == arrays[0][0, 0]
        assert attached.loss(layout.pack(attached.arrays)) == _loss(params)
    finally:
        folder = state.folder
        state.close()
    assert not os.path.exists(folder)


@pytest.mark.timeout(180)
def test_a_pool_that_does_not_pay_its_start_is_started_for_the_next_check(monkeypatch):
    """The plan's work pays for dispatching but not for starting the workers: the first check
    starts them in the background and never waits for them; the next check finds them up."""
    from gradprobe.evaluate import pool

    policy = replace(
        parallel.DEFAULT_POLICY,
        auto_dispatch_seconds=0.0,
        block_dispatch_seconds=0.0,
        running_plan_seconds=0.0,
        process_start_seconds=1e6,
    )
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", policy)
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    pool.shutdown_workers()
    params = _params()
    serial = gradprobe.check(_loss, _grad, params, n_jobs=1, seed=2)
    with joblib.parallel_config(backend="loky", n_jobs=2):
        first = gradprobe.check(_loss, _grad, params, seed=2)
        assert pool.pool_alive()  # started in the background, left for the next check
        deadline = time.monotonic() + 60
        while not pool.pool_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = gradprobe.check(_loss, _grad, params, seed=2)
    assert "started in the background" in first.measured["executor"] or first.measured[
        "executor"
    ].startswith("auto (serial")
    assert "already running" in second.measured["executor"]
    assert report_core(first) == report_core(serial) == report_core(second)
    pool.shutdown_workers()


KILLED = """
import os, time, numpy as np, gradprobe
from dataclasses import replace
from gradprobe.evaluate import ahead, parallel
parallel.DEFAULT_POLICY = replace(
    parallel.DEFAULT_POLICY, min_dispatch_seconds=0.0, process_start_seconds=0.0
)
def loss(w):
    time.sleep(0.05)  # long enough for a worker to start and take tasks
    return float(w @ w)
print(os.getpid(), flush=True)
gradprobe.check(loss, lambda w: 2 * w, np.full(200, 0.5), n_jobs=2, samples="all")
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="published to /dev/shm on Linux")
def test_a_killed_check_leaves_no_published_state_behind(tmp_path):
    """The state published to shared memory is registered with loky's resource tracker,
    which removes it when the check's process is killed before it could."""
    import glob
    import signal
    import subprocess
    import sys

    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    pattern = f"/dev/shm/gradprobe-{pid}-*"
    deadline = time.monotonic() + 60
    while not glob.glob(pattern) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert glob.glob(pattern), "the check never published its state"
    os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while glob.glob(pattern) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not glob.glob(pattern)


@pytest.mark.parametrize(
    ("rows", "per_row", "largest", "smallest"),
    [([256, 256, 128, 10], [2, 2, 2, 2], 72.0, 12.0), ([1000], [1], 50.0, 5.0), ([3, 0, 5], [4, 4, 4], 2.0, 1.0)],
)
def test_a_plan_is_cut_in_chunks_that_taper_at_its_end(rows, per_row, largest, smallest):
    from gradprobe.evaluate.ahead import tapered_bounds

    plan = tapered_bounds(rows, per_row, 2, largest, smallest)
    sizes = []
    for m, k, bounds in zip(rows, per_row, plan, strict=True):
        # Every row once, in order.
        assert [a for a, _ in bounds] == [0, *(b for _, b in bounds[:-1])][: len(bounds)]
        assert (bounds[-1][1] if bounds else 0) == m
        sizes += [(b - a) * k for a, b in bounds]
    # No chunk above the largest size (but for a sliver merged at a request's end) ...
    assert max(sizes) <= 1.5 * largest + max(per_row)
    # ... the first ones at it where the plan is long, the last ones down to the smallest.
    if sum(sizes) > 8 * largest and largest > 4 * max(per_row):
        assert sizes[0] >= largest - max(per_row)
        assert sizes[-1] <= 1.5 * smallest + max(per_row)
        assert sizes[-1] < sizes[0]


def _float32_loss(p):
    return float(np.sum(np.tanh(p["W"].astype(np.float32) @ p["x"].astype(np.float32))))


def _tanh_grad(p):
    t = 1.0 - np.tanh(p["W"] @ p["x"]) ** 2
    return {"W": np.outer(t, p["x"]), "x": p["W"].T @ t}


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("loss", "resent"), [(_float32_loss, [2]), (_loss, [])])
def test_blocks_sent_before_the_preflight_are_replaced_when_it_coarsens_the_step(
    monkeypatch, loss, resent
):
    """The first blocks go out before the pre-flight, by the parameters' own precision; a
    loss computed in float32 on float64 parameters has a coarser one (a larger step): those
    blocks are dropped and the right ones sent. The report is the serial one either way."""
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((30, 20)), "x": rng.standard_normal(20)}
    if loss is _loss:
        params |= {"b": rng.standard_normal(5), "c": rng.standard_normal((2, 2))}
    grad = _tanh_grad if loss is _float32_loss else _grad
    serial = gradprobe.check(loss, grad, params, n_jobs=1, seed=1)
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", EAGER)
    new = []
    retain = ahead.Feeder.retain

    def spy(self, requests):
        out = retain(self, requests)
        new.append(len(out))
        return out

    monkeypatch.setattr(ahead.Feeder, "retain", spy)
    with joblib.parallel_config(backend="loky"):
        placed = gradprobe.check(loss, grad, params, n_jobs=2, seed=1)
    # After the pre-flight: every block again, or (the same precision) none sent again.
    assert new == resent
    assert report_core(placed) == report_core(serial)
