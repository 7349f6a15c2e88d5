"""check_vjp, check_jvp, check_hvp and check_layer: correct layers pass, planted bugs fail
where they are, and the layer mistakes that would confuse a check get their own errors."""

from __future__ import annotations

import importlib.util
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gradprobe
from gradprobe.functional import reduction as reduction_module
from gradprobe.functional.reduction import COTANGENT_STREAM, cotangent_setting

from ..helpers import assert_bitwise_unchanged, report_core, snapshot

REPO = Path(__file__).resolve().parents[2]


def _load_examples():
    spec = importlib.util.spec_from_file_location(
        "gradprobe_example_layers", REPO / "examples" / "layers.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the layer classes pickle by module name
    spec.loader.exec_module(module)
    return module


layers = _load_examples()
DTYPES = [np.float64, np.float32]
EXAMPLES = {
    "conv": layers.check_conv,
    "lstm": layers.check_lstm,
    "logistic_hvp": layers.check_logistic_hvp,
}


# -- a dense tanh layer, as functions and as an object ---------------------------------------------
def _point(seed=0, dtype=np.float64, n_in=4, n_out=3):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((5, n_in)).astype(dtype),
        "W": (rng.standard_normal((n_in, n_out)) / 2).astype(dtype),
    }


def dense(p):
    return np.tanh(p["x"] @ p["W"])


def dense_vjp(p, g):
    d = g * (1 - dense(p) ** 2)
    return {"x": d @ p["W"].T, "W": p["x"].T @ d}


def dense_jvp(p, t):
    return (1 - dense(p) ** 2) * (t["x"] @ p["W"] + p["x"] @ t["W"])


class Dense:
    def __init__(self, n_in=4, n_out=3, seed=0, dtype=np.float64):
        rng = np.random.default_rng(seed)
        self.W = (rng.standard_normal((n_in, n_out)) / 2).astype(dtype)
        self.b = (0.1 * rng.standard_normal(n_out)).astype(dtype)
        self.dW, self.db = np.zeros_like(self.W), np.zeros_like(self.b)

    def forward(self, x):
        self.x = x
        self.y = np.tanh(x @ self.W + self.b)
        return self.y

    def backward(self, dy):
        d = dy * (1 - self.y**2)
        self.dW += self.x.T @ d
        self.db += d.sum(axis=0)
        return d @ self.W.T


def _x(seed=1, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal((5, 4)).astype(dtype)


def _failed(report):
    return {p.name for p in report.failures}


# -- correct cases pass ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_correct_examples_pass_at_20_seeds(name, dtype):
    for seed in range(20):
        report = EXAMPLES[name](seed=seed, dtype=dtype)
        assert report.passed, f"seed {seed}\n{report}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dense_vjp_jvp_and_layer_pass_at_20_seeds(dtype):
    for seed in range(20):
        p = _point(seed, dtype)
        for report in (
            gradprobe.check_vjp(dense, dense_vjp, p, seed=seed),
            gradprobe.check_jvp(dense, dense_jvp, p, seed=seed),
            gradprobe.check_layer(Dense(seed=seed, dtype=dtype), p["x"], params=["W", "b"]),
        ):
            assert report.passed, f"seed {seed}\n{report}"
            assert list(report.params)[:1] == ["x"]


# -- planted bugs fail where they are ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    ("name", "bug", "where"),
    [
        ("conv", "transpose", "W"),  # a transposed weight gradient
        ("conv", "flip", "x"),  # a wrong input gradient
        ("lstm", "forget", "c"),  # a wrong gradient of one of several inputs
        ("lstm", "bias", "b"),
        ("logistic_hvp", "l2", "w"),  # a missing hvp term
        ("logistic_hvp", "curvature", "w"),  # a wrong hvp term
    ],
)
def test_planted_bugs_fail_the_right_input(name, bug, where, dtype):
    for seed in range(3):
        report = EXAMPLES[name](bug=bug, seed=seed, dtype=dtype)
        assert _failed(report) == {where}, f"seed {seed}\n{report}"
        assert report.params[where].bad_indices


def test_transposed_kernel_gradient_fails_off_the_diagonal_only():
    report = layers.check_conv(bug="transpose")
    bad = report.params["W"].bad_indices
    assert bad and all(i[2] != i[3] for i in bad)  # entries on the kernel's diagonal are right


