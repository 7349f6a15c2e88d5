"""The caller's arrays are bit-for-bit unchanged whatever happens during a check."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.examples import make_mlp

from ..helpers import assert_bitwise_unchanged, snapshot


def awkward_params():
    rng = np.random.default_rng(7)
    # Values whose x + h - h would not round-trip exactly.
    return {"a": rng.standard_normal((5, 4)) * 1e3 + 0.1, "b": rng.standard_normal(7) * 1e-7}


def loss_of(p):
    return float(np.sum(p["a"] ** 3) * 1e-6 + np.sum(np.sin(p["b"])))


def grad_of(p):
    return {"a": 3e-6 * p["a"] ** 2, "b": np.cos(p["b"])}


def test_arrays_unchanged_after_success():
    params = awkward_params()
    saved = snapshot(params)
    report = gradprobe.check(loss_of, grad_of, params)
    assert report.passed, str(report)
    assert_bitwise_unchanged(params, saved)


# Call 1: base point, call 2: pre-flight repeat, calls 3-10: noise estimate (tolerances.py).
@pytest.mark.parametrize("fail_at", [11, 18, 38])
def test_arrays_unchanged_when_loss_raises_midway(fail_at):
    params = awkward_params()
    saved = snapshot(params)
    calls = {"n": 0}

    def flaky(p):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("boom")
        return loss_of(p)

    with pytest.raises(gradprobe.LossEvaluationError, match=r"RuntimeError .*boom") as info:
        gradprobe.check(flaky, grad_of, params)
    assert_bitwise_unchanged(params, saved)
    assert info.value.param == "a"
    assert info.value.index is not None
    assert "parameter 'a' at index" in str(info.value)
    partial = info.value.partial_report
    assert partial is not None and not partial.complete


def test_arrays_unchanged_on_keyboard_interrupt():
    params = awkward_params()
    saved = snapshot(params)
    calls = {"n": 0}

    def interrupted(p):
        calls["n"] += 1
        if calls["n"] == 53:  # inside parameter 'b', after 'a' finished
            raise KeyboardInterrupt
        return loss_of(p)

    with pytest.raises(KeyboardInterrupt) as info:
        gradprobe.check(interrupted, grad_of, params)
    assert_bitwise_unchanged(params, saved)
    partial = info.value.partial_report
    assert not partial.complete and "interrupt" in partial.incomplete_reason
    assert list(partial.params) == ["a"]


def test_arrays_unchanged_when_grad_raises():
    params = awkward_params()
    saved = snapshot(params)

    def bad_grad(p):
        p["a"][0, 0] = 99.0  # even a grad that writes to its input cannot touch the caller's
        raise ValueError("no grad")

    with pytest.raises(gradprobe.LossEvaluationError, match="grad raised ValueError"):
        gradprobe.check(loss_of, bad_grad, params)
    assert_bitwise_unchanged(params, saved)


def test_loss_that_writes_to_its_input_cannot_touch_callers_arrays():
    params = awkward_params()
    saved = snapshot(params)

    def vandal(p):
        value = loss_of(p)
        p["b"][...] = 0.0
        return value

    # The pre-flight check sees the write and refuses to go on; the caller's arrays are intact.
    with pytest.raises(gradprobe.InvalidInputError, match=r"loss: .*\['b'\] modified"):
        gradprobe.check(vandal, grad_of, params)
    assert_bitwise_unchanged(params, saved)


def test_read_only_and_fortran_and_noncontiguous_params():
    base = np.asfortranarray(np.random.default_rng(0).standard_normal((6, 5)))
    ro = np.random.default_rng(1).standard_normal(4)
    ro.setflags(write=False)
    strided = np.random.default_rng(2).standard_normal(12)[::3]
    params = {"f": base, "ro": ro, "s": strided}
    saved = snapshot(params)
    report = gradprobe.check(
        lambda p: float(np.sum(p["f"] ** 2) + np.sum(p["ro"] ** 3) + np.sum(np.exp(p["s"]))),
        lambda p: {"f": 2 * p["f"], "ro": 3 * p["ro"] ** 2, "s": np.exp(p["s"])},
        params,
    )
    assert report.passed, str(report)
    assert_bitwise_unchanged(params, saved)
    assert not ro.flags.writeable


def test_example_model_with_bug_leaves_params_unchanged():
    m = make_mlp(bug="scale")
    saved = snapshot(m.params)
    gradprobe.check(m.loss, m.grad, m.params)
    assert_bitwise_unchanged(m.params, saved)
