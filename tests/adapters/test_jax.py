"""gradprobe.jax: custom_vjp and custom_jvp functions checked against their VJP."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import gradprobe  # noqa: E402
import gradprobe.jax as gj  # noqa: E402
from gradprobe import InvalidInputError  # noqa: E402

from ..helpers import report_core  # noqa: E402

BAD = (2, 5)  # the entry of the input gradient the buggy backward gets wrong


def _parts(x, w, b):
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1.0 / jnp.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5)
    xhat = xc * rstd
    return xhat * w + b, (xhat, rstd, w)


def make_layer_norm(bug=False):
    """Layer norm as a jax.custom_vjp with a hand-written backward (one wrong entry if bug)."""

    @jax.custom_vjp
    def layer_norm(x, w, b):
        return _parts(x, w, b)[0]

    def backward(res, g):
        xhat, rstd, w = res
        gh = g * w
        gx = rstd * (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True))
        if bug:
            gx = gx.at[BAD].multiply(1.5)
        return gx, (g * xhat).sum(0), g.sum(0)

    layer_norm.defvjp(_parts, backward)
    return layer_norm


def inputs(dtype=np.float32, rows=24, cols=32, seed=0):
    """768 input entries: more than the default sample, so probes and bisection run."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)) * 2 + 0.5
    w, b = rng.standard_normal(cols), rng.standard_normal(cols)
    return [jnp.asarray(a.astype(dtype)) for a in (x, w, b)]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def test_correct_custom_vjp_passes_in_float32():
    report = gj.check(make_layer_norm(), *inputs())
    assert report.passed, str(report)
    assert list(report.params) == ["x", "w", "b"]  # the signature's names
    assert report.params["x"].rtol == pytest.approx(2e-3)  # checked in float32
    assert report.measured["vectorization"].startswith("jax.vmap")
    assert report.measured["x64"] is False and report.measured["jitted"] is True
    assert report.settings["jit"] is True and report.settings["vectorize"] == "auto"


def test_correct_custom_vjp_passes_in_float64(x64):
    report = gj.check(make_layer_norm(), *inputs(np.float64))
    assert report.passed, str(report)
    assert report.params["x"].rtol == pytest.approx(1e-5)
    assert report.measured["x64"] is True


@pytest.mark.parametrize("vectorize", [True, False])
def test_single_wrong_entry_is_found_and_localized(vectorize):
    report = gj.check(make_layer_norm(bug=True), *inputs(), vectorize=vectorize)
    assert [p.name for p in report.failures] == ["x"], str(report)
    assert report.params["x"].bad_indices == (BAD,), str(report)


def test_single_wrong_entry_is_found_in_float64(x64):
    report = gj.check(make_layer_norm(bug=True), *inputs(np.float64))
    assert report.params["x"].bad_indices == (BAD,), str(report)


def test_custom_jvp_and_pytree_outputs():
    @jax.custom_jvp
    def softplus(x):
        return jnp.logaddexp(x, 0.0)

    @softplus.defjvp
    def softplus_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return softplus(x), t * jax.nn.sigmoid(x)

    def fn(x, k):
        y = softplus(x)
        return {"y": y, "pair": (y.sum() * k, jnp.argmax(y))}  # an int leaf is ignored

    x = jnp.asarray(np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4))
    report = gj.check(fn, x, 2)
    assert report.passed and list(report.params) == ["x"]


def test_fallback_when_vmap_raises():
    layer_norm = make_layer_norm()

    def with_callback(x, w, b):
        shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
        # A host callback on a side value (no vmap_method: vmap refuses it).
        y = jax.pure_callback(np.tanh, shape, jax.lax.stop_gradient(x))
        return layer_norm(x, w, b) + 0.0 * y

    report = gj.check(with_callback, *inputs(rows=4, cols=8))
    assert report.passed, str(report)
    assert report.measured["vectorization"].startswith("per entry")
    assert report.warnings[0].startswith("vectorize: jax.vmap could not be used")
    with pytest.raises(InvalidInputError, match="vectorize=True"):
        gj.check(with_callback, *inputs(rows=4, cols=8), vectorize=True)


def test_untraceable_function_runs_eagerly_with_a_warning():
    def positive_part(x):
        return jnp.sin(x[x > 0]).sum()  # a shape that depends on the values: jit refuses it

    x = jnp.asarray(np.linspace(-1.0, 1.0, 6, dtype=np.float32))
    report = gj.check(positive_part, x)
    assert report.passed
    assert report.settings["jit"] is True and report.measured["jitted"] is False
    assert any(w.startswith("jit: jax.jit could not trace fn") for w in report.warnings)


def test_argnums_and_numpy_inputs_untouched():
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    y = np.linspace(0, 2, 4, dtype=np.float32)
    saved = [x.copy(), y.copy()]
    report = gj.check(lambda a, b: jnp.tanh(a * b), x, y, argnums=1)
    assert report.passed and list(report.params) == ["b"]
    for now, before in zip([x, y], saved, strict=True):
        assert now.tobytes() == before.tobytes()


def test_same_seed_same_report():
    one = gj.check(make_layer_norm(bug=True), *inputs(), seed=5)
    two = gj.check(make_layer_norm(bug=True), *inputs(), seed=5)
    assert report_core(one) == report_core(two)


def test_float64_without_x64_is_refused():
    x = np.ones(3)
    with pytest.raises(InvalidInputError, match="jax_enable_x64"):
        gj.check(jnp.sin, x)
    with pytest.raises(InvalidInputError, match="promote: True needs float64"):
        gj.check(jnp.sin, x.astype(np.float32), promote=True)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((jnp.arange(3),), {}, "at least one floating-point.*x: ArrayImpl of dtype int"),
        ((jnp.ones(3, dtype=jnp.bfloat16),), {}, "bfloat16"),
        ((jnp.ones(3),), {"argnums": 4}, "argnums"),
        ((jnp.ones(3),), {"batched": True}, "batched: the adapter sets it"),
        ((jnp.ones(3),), {"vectorize": "maybe"}, "vectorize"),
    ],
)
def test_bad_inputs(args, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        gj.check(jnp.sin, *args, **kwargs)


@pytest.mark.parametrize("params", [jnp.ones(3), {"w": jnp.ones(3)}])
def test_numpy_check_points_jax_arrays_to_the_adapter(params):
    with pytest.raises(InvalidInputError, match=r"a jax array.*gradprobe\.jax\.check"):
        gradprobe.check(lambda p: 0.0, lambda p: p, params)