def test_bias_bug_is_localized_to_the_forget_gate():
    report = layers.check_lstm(bug="bias")
    hidden = 4
    assert sorted(report.params["b"].bad_indices) == [(i,) for i in range(hidden, 2 * hidden)]
    assert report.params["b"].diagnosis.kind == "zero"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_one_wrong_entry_is_localized(dtype):
    def vjp(p, g):
        out = dense_vjp(p, g)
        out["W"][1, 2] *= 1.1
        return out

    report = gradprobe.check_vjp(dense, vjp, _point(dtype=dtype))
    assert _failed(report) == {"W"}
    assert report.params["W"].bad_indices == ((1, 2),)


def test_transposed_square_weight_gradient_is_diagnosed():
    def vjp(p, g):
        out = dense_vjp(p, g)
        return {"x": out["x"], "W": out["W"].T}

    report = gradprobe.check_vjp(dense, vjp, _point(n_out=4))
    assert _failed(report) == {"W"}
    assert report.params["W"].diagnosis.kind == "transpose"


def test_wrong_jvp_is_localized_to_its_input():
    def jvp(p, t):
        time.sleep(0.001)  # so the recorded time of building the gradient has a floor
        return (1 - dense(p) ** 2) * (t["x"] @ p["W"] + 2 * p["x"] @ t["W"])

    report = gradprobe.check_jvp(dense, jvp, _point())
    assert _failed(report) == {"W"}
    assert report.params["W"].diagnosis.kind == "scale"
    calls = 5 * 4 + 4 * 3 + 1
    assert report.measured["jvp_calls"] == calls
    assert report.timings["jvp"] >= 0.001 * calls  # the jvp calls, not the check after them


def test_wrong_layer_input_gradient_is_localized():
    class Leaky(Dense):
        def backward(self, dy):
            return 0.5 * super().backward(dy)

    report = gradprobe.check_layer(Leaky(), _x(), params=["W", "b"])
    assert _failed(report) == {"x"}


# -- the cotangent ------------------------------------------------------------------------------
def _seen_cotangents(**options):
    seen = []

    def vjp(p, g):
        seen.append(g.copy())
        return dense_vjp(p, g)

    report = gradprobe.check_vjp(
        dense, vjp, _point(dtype=options.pop("dtype", np.float64)), **options
    )
    return report, seen


def test_cotangent_is_seeded_normal_and_recorded():
    report, seen = _seen_cotangents(seed=3)
    again, seen_again = _seen_cotangents(seed=3)
    assert report_core(report) == report_core(again)
    assert report.settings["cotangent"] == cotangent_setting(3)
    assert np.array_equal(seen[0], seen_again[0])
    assert all(np.array_equal(seen[0], g) for g in seen)  # one G for the whole check
    stream = np.random.default_rng([COTANGENT_STREAM, 3])  # a stream apart from the sample's
    assert np.array_equal(seen[0], stream.standard_normal((5, 3)))
    assert np.unique(seen[0]).size == seen[0].size  # never ones


def test_cotangent_seed_overrides_seed_and_follows_the_output_dtype():
    _, base = _seen_cotangents(seed=0)
    report, other = _seen_cotangents(seed=0, cotangent_seed=7)
    assert report.settings["cotangent"] == cotangent_setting(7)
    assert not np.array_equal(base[0], other[0])
    _, single = _seen_cotangents(dtype=np.float32)
    assert single[0].dtype == np.float32


def test_partial_report_records_the_cotangent():
    with pytest.raises(gradprobe.CheckAborted) as info:
        gradprobe.check_vjp(dense, dense_vjp, _point(), budget=5)
    assert info.value.partial_report.settings["cotangent"] == cotangent_setting(0)


# -- static arguments ---------------------------------------------------------------------------
def test_static_arguments_are_passed_unchanged_and_never_perturbed():
    rng = np.random.default_rng(0)
    mask = (rng.random((5, 3)) < 0.5).astype(np.float64)
    labels = np.arange(5)
    saved = snapshot([mask, labels])
    seen = []

    def f(p, mask, labels):
        seen.append((mask, labels))
        return dense(p) * mask

    def vjp(p, g, mask, labels):
        seen.append((mask, labels))
        return dense_vjp(p, g * mask)

    report = gradprobe.check_vjp(f, vjp, _point(), static={"mask": mask, "labels": labels})
    assert report.passed, str(report)
    assert len(seen) > 20
    for m, lab in seen:
        assert np.array_equal(m, mask) and np.array_equal(lab, labels)
        assert not m.flags.writeable
    assert_bitwise_unchanged([mask, labels], saved)


