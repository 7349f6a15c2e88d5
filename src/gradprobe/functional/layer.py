"""Layer objects: :func:`check_layer` checks a stateful ``forward``/``backward`` layer.

A numpy layer caches what ``forward`` saw and ``backward`` writes its parameters' gradients
into attributes (``self.dW``) and returns its input's gradient. :class:`LayerCalls` turns that
into the ``f``/``vjp`` pair of :func:`~gradprobe.functional.vjp.run_vjp_check`: every call
builds a fresh layer (the factory, or a deep copy of a prototype), sets the parameters being
checked, runs ``forward`` (and ``backward``) on copies of the input, and refuses a layer that
writes into its input or its upstream gradient, or whose gradients are nonzero before
``backward`` (accumulated across calls).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError, StatefulGradientError, raised_at_the_call
from ..report.model import Report
from ..tree import argument_names
from .contraction import Roles
from .vjp import run_vjp_check

LAYER = Roles(
    f="forward",
    vjp="backward",
    cotangent="upstream gradient",
    api="check_layer",
    grad="the input gradient backward returns and the gradient attributes it sets",
)


def _get(obj: Any, path: str) -> Any:
    """``obj.a.b`` for ``"a.b"``; a part names a key where the object is a mapping."""
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, Mapping) else getattr(obj, part)
    return obj


def _set(obj: Any, path: str, value: Any) -> None:
    parent, _, last = path.rpartition(".")
    target = _get(obj, parent) if parent else obj
    if isinstance(target, Mapping):
        target[last] = value  # type: ignore[index]
    else:
        setattr(target, last, value)


def _factory(layer: Any, forward: str) -> Callable[[], Any]:
    """A class or a zero-argument callable builds layers; a layer object is a prototype,
    deep-copied once now (later changes to it do not count) and once per evaluation."""
    if isinstance(layer, type) or (callable(layer) and not hasattr(layer, forward)):
        return layer
    try:
        prototype = copy.deepcopy(layer)
    except Exception as exc:
        raise InvalidInputError(
            f"layer: expected a layer object that copy.deepcopy can copy (each evaluation gets "
            f"a fresh copy), found {type(layer).__name__} whose copy raised "
            f"{type(exc).__name__}: {exc}. Pass a factory that builds the layer instead "
            "(the class, or a lambda)."
        ) from exc
    return functools.partial(copy.deepcopy, prototype)


def _grad_paths(params: Sequence[str], grads: Any) -> list[str] | Callable[[Any], Any]:
    if callable(grads):
        return grads
    if isinstance(grads, str):
        if "{}" not in grads:
            raise InvalidInputError(
                f"grads: expected a template with '{{}}' for the parameter's name (e.g. 'd{{}}' "
                f"for dW, 'grad_{{}}'), a list of attribute names or a callable, found {grads!r}."
            )
        out = []
        for path in params:
            parent, dot, last = path.rpartition(".")
            out.append(parent + dot + grads.format(last))
        return out
    if not isinstance(grads, Sequence) or len(grads) != len(params):
        raise InvalidInputError(
            f"grads: expected one attribute name per parameter {list(params)}, found {grads!r}."
        )
    return [str(g) for g in grads]


def _input_names(x: Any, forward: Any, params: Sequence[str]) -> tuple[list[str], list[Any]]:
    """A dict input under its keys; a tuple (``forward(*x)``) under the names of forward's
    arguments where it has them (``x0``, ``x1``... otherwise); one array as ``x``."""
    if isinstance(x, Mapping):
        return [str(k) for k in x], list(x.values())
    if isinstance(x, (list, tuple)):
        return argument_names(forward, len(x), "x", taken=params), list(x)
    return ["x"], [x]


def _path_hint(layer: Any, path: str) -> str:
    """Where a parameter name missing from the layer's attributes is found under a dict
    attribute (``self.params = {"W": ...}``): the path that works (and the gradients' path,
    from a dict attribute named like ``grads``), else nothing."""
    if "." in path or not hasattr(layer, "__dict__"):
        return ""
    found = [
        attr
        for attr, value in sorted(vars(layer).items())
        if isinstance(value, Mapping) and isinstance(value.get(path), np.ndarray)
    ]
    grads = [a for a in found if "grad" in a.lower()]
    params = [a for a in found if a not in grads]
    if not params:
        return ""
    hint = f" It is under a dict attribute: pass params=['{params[0]}.{path}', ...]"
    return hint + (f" (and grads=['{grads[0]}.{path}', ...])." if grads else ".")


class LayerCalls:
    """``forward`` and ``backward`` of fresh layers, as ``f(inputs)`` and ``vjp(inputs, G)``
    over a dict of the inputs and the parameters being checked."""

    def __init__(self, make, forward, backward, x_names, fixed, params, grads, check_input):
        self.make, self.fwd, self.bwd = make, forward, backward
        self.x_names, self.fixed, self.params = list(x_names), fixed, list(params)
        self.grads, self.check_input = grads, check_input

    def _build(self, inputs: Mapping[str, Any]) -> tuple[Any, list[np.ndarray], list[np.ndarray]]:
        layer = self.make()
        for path in self.params:
            _set(layer, path, np.array(inputs[path], copy=True))
        seen = [inputs[n] if self.check_input else self.fixed[n] for n in self.x_names]
        return layer, [np.array(a, copy=True) for a in seen], seen

    def _unchanged(self, given: list[np.ndarray], seen: list[np.ndarray], who: str) -> None:
        changed = [
            n for n, a, b in zip(self.x_names, given, seen, strict=True) if not np.array_equal(a, b)
        ]
        if changed:
            raise InvalidInputError(
                f"{who}: expected the layer to leave its input unchanged, found {changed} "
                "modified (an in-place update of the input or of the copy forward cached, such "
                "as self.x[self.x < 0] = 0 or x *= mask). In a network that array is the "
                "previous layer's output. Fix: use out-of-place operations or cache x.copy()."
            )

    def forward(self, inputs: Mapping[str, Any], **static: Any) -> Any:
        layer, given, seen = self._build(inputs)
        out = getattr(layer, self.fwd)(*given, **static)
        self._unchanged(given, seen, "forward")
        return out

    def backward(self, inputs: Mapping[str, Any], upstream: Any, **static: Any) -> Any:
        layer, given, seen = self._build(inputs)
        getattr(layer, self.fwd)(*given, **static)
        self._stale(layer)
        plain_tuple = isinstance(upstream, tuple) and not hasattr(upstream, "_fields")
        dx = getattr(layer, self.bwd)(*(upstream if plain_tuple else (upstream,)))
        self._unchanged(given, seen, "backward")
        result = self._input_grads(dx) if self.check_input else {}
        result.update(self._param_grads(layer, after=True))
        return result

    def _param_grads(self, layer: Any, *, after: bool) -> dict[str, Any]:
        if callable(self.grads):
            value = self.grads(layer)
            if isinstance(value, Mapping):
                return {p: value[p] for p in self.params if p in value}
            return dict(zip(self.params, value, strict=False))
        out = {}
        for p, g in zip(self.params, self.grads, strict=True):
            try:
                out[p] = np.array(_get(layer, g), copy=True)
            except (AttributeError, KeyError):
                if after:
                    raise InvalidInputError(
                        f"backward: expected it to set layer.{g} (the gradient of {p!r}), found "
                        "no such attribute. Pass grads= naming where the layer keeps its "
                        "gradients: a template ('d{}', 'grad_{}'), a list, or a callable."
                    ) from None
        return out

    def _stale(self, layer: Any) -> None:
        """Gradients already nonzero on a fresh layer would be accumulated into."""
        try:
            before = self._param_grads(layer, after=False)
        except Exception:  # a callable ``grads`` may need backward to have run
            return
        for p, g in before.items():
            arr = np.asarray(g)
            if arr.dtype.kind in "fiu" and np.any(arr != 0):
                raise StatefulGradientError(
                    f"check_layer: the gradient of {p!r} is already nonzero on a fresh layer "
                    "before backward: backward accumulates into gradients that survive from an "
                    "earlier call (a prototype holding gradients from an earlier backward, a "
                    "buffer shared between layers such as a class attribute or a module-level "
                    "array). Fix: zero the gradients (or create them) in __init__ and pass the "
                    "class or a factory, or zero the prototype's gradients."
                )

    def _input_grads(self, dx: Any) -> dict[str, Any]:
        names = self.x_names
        if isinstance(dx, Mapping):
            return {n: dx[n] for n in names if n in dx}
        if len(names) == 1 and dx is not None and not isinstance(dx, (tuple, list)):
            dx = (dx,)
        if dx is None or not isinstance(dx, (tuple, list)) or len(dx) != len(names):
            raise InvalidInputError(
                f"backward: expected it to return the gradient of the input ({len(names)} "
                f"array{'s' if len(names) > 1 else ''}: {names}), found {_describe(dx)}. Return "
                "dx, or pass check_input=False to check the parameters only."
            )
        return dict(zip(names, dx, strict=True))


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


@raised_at_the_call
def check_layer(
    layer: Any,
    x: Any,
    *,
    params: Sequence[str] = (),
    grads: str | Sequence[str] | Callable[[Any], Any] = "d{}",
    forward: str = "forward",
    backward: str = "backward",
    check_input: bool = True,
    static: Mapping[str, Any] | None = None,
    cotangent_seed: int | None = None,
    **check_options: Any,
) -> Report:
    """Check a layer object's ``backward`` against differences of its ``forward``.

    Parameters
    ----------
    layer : object, class or callable
        A layer (a prototype, deep-copied for every evaluation; never modified), or a class
        or zero-argument factory that builds a fresh one.
    x : ndarray, tuple or mapping of ndarrays
        The input: ``forward(x)``, ``forward(*x)`` for a tuple (reported as ``x0``, ``x1``...)
        or ``forward(*x.values())`` for a mapping (reported under its keys).
    params : sequence of str
        Attributes holding the parameters to check (``"W"``, ``"conv.W"``; a part may be a
        key of a dict attribute: ``"params.W"``), reported under these names.
    grads : str, sequence of str or callable
        Where ``backward`` leaves each parameter's gradient: a template (``"d{}"``: ``dW``
        for ``W``; ``"grad_{}"``), one attribute per parameter, or ``grads(layer)`` returning
        a mapping from parameter name to gradient.
    forward, backward : str
        The methods' names. ``backward`` receives the upstream gradient (one per output, as
        separate arguments, when ``forward`` returns a tuple) and returns the input's
        gradient (a tuple for a tuple input).
    check_input : bool
        Check the input's gradient too (else ``backward`` may return None).
    static : mapping, optional
        Keyword arguments of ``forward``, never perturbed (labels, masks).
    cotangent_seed, **check_options
        As for :func:`gradprobe.check_vjp` (``batched`` is not available for layers).

    Raises
    ------
    InvalidInputError
        A bad argument; ``forward`` or ``backward`` writing into the input or the upstream
        gradient; a gradient attribute ``backward`` does not set.
    StatefulGradientError
        Gradients accumulated across calls (nonzero before ``backward`` on a fresh layer, or
        two backward passes at the same point that differ).
    """
    if check_options.get("batched"):
        raise InvalidInputError(
            "batched: check_layer calls a layer object once per evaluation; found batched=True."
            " Pass batched=False, or use check_vjp with a batched function."
        )
    make = _factory(layer, forward)
    calls, fresh = _layer_calls(make, x, params, grads, forward, backward, check_input)
    inputs = {n: calls.fixed[n] for n in calls.x_names} if check_input else {}
    inputs.update({p: _get(fresh, p) for p in calls.params})
    if not inputs:
        raise InvalidInputError(
            "params: expected at least one parameter to check when check_input=False, found "
            "none. Name the layer's parameters (params=['W', 'b'])."
        )
    try:
        return run_vjp_check(
            calls.forward, calls.backward, inputs, static, cotangent_seed, check_options, LAYER
        )
    except StatefulGradientError as exc:
        if str(exc).startswith("check_layer:"):
            raise
        raise StatefulGradientError(
            "check_layer: backward gave different gradients on two fresh layers at the same "
            "point: state survives from one layer to the next (a gradient buffer shared "
            "between layers, such as a class attribute or a module-level array, or a factory "
            "that returns the same object), or backward is random. Create each gradient in "
            f"backward or __init__. {exc}",
            partial_report=exc.partial_report,
        ) from exc


def _layer_calls(make, x, params, grads, forward, backward, check_input) -> tuple[LayerCalls, Any]:
    """Validate the layer and the arguments on two freshly built layers; the calls, and the
    first of those layers (the parameters' values come from it)."""
    if not callable(make):
        raise InvalidInputError(
            f"layer: expected a layer object with a {forward!r} method, a class or a factory, "
            f"found {type(make).__name__}."
        )
    first, second = make(), make()
    if first is second:
        raise InvalidInputError(
            "layer: the factory returned the same object twice; gradients would accumulate "
            "across evaluations. Pass a factory that builds a new layer (the class, or a "
            "lambda), or the layer itself (it is deep-copied for each evaluation)."
        )
    for role, name in (("forward", forward), ("backward", backward)):
        if not callable(getattr(first, name, None)):
            raise InvalidInputError(
                f"{role}: expected the layer ({type(first).__name__}) to have a method "
                f"{name!r}, found none. Pass {role}='the method name'."
            )
    if isinstance(params, str):
        params = [params]
    for p in params:
        try:
            value = _get(first, p)
        except (AttributeError, KeyError, TypeError):
            value = None
        if not (isinstance(value, np.ndarray) and value.dtype.kind == "f"):
            raise InvalidInputError(
                f"params: expected {type(first).__name__}.{p} to be a float array, found "
                f"{type(value).__name__ if value is not None else 'no such attribute'}."
                + _path_hint(first, p)
            )
    names, arrays = _input_names(x, getattr(first, forward), params)
    clash = sorted(set(names) & set(params))
    if clash:
        raise InvalidInputError(
            f"x: input names {clash} are also parameter names; pass x as a mapping with other "
            "names."
        )
    fixed = {}
    for n, a in zip(names, arrays, strict=True):
        if not isinstance(a, np.ndarray):
            raise InvalidInputError(
                f"x: expected the input {n!r} to be a numpy array, found {type(a).__name__}."
            )
        fixed[n] = a.copy()
    calls = LayerCalls(
        make, forward, backward, names, fixed, params, _grad_paths(params, grads), check_input
    )
    return calls, first
