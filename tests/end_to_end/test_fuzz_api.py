"""Property-based fuzz of the public API (issue 26): over random dtypes (float16 to float64),
shapes, value scales (zeros, tiny, large, near float16's range), losses (smooth, flat, kinked,
constant), right and wrong gradients and options, ``gradprobe.check`` either returns a Report
or raises a GradCheckError with a message; the caller's arrays are unchanged; no
RuntimeWarning escapes gradprobe's own arithmetic; the loss is never handed a non-finite value
from finite parameters; nothing hangs (a time limit on every example). Derandomized, bounded."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import gradprobe
from gradprobe.errors import GradCheckError

FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=int(os.environ.get("GRADPROBE_FUZZ_EXAMPLES", "60")),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SOURCE = os.path.dirname(gradprobe.__file__)


def _losses():
    def quad(v):
        return 0.5 * np.sum(np.arange(1, v.size + 1) * v.reshape(-1) ** 2), (
            np.arange(1, v.size + 1).reshape(v.shape) * v
        )

    def hinge(v):  # exactly 0 (flat) unless an entry exceeds 10
        return np.sum(np.maximum(0.0, v - 10.0)), (v > 10.0).astype(np.float64)

    def kink(v):
        return np.sum(np.abs(v)), np.sign(v)

    def tanh(v):
        return np.sum(np.tanh(v)), 1.0 - np.tanh(v) ** 2

    def const(v):
        return 0.0, np.zeros_like(v)

    def cubic(v):
        return np.sum(v**3) / 3.0, v**2

    return {f.__name__: f for f in (quad, hinge, kink, tanh, const, cubic)}


LOSSES = _losses()

cases = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["float64", "float32", "float16"]),
        "shape": st.sampled_from([(), (1,), (3,), (2, 3), (7,)]),
        "scale": st.sampled_from([0.0, 1e-300, 1e-30, 1e-3, 1.0, 1e3, 3e4, 1e30, 1e300]),
        "loss": st.sampled_from(sorted(LOSSES)),
        "bug": st.booleans(),
        "seed": st.integers(0, 2**16),
        "method": st.sampled_from(["central", "richardson"]),
        "samples": st.sampled_from([None, 2, "all"]),
        "rtol": st.sampled_from([None, 1e-3, 0.5, 1.0, -1.0, float("nan")]),
    }
)


@pytest.mark.timeout(600)
@FUZZ
@given(case=cases)
def test_check_returns_a_report_or_raises_with_a_message_and_keeps_its_promises(case):
    rng = np.random.default_rng(case["seed"])
    dt = np.dtype(case["dtype"])
    x64 = case["scale"] * rng.uniform(-1, 1, case["shape"])
    assume(np.all(np.abs(x64) <= np.finfo(dt).max))  # a value the dtype holds
    x = x64.astype(dt)
    saved = x.tobytes()
    f = LOSSES[case["loss"]]
    handed: list[bool] = []

    def loss(v):
        handed.append(bool(np.all(np.isfinite(v))))
        with np.errstate(all="ignore"):  # the user's own arithmetic may overflow: not ours
            return float(f(np.asarray(v, dtype=np.float64))[0])

    def grad(v):
        with np.errstate(all="ignore"):
            g = np.array(f(np.asarray(v, dtype=np.float64))[1], dtype=np.float64)
        if case["bug"] and g.size:
            g.reshape(-1)[0] = 1.5 * g.reshape(-1)[0] + 1.0
        return g.reshape(np.shape(v))

    options = {"seed": case["seed"], "method": case["method"], "timeout": 60}
    for key in ("samples", "rtol"):
        if case[key] is not None:
            options[key] = case[key]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            report = gradprobe.check(loss, grad, x, **options)
        except GradCheckError as exc:
            assert str(exc).strip(), f"{type(exc).__name__} without a message"
            report = None
    assert x.tobytes() == saved, "the caller's array changed"
    assert all(handed), "the loss was handed a non-finite value from finite parameters"
    ours = [
        w
        for w in caught
        if issubclass(w.category, RuntimeWarning) and str(w.filename).startswith(SOURCE)
    ]
    assert not ours, [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]
    if report is not None:
        assert isinstance(report, gradprobe.Report)
        for p in report.params.values():
            assert np.isfinite(p.step) and 0 < p.step < 1, p.step
        # (float16 left out: a 20% error on a cubic at x = 274 is read as a kink there, a
        # diagnosis question reported in issue 26's notes, not a fault.)
        tight = case["rtol"] in (None, 1e-3) and case["dtype"] != "float16"
        if case["bug"] and tight and case["loss"] in ("quad", "cubic") and report.complete:
            # A 50% error plus 1 on entry 0: never a verified pass where entry 0 was checked
            # (at the round-off floor, a pass is stated as unverified).
            p = report.params["x"]
            if p.n_checked == p.n_total and p.n_at_floor == 0:
                assert not report.passed
