"""Issue 20 (memory): grad's second pre-flight call gets the check's base copies themselves
where the parameters are large, compared with the caller's arrays after the call, so the
check holds one copy of the parameters less at its peak; what grad writes into them is still
refused. Small parameters are copied as before."""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import pytest

import gradprobe
import gradprobe.checking.preflight as preflight_module
from gradprobe.checking.mutation import COMPARE_BLOCK, arrays_equal
from gradprobe.checking.preflight import analytic_gradient, run_preflight
from gradprobe.evaluate import SerialEvaluator
from gradprobe.layout import normalize_gradient, normalize_params
from gradprobe.numerics.tolerances import loss_epsilon

N = 400_000


@pytest.fixture
def in_place(monkeypatch):
    """Every size of parameters counts as large (given to grad's second call as they are)."""
    monkeypatch.setattr(preflight_module, "IN_PLACE_BYTES", 0)


def _loss(v):
    return float(v @ v)


def _grad(v):
    return 2 * v


def _preflight_peak(x, sources):
    """Bytes the pre-flight (no noise estimate) allocates at its peak beyond what the check
    held when it began (the base copies and the analytic gradient)."""
    layout, base, _ = normalize_params(x)
    ev = SerialEvaluator(_loss, layout, base)
    f0 = ev.base_loss()
    analytic = analytic_gradient(_grad, layout, base)
    eps = loss_epsilon(layout.dtypes)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        run_preflight(ev, f0, _grad, analytic, eps, sources=sources)
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_second_grad_call_takes_no_copy_of_large_parameters_whose_arrays_are_at_hand(
    monkeypatch,
):
    x = np.random.default_rng(0).standard_normal(N)
    monkeypatch.setattr(preflight_module, "IN_PLACE_BYTES", x.nbytes)
    with_sources = _preflight_peak(x, [x])
    without = _preflight_peak(x, None)  # a converted leaf: fresh copies, as before
    monkeypatch.setattr(preflight_module, "IN_PLACE_BYTES", x.nbytes + 1)
    small = _preflight_peak(x, [x])  # below the size: fresh copies
    # grad's output is the one parameter-sized array left (the loss's repeat copies only
    # once grad is done); fresh copies for grad add one more.
    assert with_sources <= 1.2 * x.nbytes, with_sources / x.nbytes
    assert without >= 1.9 * x.nbytes, without / x.nbytes
    assert small >= 1.9 * x.nbytes, small / x.nbytes


def test_a_reference_grad_keeps_to_small_parameters_never_reaches_the_check():
    """grad keeps its arrays and the loss later writes into them (a cache reused as scratch):
    on copies, as small parameters are given, the check's base point is never touched."""
    x = np.random.default_rng(5).standard_normal(30)
    kept = []

    def loss(v):
        if kept:
            np.multiply(v, 0.0, out=kept[-1])  # scratch: grad's array from an earlier call
        return float(np.sum(np.sin(v)))

    def grad(v):
        kept.append(v)
        return np.cos(v)

    report = gradprobe.check(loss, grad, x, seed=0)
    assert report.passed, str(report)


def test_grad_writing_into_its_arrays_on_the_second_call_only_is_refused(in_place):
    x = np.random.default_rng(1).standard_normal(50)
    saved = x.copy()
    calls = []

    def grad(v):
        calls.append(1)
        g = 2 * v
        if len(calls) == 2:
            v *= 0.5
        return g

    with pytest.raises(gradprobe.InvalidInputError, match=r"grad: .*\['x'\] modified"):
        gradprobe.check(_loss, grad, x)
    assert np.array_equal(x, saved)


def test_grad_that_perturbs_its_arrays_and_restores_them_passes(in_place):
    """A numerical gradient (perturb an entry, evaluate, restore) writes into its arrays and
    leaves them as they were: accepted, as it was on copies."""
    x = np.random.default_rng(2).standard_normal(20)
    saved = x.copy()

    def numerical_grad(v, h=1e-5):
        g = np.zeros_like(v)
        for i in range(v.size):
            old = v[i]
            v[i] = old + h
            up = _loss(v)
            v[i] = old - h
            down = _loss(v)
            v[i] = old
            g[i] = (up - down) / (2 * h)
        return g

    report = gradprobe.check(_loss, numerical_grad, x, seed=0)
    assert report.passed, str(report)
    assert np.array_equal(x, saved)


class _ArrayLike:
    """A leaf numpy converts (``__array__``): the check has no caller array to compare with."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.dtype = values.dtype

    def __array__(self, dtype=None, copy=None):
        return np.array(self.values, dtype=dtype, copy=True)


@pytest.mark.parametrize("how", ["promoted float32", "converted leaf"])
def test_second_grad_call_refuses_writes_whatever_the_callers_array(how, in_place):
    """Promoted parameters are compared with the caller's float32 array as float64; a leaf
    that was converted has no caller array: grad gets fresh copies."""
    rng = np.random.default_rng(3)
    if how == "promoted float32":
        params, kw = {"w": rng.standard_normal(8).astype(np.float32)}, {"promote": True}
    else:
        params, kw = {"w": _ArrayLike(rng.standard_normal(8))}, {}
    saved = {k: np.array(v, copy=True) for k, v in params.items()}

    def loss(p):
        return float(np.sum(np.sin(p["w"])))

    def grad(p):
        return {"w": np.cos(p["w"])}

    assert gradprobe.check(loss, grad, params, seed=0, **kw).passed
    calls = []

    def writing_grad(p):
        calls.append(1)
        g = grad(p)
        if len(calls) == 2:
            p["w"][3] += 1.0
        return g

    with pytest.raises(gradprobe.InvalidInputError, match=r"grad: .*\['w'\] modified"):
        gradprobe.check(loss, writing_grad, params, seed=0, **kw)
    for k, v in params.items():
        assert np.array_equal(np.asarray(v), saved[k])


@pytest.mark.parametrize(
    "shape", [(), (7,), (COMPARE_BLOCK + 5,), (3, COMPARE_BLOCK // 2 + 1), (COMPARE_BLOCK, 3)]
)
def test_arrays_equal_block_by_block_is_array_equal(shape):
    rng = np.random.default_rng(4)
    a = rng.standard_normal(shape)
    b = a.copy()
    assert arrays_equal(a, b)
    if a.size:
        b.reshape(-1)[-1] += 1.0  # in the last block
        assert not arrays_equal(a, b)
        b = a.copy()
        b.reshape(-1)[0] = np.nan
        assert not arrays_equal(b, b)  # NaN unequal, as np.array_equal
    assert not arrays_equal(a, a.reshape(-1)[:-1]) if a.size > 1 else True
    if a.ndim == 2:  # a strided view against a contiguous copy
        t = np.ascontiguousarray(a.T)
        assert arrays_equal(a.T, t) and arrays_equal(t, a.T)
        t[-1, -1] += 1.0
        assert not arrays_equal(a.T, t)


def test_a_gradient_keyed_by_path_is_freed_without_the_garbage_collector():
    """Reading a gradient keyed by path leaves no reference cycle holding it (a recursive
    closure did: the gradient, as large as the parameters, lived until a collection)."""
    params = {"a": {"w": np.ones(3), "s": 2.0}, "b": np.ones(2)}
    layout, _, _ = normalize_params(params)
    g = {"a.w": np.ones(3), "b": np.ones(2)}
    ref = weakref.ref(g["a.w"])
    gc.disable()
    try:
        normalize_gradient(layout, g)
        del g
        assert ref() is None
    finally:
        gc.enable()
