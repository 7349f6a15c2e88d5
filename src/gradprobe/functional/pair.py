"""A forward/backward pair in the cs231n convention, checked as a VJP: :func:`check_forward_backward`.

``forward(x, w, b) -> (out, cache)`` and ``backward(dout, cache) -> (dx, dw, db)``: the
from-scratch layers of course code and of many numpy networks. Each evaluation runs
``forward`` once: a loss evaluation reads ``out``, a gradient evaluation hands the ``cache`` of
that same call to ``backward``. Inputs that are not float arrays (a ``conv_param`` dict, integer
indices, a dropout mask's parameters) are passed as they are and not checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError, raised_at_the_call
from ..layout import validate_callable
from ..report.model import Report
from ..tree import argument_names
from .contraction import Roles
from .vjp import run_vjp_check

PAIR = Roles(
    f="forward",
    vjp="backward",
    cotangent="dout",
    api="check_forward_backward",
    grad="backward(dout, cache) with the cache of forward at the same inputs",
)


def _is_checked(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"


class _Pair:
    """``forward`` and ``backward`` as ``f(point)`` and ``vjp(point, dout)`` over the float
    inputs by name, the other inputs held."""

    def __init__(self, forward, backward, names, values, keyword: bool) -> None:
        self.forward, self.backward, self.keyword = forward, backward, keyword
        self.names, self.values = list(names), list(values)
        self.checked = [n for n, v in zip(names, values, strict=True) if _is_checked(v)]

    def _call(self, point: Mapping[str, Any]) -> tuple[Any, Any]:
        args = [point.get(n, v) for n, v in zip(self.names, self.values, strict=True)]
        result = (
            self.forward(**dict(zip(self.names, args, strict=True)))
            if self.keyword
            else self.forward(*args)
        )
        if not isinstance(result, tuple) or len(result) < 2:
            found = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result)
            raise InvalidInputError(
                f"forward: expected it to return (out, cache) (or (out1, out2, ..., cache)), "
                f"found {getattr(found, '__name__', found)}. For a forward that returns only "
                "its output, use gradprobe.check_vjp."
            )
        outputs, cache = result[:-1], result[-1]
        return (outputs[0] if len(outputs) == 1 else tuple(outputs)), cache

    def f(self, point: Mapping[str, Any]) -> Any:
        return self._call(point)[0]

    def vjp(self, point: Mapping[str, Any], dout: Any) -> dict[str, Any]:
        out, cache = self._call(point)
        douts = dout if isinstance(out, tuple) else (dout,)
        grads = self.backward(*douts, cache)
        if len(self.checked) == 1 and not isinstance(grads, (tuple, list)):
            grads = (grads,)
        if not isinstance(grads, (tuple, list)) or len(grads) != len(self.checked):
            shown = (
                f"a {type(grads).__name__} of {len(grads)}"
                if isinstance(grads, (tuple, list))
                else type(grads).__name__
            )
            raise InvalidInputError(
                f"backward: expected one gradient per float input of forward, in order "
                f"({', '.join('d' + n for n in self.checked)}), found {shown}."
            )
        return dict(zip(self.checked, grads, strict=True))


def _named_inputs(forward: Callable[..., Any], inputs: Any) -> tuple[list[str], list[Any], bool]:
    if isinstance(inputs, Mapping):
        return [str(k) for k in inputs], list(inputs.values()), True
    if isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
        values = list(inputs)
        return argument_names(forward, len(values), "input"), values, False
    return argument_names(forward, 1, "input"), [inputs], False


@raised_at_the_call
def check_forward_backward(
    forward: Callable[..., Any],
    backward: Callable[..., Any],
    inputs: Any,
    *,
    cotangent_seed: int | None = None,
    **check_options: Any,
) -> Report:
    """Check a ``backward(dout, cache)`` against differences of its ``forward``.

    Parameters
    ----------
    forward : callable
        ``forward(*inputs) -> (out, cache)`` (``forward(**inputs)`` for a mapping); several
        outputs as ``(out1, out2, ..., cache)``.
    backward : callable
        ``backward(dout, cache) -> (dx, dw, db)``: one gradient per float-array input, in
        order (one array when there is one); ``backward(dout1, dout2, ..., cache)`` for
        several outputs.
    inputs : tuple, list or mapping
        The arguments of ``forward``: ``(x, w, b, conv_param)``. Float arrays are checked,
        named after ``forward``'s arguments (``x``, ``w``, ``b``; ``input0``... where it has
        no names to give) or the mapping's keys; anything else is passed as it is.
    cotangent_seed : int, optional
        Seed of the random ``dout`` (standard normal). Default: the check's ``seed``.
    **check_options
        Any option of :func:`gradprobe.check` but ``batched``.

    Returns
    -------
    Report
        One row per float input. ``forward`` runs once per loss evaluation and once per
        gradient evaluation (whose cache ``backward`` receives).
    """
    validate_callable("forward", forward)
    validate_callable("backward", backward)
    if check_options.get("batched"):
        raise InvalidInputError(
            "batched: check_forward_backward calls forward once per evaluation; found "
            "batched=True. Pass batched=False."
        )
    names, values, keyword = _named_inputs(forward, inputs)
    pair = _Pair(forward, backward, names, values, keyword)
    if not pair.checked:
        raise InvalidInputError(
            f"inputs: expected at least one float array among forward's inputs {names}, found "
            f"none ({', '.join(type(v).__name__ for v in values)})."
        )
    point = {n: v for n, v in zip(names, values, strict=True) if n in pair.checked}
    return run_vjp_check(pair.f, pair.vjp, point, None, cotangent_seed, check_options, PAIR)
