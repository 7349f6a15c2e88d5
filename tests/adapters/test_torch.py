"""gradprobe.torch: a custom autograd.Function and an nn.Module checked against their backward."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradprobe  # noqa: E402
import gradprobe.torch as gt  # noqa: E402
from gradprobe import InvalidInputError, LossEvaluationError  # noqa: E402

from ..helpers import report_core  # noqa: E402

BAD = (2, 5)  # the entry of the input gradient the buggy backward gets wrong


def _layer_norm_parts(x, w, b):
    xc = x - x.mean(-1, keepdim=True)
    rstd = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + 1e-5)
    xhat = xc * rstd
    return xhat * w + b, xhat, rstd


def _layer_norm_backward(g, xhat, rstd, w, bug):
    gh = g * w
    gx = rstd * (gh - gh.mean(-1, keepdim=True) - xhat * (gh * xhat).mean(-1, keepdim=True))
    if bug:
        gx = gx.clone()
        gx[BAD] = gx[BAD] * 1.5  # one entry of the input gradient off by 50%
    return gx, (g * xhat).sum(0), g.sum(0)


class LayerNorm(torch.autograd.Function):
    """Layer norm with a hand-written backward (vmap-compatible: setup_context)."""

    generate_vmap_rule = True
    bug = False

    @staticmethod
    def forward(x, w, b):
        return _layer_norm_parts(x, w, b)[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b = inputs
        _, xhat, rstd = _layer_norm_parts(x, w, b)
        ctx.save_for_backward(xhat, rstd, w)

    @classmethod
    def backward(cls, ctx, g):
        xhat, rstd, w = ctx.saved_tensors
        return _layer_norm_backward(g, xhat, rstd, w, cls.bug)


class BuggyLayerNorm(LayerNorm):
    bug = True


class OldStyleLayerNorm(torch.autograd.Function):
    """The same in the old style (forward takes ctx): torch.func.vmap refuses it."""

    @staticmethod
    def forward(ctx, x, w, b):
        y, xhat, rstd = _layer_norm_parts(x, w, b)
        ctx.save_for_backward(xhat, rstd, w)
        return y

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, w = ctx.saved_tensors
        return _layer_norm_backward(g, xhat, rstd, w, False)


def layer_norm_inputs(dtype=torch.float64, rows=24, cols=32, seed=0):
    """768 input entries: more than the default sample, so probes and bisection run."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, dtype=dtype, generator=gen) * 2 + 0.5
    w = torch.randn(cols, dtype=dtype, generator=gen)
    b = torch.randn(cols, dtype=dtype, generator=gen)
    return [t.requires_grad_() for t in (x, w, b)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_correct_layer_norm_passes(dtype):
    report = gt.check(LayerNorm.apply, *layer_norm_inputs(dtype))
    assert report.passed, str(report)
    assert list(report.params) == ["input0", "input1", "input2"]
    assert report.params["input0"].shape == (24, 32)
    assert report.measured["vectorization"].startswith("torch.func.vmap")
    assert report.measured["executor"].startswith("batched")
    assert report.measured["framework"] == f"torch {torch.__version__}"


def test_gradcheck_raises_a_false_alarm_in_float32_where_gradprobe_does_not():
    inputs = layer_norm_inputs(torch.float32, 4, 8)
    with pytest.warns(UserWarning):  # gradcheck: "not a double precision" input
        assert not torch.autograd.gradcheck(LayerNorm.apply, inputs, raise_exception=False)
    assert gt.check(LayerNorm.apply, *inputs).passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("vectorize", [True, False])
def test_single_wrong_entry_is_found_and_localized(dtype, vectorize):
    report = gt.check(BuggyLayerNorm.apply, *layer_norm_inputs(dtype), vectorize=vectorize)
    assert not report.passed
    assert [p.name for p in report.failures] == ["input0"], str(report)
    assert report.params["input0"].bad_indices == (BAD,), str(report)


def test_a_random_cotangent_catches_what_a_cotangent_of_ones_hides():
    class Softmax(torch.autograd.Function):
        """Softmax whose backward returns zeros: right only for a cotangent of ones."""

        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return torch.softmax(x, -1)

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return torch.zeros_like(g)

    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ones = torch.ones(3, 6, dtype=torch.float64)
    _, vjp_of_ones = torch.autograd.functional.vjp(lambda v: torch.softmax(v, -1), x, ones)
    assert torch.allclose(vjp_of_ones, torch.zeros_like(x), atol=1e-12)  # zeros are right there
    report = gt.check(Softmax.apply, x)
    assert not report.passed
    assert report.params["input0"].diagnosis.kind == "zero"


def test_module_linear_tanh_checks_parameters_and_inputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh()).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    report = gt.check_module(model, x)
    assert report.passed, str(report)
    assert list(report.params) == ["0.weight", "0.bias", "input"]  # Sequential.forward(input)
    assert report.params["0.weight"].shape == (4, 5)