def test_writing_into_a_static_argument_is_refused():
    def f(p, scale):
        scale *= 2
        return dense(p) * scale

    with pytest.raises(gradprobe.InvalidInputError, match="read-only"):
        gradprobe.check_vjp(
            f, lambda p, g, scale: dense_vjp(p, g), _point(), static={"scale": np.ones(3)}
        )


def test_layer_static_argument_reaches_forward():
    class Masked(Dense):
        def forward(self, x, mask):
            self.mask = mask
            return super().forward(x) * mask

        def backward(self, dy):
            return super().backward(dy * self.mask)

    mask = np.array([1.0, 0.0, 1.0])
    report = gradprobe.check_layer(Masked(), _x(), params=["W", "b"], static={"mask": mask})
    assert report.passed, str(report)


# -- mutation and accumulation ---------------------------------------------------------------------
def test_vjp_writing_into_the_cotangent_is_refused():
    def vjp(p, g):
        g *= 1 - dense(p) ** 2
        return {"x": g @ p["W"].T, "W": p["x"].T @ g}

    with pytest.raises(
        gradprobe.InvalidInputError, match="vjp: expected it to leave the cotangent"
    ):
        gradprobe.check_vjp(dense, vjp, _point())


def test_layer_backward_writing_into_its_upstream_gradient_is_refused():
    class InPlace(Dense):
        def backward(self, dy):
            dy *= 1.0
            dy[0, 0] = 0.0
            return super().backward(dy)

    with pytest.raises(gradprobe.InvalidInputError, match=r"backward: .*upstream gradient"):
        gradprobe.check_layer(InPlace(), _x(), params=["W"])


def test_layer_writing_into_its_input_is_refused():
    class Clips(Dense):
        def backward(self, dy):
            out = super().backward(dy)
            self.x[self.x < 0] = 0
            return out

    with pytest.raises(gradprobe.InvalidInputError, match=r"backward: .*input unchanged.*\['x'\]"):
        gradprobe.check_layer(Clips(), _x(), params=["W"])


def test_prototype_with_accumulated_gradients_is_refused():
    layer = Dense()
    layer.forward(_x())
    layer.backward(np.ones((5, 3)))
    with pytest.raises(gradprobe.StatefulGradientError, match="already nonzero on a fresh layer"):
        gradprobe.check_layer(layer, _x(), params=["W", "b"])


_SHARED: dict[str, np.ndarray] = {}


class SharedBuffer(Dense):
    def backward(self, dy):
        out = super().backward(dy)
        buf = _SHARED.setdefault("dW", np.zeros_like(self.W))
        buf += self.dW
        self.dW = buf
        return out


def test_gradients_accumulated_across_layers_are_refused():
    _SHARED.clear()
    with pytest.raises(gradprobe.StatefulGradientError, match="two fresh layers") as info:
        gradprobe.check_layer(SharedBuffer, _x(), params=["W"])
    assert "2x the first" in str(info.value)


def test_factory_returning_the_same_layer_is_refused():
    layer = Dense()
    with pytest.raises(gradprobe.InvalidInputError, match="same object twice"):
        gradprobe.check_layer(lambda: layer, _x(), params=["W"])


def test_jvp_writing_into_its_tangent_is_refused():
    def jvp(p, t):
        t["W"] *= 2
        return dense_jvp(p, t)

    with pytest.raises(gradprobe.InvalidInputError, match=r"jvp: .*the tangent"):
        gradprobe.check_jvp(dense, jvp, _point())


def test_stateful_jvp_is_refused():
    calls = []

    def jvp(p, t):
        calls.append(1)
        return dense_jvp(p, t) * len(calls)

    with pytest.raises(gradprobe.StatefulGradientError, match="jvp: returned different"):
        gradprobe.check_jvp(dense, jvp, _point())


# -- the caller's arrays ---------------------------------------------------------------------------
def test_caller_arrays_and_layer_are_unchanged():
    p = _point()
    saved = snapshot(p)
    gradprobe.check_vjp(dense, dense_vjp, p)
    gradprobe.check_jvp(dense, dense_jvp, p)
    assert_bitwise_unchanged(p, saved)
    layer, x = Dense(), _x()
    state = snapshot([layer.W, layer.b, layer.dW, layer.db, x])
    report = gradprobe.check_layer(layer, x, params=["W", "b"])
    assert report.passed
    assert_bitwise_unchanged([layer.W, layer.b, layer.dW, layer.db, x], state)
    assert not hasattr(layer, "x")  # forward never ran on the caller's layer


