"""The jax peer suite: gradprobe.jax.check over jax.numpy and jax.lax functions, beside
``jax.test_util.check_grads``.

JAX tests its derivatives with ``jax.test_util.check_grads``; the reference here is its
reverse-mode check in float64 (x64 on), on the sample inputs of jax_cases.py. On every case it
passes, ``gradprobe.jax.check`` with its defaults must pass too: in float64 (x64 on) and in
float32 (x64 off, the same values rounded), with no refusal and no internal error. Planted
bugs (a ``jax.custom_vjp`` whose backward is autodiff's, then mutated) must be found on the
mutated input. The counts are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import gradprobe.jax as gj  # noqa: E402
from gradprobe import InvalidInputError  # noqa: E402

from .jax_cases import CASES, Case, n  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

#: Per-entry evaluations of the jitted function: on these tiny cases vmap's compilations (one
#: per padded batch size) would double the suite's time; the jit and vmap path is the
#: default, tested in test_jax.py, and here on every DEFAULTS_EVERY-th case.
OPTIONS = {"vectorize": False}
DEFAULTS_EVERY = 8


@pytest.fixture(autouse=True)
def _dispatch_every_parallel_call():
    """Override tests/conftest.py's fixture: the peer suite runs gradprobe as users do."""


def _is_float(a: Any) -> bool:
    return isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating)


def _differentiated(case: Case, inputs: tuple) -> list[int]:
    """Positions check_grads differentiates: float arrays (or lists of them), not fixed."""
    return [
        i
        for i, a in enumerate(inputs)
        if i not in case.fixed
        and (_is_float(a) or (isinstance(a, list) and all(map(_is_float, a))))
    ]


def reference_passes(case: Case) -> bool:
    """check_grads' reverse-mode verdict in float64 (the truth the suite judges by)."""
    with jax.enable_x64(True):
        inputs = case.build(np.float64)
        wanted = _differentiated(case, inputs)

        def closed(*xs: Any) -> Any:
            full = list(inputs)
            for i, x in zip(wanted, xs, strict=True):
                full[i] = x
            return (case.reference or case.fn)(*full)

        try:
            check_grads(closed, tuple(inputs[i] for i in wanted), order=1, modes=["rev"])
        except AssertionError:
            return False
    return True


@dataclass
class Outcome:
    case: Case
    dtype: str
    kind: str  # "pass", "false alarm", "refused", "internal error"
    detail: str
    seconds: float


def _judge(case: Case, dtype: Any) -> Outcome:
    name = np.dtype(dtype).name
    with jax.enable_x64(dtype == np.float64):
        inputs = case.build(dtype)
        start = time.perf_counter()
        try:
            report = gj.check(case.fn, *inputs, **OPTIONS)
        except InvalidInputError as e:
            return Outcome(case, name, "refused", str(e), 0.0)
        except Exception as e:  # anything else from gradprobe on a case check_grads passes
            return Outcome(case, name, "internal error", f"{type(e).__name__}: {e}", 0.0)
    seconds = time.perf_counter() - start
    return Outcome(case, name, "pass" if report.passed else "false alarm", str(report), seconds)


@pytest.fixture(scope="module")
def peer_run():
    rows, reference_fails = [], []
    for case in CASES:
        if not reference_passes(case):
            reference_fails.append(case.name)
            continue
        rows += [_judge(case, np.float64), _judge(case, np.float32)]
    return rows, reference_fails


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_the_default_path_on_a_subset(dtype):
    bad = []
    for case in CASES[::DEFAULTS_EVERY]:
        with jax.enable_x64(dtype == np.float64):
            report = gj.check(case.fn, *case.build(dtype))
        if not report.passed or not report.measured["vectorization"].startswith("jax.vmap"):
            bad.append(f"{case.name}: {report.measured['vectorization']}: {report}")
    assert not bad, "\n\n".join(bad)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_no_false_alarm_refusal_or_internal_error(peer_run, dtype):
    rows, _ = peer_run
    mine = [r for r in rows if r.dtype == dtype]
    assert len(mine) >= 100, "the case list shrank"
    bad = [f"{r.case.name} ({dtype}): {r.kind}: {r.detail[:800]}" for r in mine if r.kind != "pass"]
    assert not bad, "\n\n".join(bad)


