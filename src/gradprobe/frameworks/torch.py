"""Check a PyTorch function against its autograd backward: :func:`check`, :func:`check_module`.

Only what is PyTorch's lives here: tensor conversion, ``torch.func.vmap`` and
``torch.autograd.grad``. The reduction (``loss(x) = sum(G * fn(x))`` with a seeded
standard-normal cotangent ``G``, its options, settings and partial reports) is
:mod:`gradprobe.functional.reduction`'s, shared with :func:`gradprobe.check_vjp`.

``fn`` is evaluated on tensors of the inputs' dtype and device under ``torch.no_grad()`` for
the finite differences, and once at the inputs with autograd on, which gives both the value
handed to the check and which outputs are differentiable. The caller's tensors are never
written to, their ``requires_grad`` and ``.grad`` are left alone, and a module's parameters
are swapped in by ``torch.func.functional_call``, not assigned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

try:
    import torch
    import torch.utils._pytree as pytree
    from torch.func import functional_call, vmap
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "gradprobe.torch needs PyTorch: pip install 'gradprobe[torch]' (or torch itself).",
        name="torch",
    ) from exc

from ..errors import InvalidInputError, LossEvaluationError, raised_at_the_call
from ..functional.adapted import (
    Adapted,
    check_adapted,
    framework_roles,
    ours,
    short_error,
    validate_vectorize,
)
from ..layout import validate_callable
from ..report.model import Report
from ..tree import argument_names
from .inputs import Checked, checked_leaves, hold_fixed, leaf_names

#: What the report's settings call the vectorized path.
VMAP_NAME = "torch.func.vmap"
ROLES = framework_roles(
    "gradprobe.torch.check", "fn's backward", "torch.autograd.grad(fn(inputs), inputs, G)"
)


@raised_at_the_call
def check(
    fn: Callable[..., Any],
    *inputs: Any,
    vectorize: bool | str = "auto",
    seed: int = 0,
    **check_options: Any,
) -> Report:
    """Check ``fn``'s backward pass (autograd's, or a custom ``autograd.Function``'s) against
    finite differences of ``sum(G * fn(*inputs))`` with a seeded random cotangent ``G``.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs)`` returning a tensor, or a tuple, list or dict of tensors. Only the
        differentiable outputs enter the check (floating-point tensors that require grad);
        integer outputs and those autograd marks non-differentiable are left out and listed.
    *inputs : tensors, lists of tensors and other arguments
        Passed to ``fn`` in order. The floating-point tensors that require grad are checked
        (all floating-point tensors when none does), at the top level or inside lists and
        tuples, reported by ``fn``'s argument names (``def f(x, w)``: ``x``, ``w[2]``...),
        or as ``input0``, ``input1[2]``... by position where it has none (``*args``, a
        builtin); the other arguments (integer and bool tensors included) are passed as they
        are (tensors as private copies). Empty tensors and non-finite entries are held fixed
        and listed.
    vectorize : True, False or "auto"
        Evaluate the perturbed copies with ``torch.func.vmap``, B per call. ``"auto"`` tries
        it once at the inputs and falls back to one call per entry, with a warning, when vmap
        cannot run ``fn`` (``.item()``, a custom Function without ``setup_context`` and
        ``generate_vmap_rule``); ``True`` raises instead.
    seed : int
        Seeds the cotangent ``G`` and gradprobe's sample and probes.
    **check_options
        Any option of :func:`gradprobe.check` except ``batched`` (``samples``, ``rtol``,
        ``probes``, ``promote``, ``timeout``...).

    Returns
    -------
    Report
        One entry per checked input; ``report.settings`` records the cotangent and
        ``vectorize`` as asked, ``report.measured`` the framework, device,
        the ``vectorization`` that ran and what was ``not_checked``.

    Raises
    ------
    InvalidInputError
        No floating-point tensor to check, bfloat16 inputs, an output that is not tensors, or a
        bad option.
    LossEvaluationError
        ``fn`` raised (at the inputs given, or at a perturbed entry, named).
    """
    validate_callable("fn", fn)
    vectorize = validate_vectorize(vectorize)
    leaves, spec = pytree.tree_flatten(list(inputs))
    prefixes = argument_names(fn, len(inputs), "input")  # def f(x, w): "x", "w"
    names = leaf_names(inputs, pytree.tree_flatten, prefixes)
    checked = checked_leaves(
        leaves, names, _is_float_tensor, _requires_grad, "torch.Tensor"
    )
    args = [_private(a) for a in leaves]
    # Every input a leaf (no list of tensors among them): fn takes the leaves as they are.
    flat = len(leaves) == len(inputs) and spec == pytree.tree_structure(list(range(len(leaves))))

    def call(*xs: torch.Tensor) -> Any:
        full = list(args)
        for i, x in zip(checked.positions, xs, strict=True):
            full[i] = x
        return fn(*full) if flat else fn(*pytree.tree_unflatten(full, spec))

    values = [leaves[i] for i in checked.positions]
    adapted = _adapt(call, checked, values)
    return check_adapted(adapted, vectorize, VMAP_NAME, {"seed": seed, **check_options}, ROLES)


@raised_at_the_call
def check_module(
    module: torch.nn.Module,
    *inputs: Any,
    vectorize: bool | str = "auto",
    seed: int = 0,
    **check_options: Any,
) -> Report:
    """Check an ``nn.Module``'s backward pass with respect to its parameters and inputs.

    Like :func:`check` with ``fn = module`` (its ``forward``): every parameter that requires
    grad is checked under its ``named_parameters()`` name, then every floating-point tensor
    input, named after ``forward``'s arguments (``input0``... where it has no names, or they
    clash with a parameter's). Parameters are swapped in by ``torch.func.functional_call`` with
    private copies of the buffers, so the module's parameters, buffers (batch-norm running
    statistics) and ``.grad`` are unchanged afterwards. Options as for :func:`check`.
    """
    if not isinstance(module, torch.nn.Module):
        raise InvalidInputError(
            f"module: expected a torch.nn.Module, found {type(module).__name__}. For a plain "
            "function use gradprobe.torch.check(fn, *inputs)."
        )
    vectorize = validate_vectorize(vectorize)
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
    positions = [i for i, a in enumerate(inputs) if _is_float_tensor(a)]
    args = [_private(a) for a in inputs]
    taken = [n for n, _ in trainable]
    prefixes = argument_names(module.forward, len(inputs), "input", taken=taken)
    names = taken + [prefixes[i] for i in positions]
    if not names:
        raise InvalidInputError(
            "module: expected parameters that require grad or floating-point tensor inputs, "
            "found neither; nothing to check."
        )
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise InvalidInputError(
            f"module: parameter names {clash} clash with the input names; rename them."
        )
    k = len(trainable)

    def call(*xs: torch.Tensor) -> Any:
        state = {**frozen, **buffers, **{n: x for (n, _), x in zip(trainable, xs[:k], strict=True)}}
        full = list(args)
        for i, x in zip(positions, xs[k:], strict=True):
            full[i] = x
        return functional_call(module, state, tuple(full))

    values = [p for _, p in trainable] + [inputs[i] for i in positions]
    adapted = _adapt(call, Checked(list(range(len(names))), names), values)
    return check_adapted(adapted, vectorize, VMAP_NAME, {"seed": seed, **check_options}, ROLES)


def _is_float_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _requires_grad(value: Any) -> bool:
    return bool(value.requires_grad)


def _private(value: Any) -> Any:
    """A tensor argument as a detached copy (``fn`` never sees the caller's tensor)."""
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _as_numpy(name: str, tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        raise InvalidInputError(
            f"input {name!r}: expected float16, float32 or float64, found bfloat16 (numpy has "
            "no bfloat16, so the perturbed values could not be represented). Check the "
            "function in float32 (.float()) or float64."
        )
    if tensor.is_sparse or tensor.layout != torch.strided:
        raise InvalidInputError(
            f"input {name!r}: expected a dense (strided) tensor, found layout {tensor.layout}. "
            "Pass tensor.to_dense()."
        )
    return _numpy(tensor)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A private numpy copy (views, conjugate and negative bits resolved; a ZeroTensor, which
    autograd returns for some gradients, as zeros)."""
    if tensor._is_zerotensor():
        return np.zeros(tuple(tensor.shape), dtype=torch.empty(0, dtype=tensor.dtype).numpy().dtype)
    if tensor.device.type != "cpu" or tensor.is_conj() or tensor.is_neg():
        tensor = tensor.detach().to("cpu").resolve_conj().resolve_neg()
    return np.array(tensor.detach().numpy(), copy=True)


def _real_view(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t.resolve_conj()) if t.is_complex() else t


def _tensor_leaves(out: Any) -> list[tuple[str, Any]]:
    """The leaves of ``fn``'s output (a tensor, or a tuple, list or dict of them) with their
    paths, in order."""
    leaves, _ = pytree.tree_flatten_with_path(out)
    return [(pytree.keystr(path) or "output", leaf) for path, leaf in leaves]


def _differentiable(out: Any) -> tuple[list[int], list[str]]:
    """Which leaves of ``out`` (computed with autograd on) enter the reduction, and notes on
    the others."""
    keep, notes = [], []
    for k, (path, leaf) in enumerate(_tensor_leaves(out)):
        if not isinstance(leaf, torch.Tensor):
            continue
        if not (leaf.is_floating_point() or leaf.is_complex()):
            notes.append(f"output {path} ({leaf.dtype}: not differentiable)")
        elif not leaf.requires_grad:
            notes.append(
                f"output {path} (no grad_fn: autograd marks it non-differentiable, or it does "
                "not depend on the checked inputs)"
            )
        elif leaf.numel() == 0:
            notes.append(f"output {path} (empty, shape {tuple(leaf.shape)})")
        else:
            keep.append(k)
    return keep, notes


def _adapt(call: Callable[..., Any], checked: Checked, values: Sequence[torch.Tensor]) -> Adapted:
    """``call`` of the checked tensors over numpy arrays: the value at the inputs (one forward,
    autograd on), the forward, vmap and autograd's vector-Jacobian product."""
    # None for a CPU tensor: torch.from_numpy already gives one there.
    devices = [None if t.device.type == "cpu" else t.device for t in values]
    with ours("copying the inputs to numpy"):
        held = hold_fixed({n: _as_numpy(n, t) for n, t in zip(checked.names, values, strict=True)})
    live = list(held.base)

    def tensors(
        params: Mapping[str, np.ndarray], grad: bool = False, batched: bool = False
    ) -> tuple[list[torch.Tensor], list[bool]]:
        """Every checked input as a tensor (the held entries at their values), and which
        are mapped by vmap (``batched``)."""
        with ours("converting the inputs to tensors"):
            arrays, mapped = held.arrays(params, batched)
            xs = [
                torch.from_numpy(np.array(a, copy=True))  # a 0-d input too
                for a in arrays
            ]
            xs = [x if d is None else x.to(d) for x, d in zip(xs, devices, strict=True)]
        if grad:
            for n, x in zip(checked.names, xs, strict=True):
                x.requires_grad_(n in held.base)
        return xs, mapped

    xs = tensors(held.base, grad=True)[0]
    try:
        with torch.enable_grad():
            out = call(*xs)
    except (InvalidInputError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise LossEvaluationError(
            f"fn raised {short_error(exc)} at the inputs given (before any perturbation)."
        ) from exc
    keep, notes = _differentiable(out)
    if not keep:
        raise InvalidInputError(
            "fn's output: expected a floating-point tensor that depends on the checked inputs "
            "(or a tuple, list or dict of them), found none"
            + (f" ({'; '.join(notes)})" if notes else "")
            + "; nothing to check."
        )
    count = len(pytree.tree_leaves(out))  # as selected() counts them

    def selected(out: Any) -> list[torch.Tensor]:
        # Per evaluation: without the paths (~5x faster), a lone tensor without pytree.
        leaves = [out] if type(out) is torch.Tensor else pytree.tree_leaves(out)
        if len(leaves) != count:
            raise InvalidInputError(
                f"fn's output: expected {count} leaves (as at the inputs given), found "
                f"{len(leaves)}; the output's structure must not depend on the input values."
            )
        # A complex output enters as its real and imaginary parts (the cotangent is real).
        return [_real_view(leaves[k]) for k in keep]

    def outputs(leaves: Sequence[torch.Tensor]) -> list[np.ndarray]:
        with ours("converting fn's outputs to numpy"):
            return [_numpy(t) for t in leaves]

    def forward(params: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        xs = tensors(params)[0]
        with torch.no_grad():
            return outputs(selected(call(*xs)))

    def make_batched() -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
        def batched(params: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            if all(a.shape[0] == 1 for a in params.values()):
                # One copy (the pre-flight's and noise estimate's points): the direct call,
                # as for the value at the inputs; vmap costs ~1 ms a call on its own.
                return [o[np.newaxis] for o in forward({n: a[0] for n, a in params.items()})]
            xs, mapped = tensors(params, batched=True)
            in_dims = tuple(0 if m else None for m in mapped)
            with torch.no_grad():
                return outputs(vmap(lambda *x: selected(call(*x)), in_dims=in_dims)(*xs))

        return batched

    def backward(params: Mapping[str, np.ndarray], cotangent: list[np.ndarray]) -> dict[str, Any]:
        xs = tensors(params, grad=True)[0]
        with torch.enable_grad():
            leaves = selected(call(*xs))
            with ours("handing the cotangent to torch.autograd.grad"):
                pairs = [
                    (leaf, torch.from_numpy(np.array(g, copy=True)).to(leaf.device, leaf.dtype))
                    for leaf, g in zip(leaves, cotangent, strict=True)
                    if leaf.requires_grad
                ]
            wanted = [x for n, x in zip(checked.names, xs, strict=True) if n in held.base]
            grads: Sequence[torch.Tensor | None] = [None] * len(wanted)
            if pairs:
                grads = torch.autograd.grad(
                    [leaf for leaf, _ in pairs],
                    wanted,
                    grad_outputs=[g for _, g in pairs],
                    allow_unused=True,
                )
        # An input the outputs do not depend on (or whose path autograd lost) has gradient 0;
        # so has a ZeroTensor (autograd's zero gradient of sgn, for one).
        with ours("converting the gradients to numpy"):
            return held.gradient(
                {
                    n: np.zeros_like(params[n]) if g is None else _numpy(g)
                    for n, g in zip(live, grads, strict=True)
                }
            )

    with ours("reading fn's outputs at the inputs given"):
        value = [_numpy(t) for t in selected(out)]
    names = sorted({str(t.device) for t in values})
    return Adapted(
        base=held.base,
        value=value,
        forward=forward,
        backward=backward,
        make_batched=make_batched,
        settings={
            "framework": f"torch {torch.__version__}",
            "device": names[0] if len(names) == 1 else names,
        },
        not_checked=[*held.notes, *notes],
        stacks_points=True,
    )