# -- shapes of inputs and outputs ------------------------------------------------------------------
def test_batched_function_matches_unbatched_and_catches_a_bug():
    def f(p):  # every input has a leading axis (B or 1)
        return np.tanh(np.einsum("bij,bjk->bik", p["x"], p["W"]))

    def bad(p, g):
        out = dense_vjp(p, g)
        out["x"][0, 0] += 0.1
        return out

    report = gradprobe.check_vjp(f, dense_vjp, _point(), batched=True)
    plain = gradprobe.check_vjp(dense, dense_vjp, _point())
    assert report.passed and report.measured["executor"] == "batched"
    assert report.params["W"].n_checked == plain.params["W"].n_checked
    failing = gradprobe.check_vjp(f, bad, _point(), batched=True)
    assert _failed(failing) == {"x"} and failing.params["x"].bad_indices == ((0, 0),)


def test_tuple_output_of_one_array_twice_and_dict_output():
    def twice(p):  # one array returned twice (an RNN's output and state)
        y = dense(p)
        return y, y

    def twice_vjp(p, g):
        return dense_vjp(p, g[0] + g[1])

    assert gradprobe.check_vjp(twice, twice_vjp, _point()).passed

    def named(p):
        y = dense(p)
        return {"y": y, "total": y.sum(axis=1)}

    def named_vjp(p, g):
        return dense_vjp(p, g["y"] + g["total"][:, None])

    report = gradprobe.check_vjp(named, named_vjp, _point())
    assert report.passed and list(report.params) == ["x", "W"]


def test_nested_inputs_and_outputs_are_reported_by_path():
    def f(p):
        y = np.tanh(p["enc"]["x"] @ p["enc"]["W"])
        return {"out": (y, {"total": y.sum(axis=1)})}

    def vjp(p, g):
        y_bar = g["out"][0] + g["out"][1]["total"][:, None]
        out = dense_vjp({"x": p["enc"]["x"], "W": p["enc"]["W"]}, y_bar)
        return {"enc": {"x": out["x"], "W": 2 * out["W"]}, "steps": p["steps"]}

    point = _point()
    inputs = {"enc": {"x": point["x"], "W": point["W"]}, "steps": 3}  # an int leaf: held
    report = gradprobe.check_vjp(f, vjp, inputs)
    assert list(report.params) == ["enc.x", "enc.W"]
    assert _failed(report) == {"enc.W"}


def test_non_float_output_leaf_is_refused():
    with pytest.raises(gradprobe.InvalidInputError, match=r"f's output.*'1' \(int64"):
        gradprobe.check_vjp(lambda p: (dense(p), np.arange(3)), dense_vjp, _point())


def test_nan_output_at_a_perturbed_point_fails_that_entry():
    x = np.array([1e-7, 1.0, 2.0])
    with np.errstate(invalid="ignore"):
        report = gradprobe.check_vjp(np.log, lambda x, g: g / x, x)
    assert _failed(report) == {"x"} and report.params["x"].bad_indices == ((0,),)