def test_tally(peer_run, capsys):
    rows, reference_fails = peer_run
    lines = [
        f"jax peer suite: {len(CASES)} cases, check_grads (rev, float64) fails "
        f"{len(reference_fails)} (left out): {reference_fails}"
    ]
    for dtype in ("float64", "float32"):
        mine = [r for r in rows if r.dtype == dtype]
        kinds = {k: sum(r.kind == k for r in mine) for k in sorted({r.kind for r in mine})}
        timed = [r.seconds for r in mine if r.kind == "pass"]
        lines.append(
            f"  {dtype}: {len(mine)} cases check_grads passes: {kinds}; median "
            f"{statistics.median(timed):.3f} s a case (jit compilation included)"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not reference_fails, "a case check_grads fails is no reference: mend or drop it"


# Planted bugs: a custom_vjp whose backward is autodiff's VJP, then mutated.

PLANTED = (
    Case("tanh", jnp.tanh, lambda rng: (rng.standard_normal((3, 4)),)),
    Case("matmul", jnp.matmul, lambda rng: (n(3, 4)(rng), n(4, 2)(rng))),
    Case("logsumexp", jax.nn.logsumexp, lambda rng: (rng.standard_normal((3, 4)),)),
    Case("hypot", jnp.hypot, lambda rng: (rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6))),
    Case("solve", jnp.linalg.solve, lambda rng: (n(3, 3)(rng) + 3 * np.eye(3), n(3, 2)(rng))),
    Case("softmax", jax.nn.softmax, lambda rng: (rng.standard_normal((2, 5)),)),
    Case("cumprod", jnp.cumprod, lambda rng: (rng.uniform(0.5, 2, 6),)),
    Case("conv", lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME"),
         lambda rng: (rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((2, 2, 3, 3)))),
)


def _mutated(fn: Callable[..., Any], kind: str, entry: int) -> Callable[..., Any]:
    @jax.custom_vjp
    def planted(*xs):
        return fn(*xs)

    def forward(*xs):
        return fn(*xs), xs

    def backward(xs, g):
        grads = list(jax.vjp(fn, *xs)[1](g))
        if kind == "x1.01":
            grads[0] = grads[0] * 1.01
        elif kind == "sign":
            grads[0] = -grads[0]
        elif kind == "entry zeroed":
            grads[0] = grads[0].reshape(-1).at[entry].set(0.0).reshape(grads[0].shape)
        elif kind == "entry +5%":
            grads[0] = grads[0].reshape(-1).at[entry].multiply(1.05).reshape(grads[0].shape)
        elif kind == "second dropped":
            grads[1] = jnp.zeros_like(grads[1])
        return tuple(grads)

    planted.defvjp(forward, backward)
    return lambda *xs: planted(*xs)


KINDS = ("x1.01", "sign", "entry zeroed", "entry +5%", "second dropped")
#: The kinds every float32 check must find too. A 1% or 5% error of an entry whose difference
#: quotient sits at float32's round-off floor cannot be told from noise there (the report says
#: those entries are unverified; without x64 no float64 recheck runs): counted, not asserted.
COARSE = ("sign", "entry zeroed", "second dropped")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_planted_bugs_are_found_on_the_mutated_input(dtype, capsys):
    found, total, missed = 0, 0, []
    for case in PLANTED:
        with jax.enable_x64(dtype == np.float64):
            inputs = case.build(dtype)
            entry = inputs[0].size // 2  # a generic entry (its gradient is not small)
            for kind in KINDS:
                if kind == "second dropped" and len(inputs) < 2:
                    continue
                total += 1
                fn = _mutated(case.fn, kind, entry)
                names = ["input0", "input1"][: len(inputs)]
                report = gj.check(fn, *inputs, **OPTIONS)
                target = names[1] if kind == "second dropped" else names[0]
                ok = [p.name for p in report.failures] == [target]
                if ok and kind.startswith("entry"):
                    where = tuple(int(i) for i in np.unravel_index(entry, inputs[0].shape))
                    ok = report.params[target].bad_indices == (where,)
                found += ok
                if not ok and (dtype == np.float64 or kind in COARSE):
                    missed.append(f"{case.name}: {kind}: {report}")
    with capsys.disabled():
        print(f"\njax planted bugs ({np.dtype(dtype).name}): {found} of {total} found, localized")
    assert total >= 30
    assert not missed, "\n\n".join(missed)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_round_is_piecewise_constant_not_a_zero_gradient(dtype):
    # check_grads fails here (its step crosses jumps); gradprobe finds the loss piecewise
    # constant. In float64 its step is finer than the 0.001 grid; float32's spans ~24 jumps,
    # and the entries whose staircase reads as a slope are found flat at finer steps.
    with jax.enable_x64(dtype == np.float64):
        x = jnp.asarray(np.random.default_rng(0).standard_normal(20).astype(dtype) * 5)
        report = gj.check(lambda a: jnp.round(a, 3), x)
    assert report.passed, str(report)
    assert report.measured["noise"] == "piecewise constant"
