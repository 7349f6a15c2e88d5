"""torch's OpInfo sample inputs, fed to a checker the way ``test_ops.py``'s TestGradients does.

TestGradients passes gradcheck only the tensors that require grad (tensor lists splatted),
and a function that puts them back into the sample's input, args and kwargs, calls
``op.gradcheck_wrapper(op.get_op(), ...)`` and applies ``sample.output_process_fn_grad``.
The peer suite (test_peer_torch.py) builds the same pair for gradprobe.torch.check.

The subset is fixed and deterministic: every op of ``op_db`` that supports autograd in
float64 on the CPU, in name order, its first sample with between 1 and ``MAX_ENTRIES``
differentiable entries (the largest samples dominate the run time and add no new kind of
input), and its first sample whose differentiable inputs are all empty, if it has one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import torch

MAX_ENTRIES = 150


@dataclass(frozen=True)
class Sample:
    """One op_db sample; :meth:`build` gives the ``fn, inputs`` TestGradients hands gradcheck."""

    name: str
    op: Any
    sample: Any

    @property
    def entries(self) -> int:
        return sum(t.numel() for t in _sample_leaves(self.sample))

    def build(self, dtype: torch.dtype = torch.float64) -> tuple[Callable[..., Any], tuple]:
        """``fn, inputs`` with every floating-point tensor of the sample cast to ``dtype``
        (float32 copies hold the float64 values rounded; requires_grad is kept)."""
        sample = self.sample if dtype == torch.float64 else _cast(self.sample, dtype)
        op = self.op
        variant = op.get_op()

        def fn(*xs: torch.Tensor) -> Any:
            first, i = _recompose(xs, sample.input, 0)
            args = []
            for a in sample.args:
                a, i = _recompose(xs, a, i)
                args.append(a)
            kwargs = {}
            for k, v in sample.kwargs.items():
                kwargs[k], i = _recompose(xs, v, i)
            out = op.gradcheck_wrapper(variant, first, *args, **kwargs)
            process = sample.output_process_fn_grad
            return out if process is None else process(out)

        return fn, tuple(_sample_leaves(sample))


def _is_tensor_list(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(
        isinstance(t, torch.Tensor) for t in x
    )


def _grad_leaves(x: Any) -> list[torch.Tensor]:
    if _is_tensor_list(x):
        return [t for t in x if t.requires_grad]
    return [x] if isinstance(x, torch.Tensor) and x.requires_grad else []


def _sample_leaves(sample: Any) -> list[torch.Tensor]:
    parts = [sample.input, *sample.args, *sample.kwargs.values()]
    return [t for p in parts for t in _grad_leaves(p)]


def _cast(sample: Any, dtype: torch.dtype) -> Any:
    def cast(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.detach().to(dtype).requires_grad_(t.requires_grad)
        return t

    return sample.transform(cast)


def _recompose(inputs: tuple[torch.Tensor, ...], x: Any, i: int) -> tuple[Any, int]:
    if _is_tensor_list(x):
        out = []
        for t in x:
            if t.requires_grad:
                out.append(inputs[i])
                i += 1
            else:
                out.append(t)
        return out, i
    if isinstance(x, torch.Tensor) and x.requires_grad:
        return inputs[i], i + 1
    return x, i


def opdb_samples(only: Collection[str] | None = None) -> Iterator[Sample]:
    """The fixed subset described in the module docstring (seeded as op_db's tests are);
    ``only``: just the ops of these names (``name`` or ``name.variant``)."""
    from torch.testing._internal.common_methods_invocations import op_db

    for op in sorted(op_db, key=lambda o: (o.name, o.variant_test_name)):
        name = f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name
        if only is not None and name not in only:
            continue
        if not op.supports_autograd or torch.float64 not in op.supported_backward_dtypes("cpu"):
            continue
        torch.manual_seed(0)
        found, empty = None, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                for s in op.sample_inputs("cpu", torch.float64, requires_grad=True):
                    if s.broadcasts_input and op.name.endswith("_"):
                        continue  # in-place ops on broadcast inputs: TestGradients skips them
                    leaves = _sample_leaves(s)
                    if not leaves:
                        continue
                    n = sum(t.numel() for t in leaves)
                    if n == 0 and empty is None:
                        empty = Sample(name, op, s)
                    if 0 < n <= MAX_ENTRIES:
                        found = Sample(name, op, s)
                        break
            except Exception:  # an op whose sample generator needs what this build lacks
                continue
        yield from (x for x in (found, empty) if x is not None)


def gradcheck_passes(fn: Callable[..., Any], inputs: tuple, nondet_tol: float) -> bool:
    """gradcheck's verdict on the float64 sample (the truth the suite judges by)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(torch.autograd.gradcheck(
                fn, inputs, raise_exception=False, nondet_tol=nondet_tol,
                check_undefined_grad=False, check_batched_grad=False,
            ))
        except Exception:
            return False
