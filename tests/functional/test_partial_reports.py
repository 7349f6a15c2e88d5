"""Every way a vector-valued check stops leaves the same partial report through every entry
point: ``check_vjp``, ``gradprobe.torch.check`` and ``gradprobe.jax.check``, under Ctrl-C, a
time limit and an evaluation budget (one amend, :func:`gradprobe.functional.reduction.amend`).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import gradprobe


class Stop:
    """Counts the forward calls; after ``after`` of them raises ``KeyboardInterrupt`` (Ctrl-C)
    or sleeps ``sleep`` seconds per call (so a time limit runs out)."""

    def __init__(self, after: int | None = None, sleep: float = 0.0):
        self.after, self.sleep, self.calls = after, sleep, 0

    def __call__(self) -> None:
        self.calls += 1
        if self.after is not None and self.calls > self.after:
            raise KeyboardInterrupt
        time.sleep(self.sleep)


def _numpy_entry(stop: Stop, **options):
    x = {"x": np.linspace(-1.0, 1.0, 48).reshape(6, 8)}

    def f(p):
        stop()
        return np.tanh(p["x"]) * 2.0

    def vjp(p, g):
        return {"x": g * 2.0 * (1 - np.tanh(p["x"]) ** 2)}

    return gradprobe.check_vjp(f, vjp, x, **options)


def _torch_entry(stop: Stop, **options):
    torch = pytest.importorskip("torch")
    import gradprobe.torch as gt

    def fn(x):
        stop()
        return torch.tanh(x) * 2.0

    return gt.check(fn, torch.linspace(-1, 1, 48, dtype=torch.float64).reshape(6, 8), **options)


def _jax_entry(stop: Stop, **options):
    jnp = pytest.importorskip("jax.numpy")
    import gradprobe.jax as gj

    def fn(x):
        stop()  # once per trace when jitted: run eagerly so every call counts
        return jnp.tanh(x) * 2.0

    x = np.linspace(-1, 1, 48, dtype=np.float32).reshape(6, 8)
    return gj.check(fn, x, jit=False, **options)


ENTRIES = {"check_vjp": _numpy_entry, "torch": _torch_entry, "jax": _jax_entry}
#: What each entry point's reduction adds to the settings (what was asked) and to the
#: measurements, finished or partial.
ADDED = {
    "check_vjp": ({"cotangent"}, set()),
    "torch": ({"cotangent", "vectorize"}, {"framework", "device", "vectorization", "not_checked"}),
    "jax": (
        {"cotangent", "vectorize", "jit"},
        {"framework", "device", "vectorization", "not_checked", "x64", "jitted"},
    ),
}


def _stopped(entry: str, how: str):
    run = ENTRIES[entry]
    if how == "ctrl-c":
        with pytest.raises(KeyboardInterrupt) as info:
            run(Stop(after=4), samples=64)  # mid-check, however few calls it makes
    elif how == "timeout":
        with pytest.raises(gradprobe.CheckAborted) as info:
            run(Stop(sleep=0.1), samples=64, timeout=0.5)  # preflight alone runs past it
    else:
        with pytest.raises(gradprobe.CheckAborted) as info:
            run(Stop(), samples=64, budget=12)
    partial = getattr(info.value, "partial_report", None)
    assert isinstance(partial, gradprobe.Report), f"{entry} {how}: no partial report"
    return partial


@pytest.mark.parametrize("how", ["ctrl-c", "timeout", "budget"])
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_partial_report_has_the_settings_of_a_finished_one(entry, how):
    finished = ENTRIES[entry](Stop(), samples=8)
    partial = _stopped(entry, how)
    asked, measured = ADDED[entry]
    assert asked <= set(finished.settings) and measured <= set(finished.measured)
    # What was asked is the same however the check ended (samples differ on purpose).
    assert set(partial.settings) == set(finished.settings), (entry, how)
    for key in asked:
        assert partial.settings[key] == finished.settings[key], (entry, how, key)
    for key in measured:
        assert partial.measured[key] == finished.measured[key], (entry, how, key)
    assert not partial.complete and partial.incomplete_reason


def test_adapter_warnings_reach_the_partial_report():
    torch = pytest.importorskip("torch")
    import gradprobe.torch as gt

    stop = Stop(after=30)

    def with_item(x):
        stop()
        return torch.tanh(x) * (1.0 + 0.0 * x.max().item())  # .item(): vmap falls back

    with pytest.raises(KeyboardInterrupt) as info:
        gt.check(with_item, torch.linspace(-1, 1, 12, dtype=torch.float64), samples=64)
    partial = info.value.partial_report
    assert partial.warnings[0].startswith("vectorize: torch.func.vmap could not be used")
    assert partial.measured["vectorization"].startswith("per entry")