def test_module_with_a_wrong_backward_fails_on_its_input():
    class Norm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, 32, dtype=torch.float64))
            self.bias = torch.nn.Parameter(torch.zeros(32, dtype=torch.float64))

        def forward(self, x):
            return BuggyLayerNorm.apply(x, self.weight, self.bias)

    x = layer_norm_inputs()[0].detach()
    report = gt.check_module(Norm(), x)
    assert [p.name for p in report.failures] == ["x"]  # named after forward(self, x)
    assert report.params["x"].bad_indices == (BAD,)


def _state(tensors):
    return [
        (t.detach().clone(), t.requires_grad, t.grad, None if t.grad is None else t.grad.clone())
        for t in tensors
    ]


def _assert_same_state(tensors, saved):
    for t, (value, requires_grad, grad, grad_value) in zip(tensors, saved, strict=True):
        assert t.detach().numpy().tobytes() == value.numpy().tobytes()
        assert t.requires_grad == requires_grad
        assert t.grad is grad
        if grad is not None:
            assert t.grad.numpy().tobytes() == grad_value.numpy().tobytes()


@pytest.mark.parametrize("fn", [LayerNorm.apply, BuggyLayerNorm.apply])
def test_caller_tensors_untouched(fn):
    inputs = layer_norm_inputs()
    inputs[0].grad = torch.full_like(inputs[0], 7.0)  # an earlier backward's gradient
    constant = torch.ones(3)
    saved = _state([*inputs, constant])
    gt.check(fn, *inputs, samples=16)
    _assert_same_state([*inputs, constant], saved)


def test_caller_tensors_untouched_when_fn_writes_into_them_or_raises():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, dtype=torch.float64)
    saved = _state([x, y])

    def writes(a, b):
        b.add_(1.0)  # a constant input written in place: fn only ever sees a copy
        return a * b

    with pytest.raises(gradprobe.NondeterministicLossError):  # each call sees a new b
        gt.check(writes, x, y, samples=4)

    def raises(a, b):
        raise RuntimeError("boom")

    with pytest.raises(LossEvaluationError, match="boom"):
        gt.check(raises, x, y)
    _assert_same_state([x, y], saved)


def test_module_parameters_buffers_and_grads_restored():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Tanh()
    ).double()
    model.train()  # batch statistics, and running statistics updated by every forward
    model[0].weight.grad = torch.ones(3, 4, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    params = dict(model.named_parameters())
    saved = _state(params.values())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    report = gt.check_module(model, x)
    assert report.passed, str(report)
    assert dict(model.named_parameters()) == params  # the same Parameter objects
    _assert_same_state(params.values(), saved)
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name


def test_fallback_when_vmap_raises():
    def with_item(x, w, b):
        scale = 1.0 + 0.0 * x.abs().max().item()  # .item() is refused under vmap
        return LayerNorm.apply(x, w, b) * scale

    report = gt.check(with_item, *layer_norm_inputs())
    assert report.passed, str(report)
    # vmap maps w or b alone (x.item() is then unmapped), never x: found in the check's calls.
    assert report.measured["vectorization"].endswith(
        "one call per copy over every input at once and 'x'"
    ), report.measured["vectorization"]
    assert report.warnings[0].startswith("vectorize: torch.func.vmap could not be used")
    assert ".item()" in report.warnings[0]
    assert report.params["x"].passed and report.params["w"].passed
    with pytest.raises(InvalidInputError, match="vectorize=True"):
        gt.check(with_item, *layer_norm_inputs(), vectorize=True)


def test_old_style_function_falls_back_and_still_finds_nothing_wrong():
    report = gt.check(OldStyleLayerNorm.apply, *layer_norm_inputs())
    assert report.passed, str(report)
    assert "setup_context" in report.warnings[0]
    off = gt.check(OldStyleLayerNorm.apply, *layer_norm_inputs(), vectorize=False)
    assert off.measured["vectorization"].startswith("off") and not any(
        "vectorize" in w for w in off.warnings
    )


def test_which_inputs_are_checked_and_output_containers():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, dtype=torch.float64)  # does not require grad: a constant
    idx = torch.tensor([2, 0])

    def fn(a, b, index, scale):
        z = torch.tanh(a * b) * scale
        return {"z": z, "rows": (z[index], index), "note": "text"}

    report = gt.check(fn, x, y, idx, 2.0)
    assert report.passed and list(report.params) == ["a"]  # fn's argument names
    both = gt.check(fn, x.detach(), y, idx, 2.0)  # none requires grad: every float tensor
    assert both.passed and list(both.params) == ["a", "b"]


