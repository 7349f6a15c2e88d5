"""The input and output kinds real tensors come in (torch's OpInfo samples, issue 21): each is
checked, or held fixed and listed, never refused while something is left to check."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradprobe  # noqa: E402
import gradprobe.torch as gt  # noqa: E402

F64 = torch.float64


def _t(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=F64, generator=g, requires_grad=True)


def test_zero_dim_tensors_are_checked():
    report = gt.check(torch.mul, _t(), _t(seed=1))
    assert report.passed and list(report.params) == ["input0", "input1"]
    assert gt.check(torch.add, _t(3, 2), _t()).passed


def test_inputs_are_named_after_fns_arguments():
    report = gt.check(lambda x, weight: torch.tanh(x * weight), _t(3), _t(3, seed=1))
    assert report.passed and list(report.params) == ["x", "weight"]
    # No names to give (*args, a builtin): by position.
    assert list(gt.check(lambda *xs: xs[0] * xs[1], _t(2), _t(2)).params) == ["input0", "input1"]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (torch.arange(3), r"found i: Tensor of dtype torch\.int64\."),
        (torch.ones(3, dtype=torch.bool), r"found i: Tensor of dtype torch\.bool\."),
        (torch.ones(3, dtype=torch.complex128), r"torch\.complex128.*torch\.view_as_real"),
    ],
)
def test_a_refusal_names_each_inputs_dtype(value, match):
    with pytest.raises(gradprobe.InvalidInputError, match=match):
        gt.check(lambda i: i.double() * 2, value)


def test_an_empty_input_among_others_is_listed_not_refused():
    report = gt.check(lambda a, b: torch.cat([a, b.reshape(-1)]), _t(4), _t(0, 5))
    assert report.passed and list(report.params) == ["a"]
    assert any("b (empty" in n for n in report.measured["not_checked"])
    with pytest.raises(gradprobe.InvalidInputError, match="nothing to check"):
        gt.check(torch.sin, _t(0, 3))


def test_non_finite_entries_are_held_fixed_and_listed():
    x = _t(5)
    mask = torch.tensor([0.0, -float("inf"), 0.0, 0.0, -float("inf")], dtype=F64)
    report = gt.check(lambda a, m: torch.softmax(a + m, 0), x, mask.requires_grad_())
    assert report.passed
    assert any("2 non-finite entries held fixed" in n for n in report.measured["not_checked"])


def test_tensor_lists_views_and_integer_inputs():
    base = _t(4, 6)
    view = base.t()[1:]  # a non-contiguous view
    index = torch.tensor([2, 0, 1])
    report = gt.check(lambda xs, i: torch.stack(xs)[:, i].sin(), [view, _t(5, 4)], index)
    assert report.passed and list(report.params) == ["xs[0]", "xs[1]"]


def test_zerotensor_gradients_read_as_zeros():
    assert gt.check(torch.sgn, _t(6)).passed


def test_only_differentiable_outputs_enter_the_reduction():
    x, w = _t(3, 4), _t(4)
    report = gt.check(lambda a, b: torch.native_layer_norm(a, [4], b, None, 1e-5), x, w)
    assert report.passed, str(report)
    notes = report.measured["not_checked"]
    assert sum("no grad_fn" in n for n in notes) == 2  # the saved mean and rstd
    ints = gt.check(lambda a: (a.sin(), a.argmax()), _t(5))
    assert ints.passed and any("int64" in n for n in ints.measured["not_checked"])


def test_a_planted_bug_is_still_found_on_a_zero_dim_input():
    class Mul(torch.autograd.Function):
        @staticmethod
        def forward(a, b):
            return a * b

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            return g * b, g * a * 1.01  # the second input's gradient 1% off

    report = gt.check(Mul.apply, _t(4), _t(seed=2))
    assert [p.name for p in report.failures] == ["input1"]


def test_an_error_in_gradprobes_own_conversion_is_not_blamed_on_fn(monkeypatch):
    from gradprobe.frameworks import torch as adapter

    def broken(tensor):
        raise RuntimeError("conversion broke")

    monkeypatch.setattr(adapter, "_numpy", broken)
    with pytest.raises(gradprobe.GradCheckError, match="internal error in gradprobe") as info:
        gt.check(torch.sin, _t(3))
    assert not isinstance(info.value, gradprobe.LossEvaluationError)
    assert "not an error in the function" in str(info.value)


def test_jax_integer_and_stop_gradient_outputs_are_left_out():
    jax = pytest.importorskip("jax")
    import gradprobe.jax as gj

    jnp = jax.numpy
    x = np.linspace(-1, 1, 6, dtype=np.float32)
    report = gj.check(lambda a: (jnp.sin(a), jnp.argmax(a), jax.lax.stop_gradient(a) * 2), x)
    assert report.passed, str(report)
    notes = report.measured["not_checked"]
    assert any("not differentiable" in n for n in notes)
    assert any("stop_gradient" in n for n in notes)
    assert gj.check(lambda a: a * jnp.float32(2), np.asarray(np.float32(1.5))).passed  # 0-d
