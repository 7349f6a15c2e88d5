"""Check a PyTorch function against its autograd backward: :func:`check`, :func:`check_module`.

The checked scalar is ``loss(x) = sum(G * fn(x))`` with ``G`` a seeded standard-normal
cotangent; its analytic gradient is the vector-Jacobian product
``torch.autograd.grad(fn(x), x, G)`` (a custom ``autograd.Function``'s backward, or autograd's)
and its numeric one comes from :func:`gradprobe.check`'s finite differences, evaluated by
calling ``fn`` on tensors of the inputs' dtype and device under ``torch.no_grad()``. With
``vectorize`` (default ``"auto"``) the perturbed copies go through ``torch.func.vmap``, B per
call. The caller's tensors are never written to, their ``requires_grad`` and ``.grad`` are left
alone, and a module's parameters are swapped in by ``torch.func.functional_call``, not assigned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

try:
    import torch
    from torch.func import functional_call, vmap
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "gradprobe.torch needs PyTorch: pip install 'gradprobe[torch]' (or torch itself).",
        name="torch",
    ) from exc

from .adapter import (
    adapter_options,
    cotangents,
    mapped_inputs,
    run_check,
    short_error,
    validate_vectorize,
)
from .errors import InvalidInputError, LossEvaluationError, raised_at_the_call
from .layout import validate_callable
from .report.model import Report

__all__ = ["check", "check_module"]

#: What the report's settings call the vectorized path.
VMAP_NAME = "torch.func.vmap"


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
        ``fn(*inputs)`` returning a tensor, or a tuple, list or dict of tensors (entries that
        are not floating-point tensors are ignored).
    *inputs : tensors and other arguments
        Passed to ``fn`` in order. The floating-point tensors that require grad are checked
        (all floating-point tensors when none does), reported as ``input0``, ``input1``... by
        position; the other arguments are passed as they are (tensors as private copies).
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
        One entry per checked input; ``report.settings`` records the framework, device,
        cotangent and vectorization.

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
    options = adapter_options({"seed": seed, **check_options})
    checked = _checked_positions(inputs)
    args = [_private(a) for a in inputs]
    names = [f"input{i}" for i in checked]

    def call(*xs: torch.Tensor) -> Any:
        full = list(args)
        for i, x in zip(checked, xs, strict=True):
            full[i] = x
        return fn(*full)

    adapted = _TorchFunction(call, names, [inputs[i] for i in checked], seed)
    return run_check(adapted, vectorize, VMAP_NAME, options, adapted.settings(seed))


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
    input (``input0``...). Parameters are swapped in by ``torch.func.functional_call`` with
    private copies of the buffers, so the module's parameters, buffers (batch-norm running
    statistics) and ``.grad`` are unchanged afterwards. Options as for :func:`check`.
    """
    if not isinstance(module, torch.nn.Module):
        raise InvalidInputError(
            f"module: expected a torch.nn.Module, found {type(module).__name__}. For a plain "
            "function use gradprobe.torch.check(fn, *inputs)."
        )
    vectorize = validate_vectorize(vectorize)
    options = adapter_options({"seed": seed, **check_options})
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
    checked = [i for i, a in enumerate(inputs) if _is_float_tensor(a)]
    args = [_private(a) for a in inputs]
    names = [n for n, _ in trainable] + [f"input{i}" for i in checked]
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
        for i, x in zip(checked, xs[k:], strict=True):
            full[i] = x
        return functional_call(module, state, tuple(full))

    values = [p for _, p in trainable] + [inputs[i] for i in checked]
    adapted = _TorchFunction(call, names, values, seed)
    return run_check(adapted, vectorize, VMAP_NAME, options, adapted.settings(seed))


def _is_float_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _checked_positions(inputs: Sequence[Any]) -> list[int]:
    """Floating tensors that require grad, else every floating tensor."""
    floats = [i for i, a in enumerate(inputs) if _is_float_tensor(a)]
    wanted = [i for i in floats if inputs[i].requires_grad]
    if not floats:
        found = [type(a).__name__ for a in inputs]
        raise InvalidInputError(
            f"inputs: expected at least one floating-point torch.Tensor to check, found "
            f"{found}. Pass the tensors fn differentiates (e.g. torch.randn(4, 8, "
            "dtype=torch.float64))."
        )
    return wanted or floats


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
    return tensor.detach().to("cpu", copy=True).resolve_conj().resolve_neg().numpy()


def _float_leaves(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors of ``fn``'s output (a tensor, tuple, list or dict), in order."""
    if isinstance(out, torch.Tensor):
        if out.is_complex():
            raise InvalidInputError(
                f"fn's output: expected real tensors, found dtype {out.dtype}. Return the real "
                "and imaginary parts (torch.view_as_real) to check a complex function."
            )
        return [out] if out.is_floating_point() else []
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _float_leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _float_leaves(v)]
    return []


def _reduction_device(leaf: torch.Tensor) -> torch.device:
    # The weighted sum runs in float64, which Apple's MPS lacks: reduce those on the CPU.
    return torch.device("cpu") if leaf.device.type == "mps" else leaf.device


