"""Property-based: the report does not depend on n_jobs, backend or chunking, and the caller's
arrays are never changed (hypothesis, derandomized, bounded examples)."""

from __future__ import annotations

from dataclasses import replace

import joblib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradprobe
from gradprobe.evaluate import parallel

from ..helpers import assert_bitwise_unchanged, report_core, snapshot

PROPERTY = settings(
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _loss(p):
    return float(np.sum(np.tanh(p["w"]) * p["v"][: p["w"].shape[-1]].sum()) + np.sum(p["v"] ** 3))


def _grad(p, bug):
    w, v = p["w"].astype(np.float64), p["v"].astype(np.float64)
    s = v[: w.shape[-1]].sum()
    gv = 3 * v**2
    gv[: w.shape[-1]] += np.sum(np.tanh(w))
    gw = (1 - np.tanh(w) ** 2) * s
    if bug:
        gw.reshape(-1)[0] *= 1.5
    return {"w": gw, "v": gv}


problems = st.fixed_dictionaries(
    {
        "rows": st.integers(1, 6),
        "cols": st.integers(1, 5),
        "extra": st.integers(0, 4),
        "dtype": st.sampled_from(["float64", "float32"]),
        "seed": st.integers(0, 2**16),
        "bug": st.booleans(),
        "samples": st.sampled_from([None, 4, "all"]),
    }
)


def _params(case):
    rng = np.random.default_rng(case["seed"])
    dt = np.dtype(case["dtype"])
    w = rng.uniform(-1, 1, (case["rows"], case["cols"])).astype(dt)
    v = rng.uniform(-1, 1, case["cols"] + case["extra"]).astype(dt)
    return {"w": w, "v": v}


def _set_chunks(monkeypatch, chunks):
    """Every evaluator that check() builds splits work into ``chunks`` per worker."""
    policy = replace(parallel.DEFAULT_POLICY, chunks_per_worker=chunks)
    monkeypatch.setattr(parallel, "DEFAULT_POLICY", policy)


def _check(case, params, **kwargs):
    bug = case["bug"]
    return gradprobe.check(
        _loss, lambda p: _grad(p, bug), params, seed=case["seed"], samples=case["samples"], **kwargs
    )


@pytest.mark.timeout(300)
@PROPERTY
@given(case=problems, chunks=st.integers(1, 7), backend=st.sampled_from(["threading", "serial"]))
def test_report_independent_of_threads_and_chunking(case, chunks, backend, monkeypatch):
    params = _params(case)
    saved = snapshot(params)
    ref = _check(case, params)
    _set_chunks(monkeypatch, chunks)
    with joblib.parallel_config(backend="threading"):
        other = _check(case, params, n_jobs=2 if backend == "threading" else 1)
    assert report_core(other) == report_core(ref)
    assert_bitwise_unchanged(params, saved)


@pytest.mark.slow
@pytest.mark.timeout(300)
@settings(PROPERTY, max_examples=6)
@given(case=problems, chunks=st.integers(1, 5))
def test_report_independent_of_loky_processes(case, chunks, monkeypatch):
    params = _params(case)
    saved = snapshot(params)
    ref = _check(case, params)
    _set_chunks(monkeypatch, chunks)
    with joblib.parallel_config(backend="loky"):
        other = _check(case, params, n_jobs=2)
    assert "loky" in other.measured["executor"]
    assert report_core(other) == report_core(ref)
    assert_bitwise_unchanged(params, saved)
