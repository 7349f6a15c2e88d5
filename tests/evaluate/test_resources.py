"""Resource bounds and the remaining hostile inputs: workers, memory, odd loss values, layouts."""

from __future__ import annotations

import os
import tracemalloc

import joblib
import numpy as np
import pytest

import gradprobe

from ..helpers import assert_bitwise_unchanged, snapshot
from ..helpers import live_workers as _workers


def _sum_sin(p):
    return float(np.sum(np.sin(p["w"])) + np.sum(p["b"] ** 2))


def _sum_sin_grad(p):
    return {"w": np.cos(p["w"]), "b": 2 * p["b"]}


def _sum_sin_batched(p):
    return np.sum(np.sin(p["w"]), axis=(1, 2)) + np.sum(p["b"] ** 2, axis=1)


@pytest.mark.timeout(120)
def test_all_cores_start_no_more_workers_than_cores_and_shutdown_leaves_none():
    peak = [0]
    before = _workers()

    def progress(done, total):  # called in this process while the check runs
        peak[0] = max(peak[0], len(_workers() - before))

    w = np.random.default_rng(0).standard_normal((30, 20))
    params = {"w": w, "b": np.ones(3)}
    with joblib.parallel_config(backend="loky"):
        for _ in range(2):  # a second check reuses the first one's workers
            report = gradprobe.check(_sum_sin, _sum_sin_grad, params, n_jobs=-1, progress=progress)
            assert report.passed and "loky" in report.measured["executor"]
            assert len(_workers() - before) <= (os.cpu_count() or 1)
    gradprobe.shutdown_workers()
    assert _workers() <= before
    assert 1 <= peak[0] <= (os.cpu_count() or 1)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_huge_parameter_memory_stays_a_fixed_multiple_of_its_size():
    """2M entries (16 MB): the default check's peak traced memory is a fixed multiple of the
    parameter's size (measured ~4x, and ~0.8x more of joblib's modules imported meanwhile;
    16x before the probes' directions were drawn again in pieces: it does not grow with the
    number of evaluations or batch rows; see benchmarks/RESULTS.md for what it is made of)."""
    x = np.random.default_rng(0).standard_normal(2_000_000)
    tracemalloc.start()
    try:
        report = gradprobe.check(lambda v: float(v @ v), lambda v: 2 * v, x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.passed
    assert peak < 7 * x.nbytes, peak / x.nbytes


class _TorchLikeScalar:
    """What a torch loss returns: a 0-d tensor with .item(), not a float."""

    def __init__(self, value):
        self._value = value

    def item(self):
        return self._value


@pytest.mark.parametrize(
    "wrap",
    [float, np.float64, np.array, lambda v: np.array([v]), _TorchLikeScalar],
    ids=["float", "numpy-scalar", "0d-array", "1-element-array", "torch-like-item"],
)
def test_loss_value_kinds_give_the_same_report(wrap):
    x = np.linspace(-1.0, 1.0, 7)
    ref = gradprobe.check(lambda v: float(np.sum(np.sin(v))), np.cos, x)
    got = gradprobe.check(lambda v: wrap(float(np.sum(np.sin(v)))), np.cos, x)
    assert got.passed and ref.passed
    assert got.params["x"].max_rel_error == ref.params["x"].max_rel_error


def test_python_int_loss_is_accepted():
    """An int loss is converted like a float: an integer-valued loss (a count) whose
    differences are all zero checks a zero gradient without error."""
    x = np.linspace(1.0, 2.0, 4)
    report = gradprobe.check(lambda v: int(np.sum(v > 0)), np.zeros(4), x)
    assert report.complete and report.passed
    assert report.params["x"].max_rel_error == 0.0


def _odd_layouts():
    rng = np.random.default_rng(1)
    fortran = np.asfortranarray(rng.standard_normal((6, 5)))
    strided = rng.standard_normal((6, 10))[:, ::2]
    readonly = rng.standard_normal(3)
    readonly.flags.writeable = False
    return {"fortran": {"w": fortran, "b": readonly}, "strided": {"w": strided, "b": np.ones(3)}}


PATHS = {
    "threading": ({"n_jobs": 2}, "threading"),
    "loky": ({"n_jobs": 2}, "loky"),
    "batched": ({"batched": True}, "loky"),
    "batched-loky": ({"batched": True, "n_jobs": 2}, "loky"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout", ["fortran", "strided"])
@pytest.mark.parametrize("path", list(PATHS))
def test_fortran_strided_read_only_params_on_parallel_and_batched_paths(path, layout):
    kwargs, backend = PATHS[path]
    params = _odd_layouts()[layout]
    saved = snapshot(params)
    loss = _sum_sin_batched if kwargs.get("batched") else _sum_sin
    serial = gradprobe.check(_sum_sin, _sum_sin_grad, params, seed=2)
    with joblib.parallel_config(backend=backend):
        report = gradprobe.check(loss, _sum_sin_grad, params, seed=2, **kwargs)
    assert report.passed
    for name in params:
        assert report.params[name].max_rel_error == serial.params[name].max_rel_error
    assert_bitwise_unchanged(params, saved)
    assert not params["w"].flags.c_contiguous


def _ignores_u(p):
    return float(np.sum(p["w"] ** 2))


def _ignores_u_batched(p):
    b = max(p["w"].shape[0], p["u"].shape[0])  # one loss per copy, whichever is perturbed
    return np.broadcast_to(np.sum(p["w"] ** 2, axis=1), (b,))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", ["serial", *PATHS])
def test_parameter_the_loss_ignores_passes_with_zero_gradient(path):
    kwargs, backend = PATHS.get(path, ({}, "loky"))
    params = {"w": np.arange(1.0, 5.0), "u": np.random.default_rng(0).standard_normal(600)}
    loss = _ignores_u_batched if kwargs.get("batched") else _ignores_u
    with joblib.parallel_config(backend=backend):
        ok = gradprobe.check(
            loss, lambda p: {"w": 2 * p["w"], "u": np.zeros(600)}, params, **kwargs
        )
        bad_u = np.zeros(600)
        bad_u[7] = 1e-3  # a gradient for a parameter the loss does not use
        bad = gradprobe.check(loss, lambda p: {"w": 2 * p["w"], "u": bad_u}, params, **kwargs)
    assert ok.passed and ok.params["u"].passed
    assert not bad.params["u"].passed and (7,) in bad.params["u"].bad_indices


@pytest.mark.timeout(120)
def test_parameter_the_jitted_loss_ignores():
    numba = pytest.importorskip("numba")

    @numba.njit
    def first_half(x):
        return np.sum(x[:4] ** 2)

    x = np.arange(1.0, 9.0)
    g = np.concatenate([2 * x[:4], np.zeros(4)])
    report = gradprobe.check(first_half, g, x, n_jobs=2)
    assert "numba" in report.measured["executor"] and report.passed


@pytest.mark.timeout(120)
def test_keep_workers_reuses_them_across_checks_and_stops_them_at_the_end():
    before = _workers()
    w = np.random.default_rng(1).standard_normal((30, 20))
    params = {"w": w, "b": np.ones(3)}
    seen = []
    with joblib.parallel_config(backend="loky"), gradprobe.keep_workers():
        for _ in range(2):
            report = gradprobe.check(_sum_sin, _sum_sin_grad, params, n_jobs=2)
            assert report.passed
            seen.append(_workers() - before)
        assert seen[0] and seen[0] == seen[1]  # the same processes served both checks
    assert _workers() <= before