class _TorchFunction:
    """``fn`` of the checked tensors as gradprobe sees it: a loss over numpy copies, its vmapped
    form, and autograd's vector-Jacobian product (see :class:`~gradprobe.adapter.AdaptedFunction`).
    """

    def __init__(
        self,
        call: Callable[..., Any],
        names: Sequence[str],
        tensors: Sequence[torch.Tensor],
        seed: int,
    ) -> None:
        self.call, self.names = call, list(names)
        self.warnings: list[str] = []
        self.devices = [t.device for t in tensors]
        self.base = {n: _as_numpy(n, t) for n, t in zip(self.names, tensors, strict=True)}
        try:
            with torch.no_grad():
                # Copies: a function that writes into its inputs must not change the base.
                leaves = _float_leaves(
                    call(*(self._tensor(p, a.copy()) for p, a in self._items(self.base)))
                )
        except (InvalidInputError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise LossEvaluationError(
                f"fn raised {short_error(exc)} at the inputs given (before any perturbation)."
            ) from exc
        if not leaves:
            raise InvalidInputError(
                "fn's output: expected a floating-point tensor (or a tuple, list or dict of "
                "them), found none; nothing to check."
            )
        # G rounded to each output's dtype, so autograd's VJP and the loss use the same values.
        self.cotangent = [
            torch.from_numpy(g).to(leaf.dtype).to(_reduction_device(leaf), torch.float64)
            for g, leaf in zip(
                cotangents(seed, [tuple(t.shape) for t in leaves]), leaves, strict=True
            )
        ]
        self.out_dtypes = [leaf.dtype for leaf in leaves]
        self.magnitude = float(
            sum(
                (g * leaf.to(g.device, torch.float64)).abs().sum()
                for g, leaf in zip(self.cotangent, leaves, strict=True)
            )
        )
        self.eps = max(torch.finfo(dt).eps for dt in self.out_dtypes)

    def settings(self, seed: int) -> dict[str, Any]:
        devices = sorted({str(d) for d in self.devices})
        return {
            "framework": f"torch {torch.__version__}",
            "device": devices[0] if len(devices) == 1 else devices,
            "cotangent": f"standard normal, seed {seed}: loss = sum(G * fn(x))",
        }

    def _items(self, params: Mapping[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
        return [(p, params[n]) for p, n in enumerate(self.names)]

    def _tensor(self, p: int, array: np.ndarray) -> torch.Tensor:
        """``array`` on input ``p``'s device, in the array's dtype (float64 under promote)."""
        if not array.flags.writeable:
            array = array.copy()  # torch.from_numpy warns on read-only memory
        return torch.from_numpy(array).to(self.devices[p])

    def _weighted_sum(self, out: Any) -> torch.Tensor:
        leaves = _float_leaves(out)
        if len(leaves) != len(self.cotangent):
            raise InvalidInputError(
                f"fn's output: expected {len(self.cotangent)} floating-point tensors (as at the "
                f"inputs given), found {len(leaves)}; the output's structure must not depend "
                "on the input values."
            )
        total = torch.zeros((), dtype=torch.float64, device=self.cotangent[0].device)
        for g, leaf in zip(self.cotangent, leaves, strict=True):
            if tuple(leaf.shape) != tuple(g.shape):
                raise InvalidInputError(
                    f"fn's output: expected shape {tuple(g.shape)} (as at the inputs given), "
                    f"found {tuple(leaf.shape)}."
                )
            total = total + (g * leaf.to(g.device, torch.float64)).sum().to(total.device)
        return total

    def loss(self, params: Mapping[str, np.ndarray]) -> float:
        xs = [self._tensor(p, a) for p, a in self._items(params)]
        with torch.no_grad():
            return float(self._weighted_sum(self.call(*xs)))

    def make_batched_loss(self) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
        def scalar(*xs: torch.Tensor) -> torch.Tensor:
            return self._weighted_sum(self.call(*xs))

        def batched(params: Mapping[str, np.ndarray]) -> np.ndarray:
            arrays = [a for _, a in self._items(params)]
            mapped = mapped_inputs(arrays)
            xs = [
                self._tensor(p, a if m else a[0])
                for p, (a, m) in enumerate(zip(arrays, mapped, strict=True))
            ]
            in_dims = tuple(0 if m else None for m in mapped)
            with torch.no_grad():
                return vmap(scalar, in_dims=in_dims)(*xs).cpu().numpy()

        return batched

    def grad(self, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        xs = [self._tensor(p, a).requires_grad_(True) for p, a in self._items(params)]
        with torch.enable_grad():
            leaves = _float_leaves(self.call(*xs))
            pairs = [
                (leaf, g.to(leaf.device, leaf.dtype))
                for leaf, g in zip(leaves, self.cotangent, strict=True)
                if leaf.requires_grad
            ]
            grads: Sequence[torch.Tensor | None] = [None] * len(xs)
            if pairs:
                grads = torch.autograd.grad(
                    [leaf for leaf, _ in pairs],
                    xs,
                    grad_outputs=[g for _, g in pairs],
                    allow_unused=True,
                )
        # An input the outputs do not depend on (or whose path autograd lost) has gradient 0.
        return {
            n: np.zeros_like(params[n]) if g is None else g.detach().cpu().numpy()
            for n, g in zip(self.names, grads, strict=True)
        }