# -- bad arguments ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: gradprobe.check_vjp(lambda p: np.arange(3), dense_vjp, _point()),
            "f's output at the inputs: expected float arrays",
        ),
        (
            lambda: gradprobe.check_vjp(dense, lambda p, g: {"x": p["x"], "W": p["W"].T}, _point()),
            "gradient of 'W': expected shape",
        ),
        (
            lambda: gradprobe.check_vjp(dense, dense_vjp, _point(), method="complex-step"),
            "complex-step",
        ),
        (
            lambda: gradprobe.check_vjp(dense, dense_vjp, _point(), cotangent_seed=-1),
            "cotangent_seed",
        ),
        (
            lambda: gradprobe.check_vjp(dense, dense_vjp, _point(), static=[1]),
            "static: expected a mapping",
        ),
        (lambda: gradprobe.check_vjp(dense, dense_vjp, _point(), samples="lots"), "samples"),
        (lambda: gradprobe.check_vjp(dense, None, _point()), "vjp: expected a callable"),
        (lambda: gradprobe.check_layer(Dense(), _x(), params=["V"]), r"params: expected Dense\.V"),
        (
            lambda: gradprobe.check_layer(Dense(), _x(), params=["W"], grads="dW"),
            "grads: expected a template",
        ),
        (
            lambda: gradprobe.check_layer(Dense(), _x(), params=["W"], grads="grad_{}"),
            "set layer.grad_W",
        ),
        (lambda: gradprobe.check_layer(Dense(), _x(), params=["W"], batched=True), "batched"),
        (
            lambda: gradprobe.check_layer(Dense(), _x(), backward="back"),
            "backward: expected the layer",
        ),
        (lambda: gradprobe.check_layer(Dense(), {"W": _x()}, params=["W"]), "also parameter names"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(gradprobe.InvalidInputError, match=match):
        call()


def test_backward_without_input_gradient_needs_check_input_false():
    class NoDx(Dense):
        def backward(self, dy):
            super().backward(dy)

    with pytest.raises(gradprobe.InvalidInputError, match="check_input=False"):
        gradprobe.check_layer(NoDx(), _x(), params=["W", "b"])
    report = gradprobe.check_layer(NoDx(), _x(), params=["W", "b"], check_input=False)
    assert report.passed and list(report.params) == ["W", "b"]


def test_grads_as_a_callable_and_dotted_paths():
    class Holder:
        def __init__(self):
            self.inner = Dense()
            self.grads = {}

        def forward(self, x):
            return self.inner.forward(x)

        def backward(self, dy):
            dx = self.inner.backward(dy)
            self.grads = {"inner.W": self.inner.dW}
            return dx

    report = gradprobe.check_layer(
        Holder, _x(), params=["inner.W"], grads=lambda layer: layer.grads
    )
    assert report.passed and list(report.params) == ["x", "inner.W"]
    dotted = gradprobe.check_layer(Holder(), _x(), params=["inner.W", "inner.b"])
    assert dotted.passed  # "d{}" becomes inner.dW, inner.db


def test_loss_and_grad_handed_to_check_pickle(monkeypatch):
    """Worker processes receive the loss and grad: the layer's included, they pickle."""
    captured = {}

    def fake_check(loss, grad, layout, base, sources, options, recheck, start=None):
        captured.update(loss=loss, grad=grad, inputs=layout.pack(base))
        raise gradprobe.InvalidInputError("stop")

    monkeypatch.setattr(reduction_module, "check_normalized", fake_check)
    with pytest.raises(gradprobe.InvalidInputError):
        gradprobe.check_layer(layers.Conv2D(), np.ones((1, 2, 4, 4)), params=["W", "b"])
    inputs = captured["inputs"]
    loss, grad = captured["loss"], captured["grad"]
    assert pickle.loads(pickle.dumps(loss))(inputs) == loss(inputs)
    first, second = grad(inputs), pickle.loads(pickle.dumps(grad))(inputs)
    assert first.keys() == second.keys() == {"x", "W", "b"}
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_promote_checks_float32_inputs_at_float64_tolerances():
    p = _point(dtype=np.float32)
    for check, backward in ((gradprobe.check_vjp, dense_vjp), (gradprobe.check_jvp, dense_jvp)):
        report = check(dense, backward, p, promote=True)
        assert report.passed, str(report)
        assert report.params["W"].rtol == 1e-5  # float64's, not float32's 2e-3
        # The analytic side is computed in float64 too (float32's would be off by ~1e-7).
        assert max(r.max_rel_error for r in report.params.values()) < 1e-8


@pytest.mark.parametrize("batched", [False, True])
def test_an_adapters_own_outputs_contract_as_any_others(batched):
    # The adapters' outputs (private float arrays) skip the copy and layout checks; the loss,
    # and the rows a non-finite output makes NaN, are those of the general path.
    from gradprobe.functional.contraction import Contraction, Roles
    from gradprobe.layout import normalize_params

    rng = np.random.default_rng(0)
    shapes = [(3, 2), ()] if not batched else [(4, 3, 2), (4,)]
    out_layout, _, _ = normalize_params([np.zeros(s[1:] if batched else s) for s in shapes])
    cotangent = [rng.standard_normal(s) for s in out_layout.shapes]

    def outputs():
        arrays = [rng.standard_normal(s) for s in shapes]
        arrays[0].reshape(-1)[5] = np.inf  # row 0 (batched) or the whole value
        return arrays

    values = outputs()
    copies = [a.copy() for a in values]
    losses = [
        Contraction(lambda _x, v=v: v, {}, out_layout, cotangent, batched, Roles(), private=p)(
            np.zeros((4, 1)) if batched else None
        )
        for v, p in ((values, True), (copies, False))
    ]
    np.testing.assert_array_equal(losses[0], losses[1])
    assert np.isnan(losses[0]).any() and (not batched or np.isfinite(losses[0][1:]).all())