def test_float32_with_promote_runs_in_float64():
    seen = []

    def fn(x, w, b):
        seen.append(x.dtype)
        return LayerNorm.apply(x, w, b)

    report = gt.check(fn, *layer_norm_inputs(torch.float32, 4, 8), promote=True, samples=8)
    assert report.passed and set(seen) == {torch.float32, torch.float64}
    assert report.params["x"].rtol == pytest.approx(1e-5)


def test_same_seed_same_report():
    one = gt.check(BuggyLayerNorm.apply, *layer_norm_inputs(), seed=3)
    two = gt.check(BuggyLayerNorm.apply, *layer_norm_inputs(), seed=3)
    assert report_core(one) == report_core(two)
    assert one.settings["cotangent"].startswith("standard normal, seed 3")
    assert gradprobe.Report.from_dict(one.to_dict()).settings == one.settings


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_tensors_stay_on_their_device(dtype):
    seen = set()

    def fn(x, w, b):
        seen.add(x.device.type)
        return LayerNorm.apply(x, w, b)

    inputs = [t.detach().cuda().requires_grad_() for t in layer_norm_inputs(dtype)]
    assert gt.check(fn, *inputs).passed
    assert seen == {"cuda"}
    buggy = gt.check(BuggyLayerNorm.apply, *inputs)
    assert buggy.params["input0"].bad_indices == (BAD,)
    assert buggy.measured["device"].startswith("cuda")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batched": True}, "batched: the adapter sets it"),
        ({"method": "complex-step"}, "complex-step"),
        ({"vectorize": "yes"}, "vectorize: expected True, False or 'auto'"),
        ({"samples": -1}, "samples"),
        ({"seed": -2}, "seed"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        gt.check(LayerNorm.apply, *layer_norm_inputs(), **kwargs)


def test_bad_inputs():
    with pytest.raises(InvalidInputError, match=r"at least one floating-point torch\.Tensor"):
        gt.check(torch.sin, torch.arange(3))
    with pytest.raises(InvalidInputError, match="bfloat16"):
        gt.check(torch.sin, torch.ones(3, dtype=torch.bfloat16))
    with pytest.raises(InvalidInputError, match="fn's output"):
        gt.check(lambda a: "not a tensor", torch.ones(3))
    with pytest.raises(InvalidInputError, match=r"module: expected a torch\.nn\.Module"):
        gt.check_module(torch.sin, torch.ones(3))
    with pytest.raises(InvalidInputError, match="fn: expected a callable"):
        gt.check(3, torch.ones(3))


@pytest.mark.parametrize(
    "params",
    [
        torch.ones(3, dtype=torch.float64),
        {"w": torch.ones(3, dtype=torch.float64, requires_grad=True)},  # was a bare RuntimeError
        [torch.nn.Parameter(torch.ones(2))],
    ],
)
def test_numpy_check_points_tensors_to_the_adapter(params):
    with pytest.raises(InvalidInputError, match=r"torch\.Tensor.*gradprobe\.torch\.check"):
        gradprobe.check(lambda p: 0.0, lambda p: p, params)


def test_numpy_check_rejects_a_tensor_gradient():
    params = {"w": np.ones(3)}
    with pytest.raises(InvalidInputError, match=r"gradient of 'w'.*gradprobe\.torch\.check"):
        gradprobe.check(lambda p: float(p["w"].sum()), {"w": torch.ones(3)}, params)


def test_the_same_report_in_this_process_and_with_workers():
    """Stacked calls (the noise estimate's points, every input's first blocks) run in this
    process whatever n_jobs: linear's vmap over every input at once sums in another order than
    over one (a different report if only one placement stacked them)."""
    g = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(3, 8, dtype=torch.float64, generator=g, requires_grad=True),
        torch.randn(4, 8, dtype=torch.float64, generator=g, requires_grad=True),
        torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True),
    ]
    here = gt.check(torch.nn.functional.linear, *inputs, n_jobs=1)
    workers = gt.check(torch.nn.functional.linear, *inputs, n_jobs=2)
    drop = ("n_jobs", "executor", "vectorization")
    assert report_core(here, drop=drop) == report_core(workers, drop=drop)
    assert here.passed and here.n_evaluations == workers.n_evaluations
