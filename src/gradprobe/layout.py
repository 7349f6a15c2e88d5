"""Input validation at the public boundary.

Everything a user passes is checked here, once, and turned into plain internal objects: the
rest of the package trusts them. Messages follow ``numpy.testing``: what was expected, what was
found, where, and the fix.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import InvalidInputError

__all__ = [
    "ParamLayout",
    "as_scalar_loss",
    "normalize_gradient",
    "normalize_params",
    "promote_to_float64",
    "unravel",
]

FLOAT_KINDS = ("f",)


@dataclass(frozen=True)
class ParamLayout:
    """How the user's parameters are laid out, so losses get back the container they expect.

    Attributes
    ----------
    names : tuple of str
        Parameter names in order ("0", "1", ... for sequences, "x" for a single array).
    kind : str
        ``"mapping"``, ``"sequence"`` or ``"array"``.
    container_type : type
        The mapping or sequence type to rebuild (``dict``, ``list``, ``tuple``...).
    shapes, dtypes : tuples
        Shape and dtype of each parameter.
    """

    names: tuple[str, ...]
    kind: str
    container_type: type
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    def pack(self, arrays: Sequence[Any]) -> Any:
        """Build the user's kind of container around ``arrays`` (one per parameter)."""
        if self.kind == "array":
            return arrays[0]
        if self.kind == "sequence":
            if self.container_type in (list, tuple):
                return self.container_type(arrays)
            if _is_namedtuple(self.container_type):
                return self.container_type(*arrays)  # p.W works as it does on the caller's
            try:
                return self.container_type(arrays)
            except TypeError:
                return list(arrays)
        values = dict(zip(self.names, arrays, strict=True))
        if self.container_type is dict:
            return values
        try:
            return self.container_type(values)
        except TypeError:
            return values


def _is_namedtuple(kind: type) -> bool:
    return issubclass(kind, tuple) and hasattr(kind, "_fields")


#: Array types of these frameworks (``type(x).__module__``'s first word; not imported here)
#: get a pointer to their adapter instead of a silent conversion to numpy.
FRAMEWORK_ADAPTERS = {"torch": "gradprobe.torch", "jax": "gradprobe.jax", "jaxlib": "gradprobe.jax"}


def _reject_framework_array(value: Any, where: str) -> None:
    """Raise ``InvalidInputError`` for a torch tensor or jax array (``where``: the argument),
    naming the adapter that checks such functions against their framework's autograd."""
    framework = type(value).__module__.partition(".")[0]
    adapter = FRAMEWORK_ADAPTERS.get(framework)
    if adapter is None:
        return
    kind = "a torch.Tensor" if framework == "torch" else "a jax array"
    raise InvalidInputError(
        f"{where}: expected a numpy array, found {kind} ({type(value).__name__}); "
        f"gradprobe.check works on numpy arrays and hand-written gradients. To check a "
        f"{'PyTorch' if framework == 'torch' else 'JAX'} function against its autograd, use "
        f"{adapter}.check(fn, *inputs) (see the README's 'PyTorch and JAX'); to check a numpy "
        "loss, pass numpy copies (np.asarray(x) after .detach().cpu() for a tensor)."
    )


def _check_float_array(
    name: str, value: Any, what: str, *, integers_are_values: bool = False
) -> np.ndarray:
    _reject_framework_array(value, f"{what} {name!r}")
    if not isinstance(value, np.ndarray):
        if isinstance(value, numbers.Number) or hasattr(value, "__array__"):
            value = np.asarray(value)
        else:
            raise InvalidInputError(
                f"{what} {name!r}: expected a float numpy array, found {type(value).__name__}. "
                "Pass numpy arrays (np.asarray(x, dtype=np.float64))."
            )
    if integers_are_values and value.dtype.kind in "iu":
        # A gradient is a set of values, not something perturbed: an integer one (an exact
        # derivative such as d(sum x)/dx = 1) is compared as float64.
        value = value.astype(np.float64)
    if value.dtype.kind not in FLOAT_KINDS:
        hint = (
            "convert it with .astype(np.float64)"
            if value.dtype.kind in "biu"
            else "gradprobe checks real floating-point parameters (float16/32/64)"
        )
        raise InvalidInputError(
            f"{what} {name!r}: expected a floating-point dtype, found {value.dtype}; {hint}."
        )
    if value.size == 0:
        raise InvalidInputError(
            f"{what} {name!r}: expected at least one entry, found an empty array of shape "
            f"{value.shape}. Leave empty parameters out of the check."
        )
    return value


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=10**6))
    except Exception:  # numpy's TooHardError: too costly to decide; the bounds overlap
        return True


def normalize_params(params: Any) -> tuple[ParamLayout, list[np.ndarray]]:
    """Validate ``params`` and return its layout and private C-contiguous copies.

    The copies are what the check perturbs: the caller's arrays are never written to.
    """
    _reject_framework_array(params, "params")
    if isinstance(params, np.ndarray):
        kind, container_type, items = "array", np.ndarray, [("x", params)]
    elif isinstance(params, Mapping):
        if len(params) == 0:
            raise InvalidInputError(
                "params: expected at least one parameter, found an empty mapping."
            )
        for key in params:
            if not isinstance(key, str):
                raise InvalidInputError(
                    f"params: expected string keys (parameter names), found key {key!r} of "
                    f"type {type(key).__name__}. Use names such as 'W1', 'b1'."
                )
        kind, container_type, items = "mapping", type(params), list(params.items())
    elif isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
        if len(params) == 0:
            raise InvalidInputError(
                "params: expected at least one parameter, found an empty sequence."
            )
        kind, container_type = "sequence", type(params)
        items = [(str(i), value) for i, value in enumerate(params)]
    else:
        raise InvalidInputError(
            "params: expected a mapping of names to float arrays, a sequence of arrays or one "
            f"array, found {type(params).__name__}."
        )
    arrays = []
    originals: list[tuple[str, np.ndarray]] = []
    for name, value in items:
        arr = _check_float_array(name, value, "parameter")
        for other_name, other in originals:
            if _overlap(arr, other):
                raise InvalidInputError(
                    f"parameters {other_name!r} and {name!r}: expected separate arrays, found "
                    "views of the same memory. Perturbing one would silently change the other, "
                    "so their gradients are ambiguous; pass copies (arr.copy()) or one "
                    "parameter for the shared memory."
                )
        originals.append((name, arr))
        if not np.all(np.isfinite(arr)):
            bad = np.argwhere(~np.isfinite(arr))[0]
            raise InvalidInputError(
                f"parameter {name!r}: expected finite values, found {arr[tuple(bad)]} at index "
                f"{tuple(int(i) for i in bad)}. Check the model's initialization."
            )
        arrays.append(np.array(arr, dtype=arr.dtype, order="C", copy=True))
    layout = ParamLayout(
        names=tuple(name for name, _ in items),
        kind=kind,
        container_type=container_type,
        shapes=tuple(a.shape for a in arrays),
        dtypes=tuple(a.dtype for a in arrays),
    )
    return layout, arrays


def normalize_gradient(layout: ParamLayout, grad: Any) -> list[np.ndarray]:
    """Validate a gradient container against ``layout``; return float64 copies in order."""
    if layout.kind == "array" and isinstance(grad, np.ndarray):
        values = [grad]
    elif isinstance(grad, Mapping):
        _check_gradient_keys(layout, grad)
        values = [grad[n] for n in layout.names]
    elif isinstance(grad, Sequence) and not isinstance(grad, (str, bytes)):
        if len(grad) != len(layout.names):
            raise InvalidInputError(
                f"grad: expected {len(layout.names)} gradient arrays (one per parameter "
                f"{list(layout.names)}), found {len(grad)}."
            )
        values = list(grad)
    else:
        raise InvalidInputError(
            f"grad: expected a container of arrays like params ({layout.kind}), found "
            f"{type(grad).__name__}."
        )
    result = []
    for name, shape, value in zip(layout.names, layout.shapes, values, strict=True):
        arr = _check_float_array(name, value, "gradient of", integers_are_values=True)
        if arr.shape != shape:
            hint = (
                " (it is the transpose: did the backward pass return W.T?)"
                if arr.shape == shape[::-1] and len(shape) == 2
                else ""
            )
            raise InvalidInputError(
                f"gradient of {name!r}: expected shape {shape} (the parameter's shape), found "
                f"{arr.shape}{hint}."
            )
        result.append(np.array(arr, dtype=np.float64, order="C", copy=True))
    return result


def _typed(keys: Sequence[Any]) -> str:
    """``['W', 0]`` shown with each key's type: ``['W' (str), 0 (int)]``."""
    return "[" + ", ".join(f"{k!r} ({type(k).__name__})" for k in keys) + "]"


def _check_gradient_keys(layout: ParamLayout, grad: Mapping[Any, Any]) -> None:
    """The keys of a gradient mapping must be the parameter names themselves (str)."""
    missing = [n for n in layout.names if n not in grad]
    extra = [k for k in grad if k not in layout.names]
    if not missing and not extra:
        return
    message = (
        f"grad: expected the same names as params {_typed(layout.names)}, found "
        f"{_typed(list(grad))}"
    )
    if missing:
        message += f"; missing {missing}"
    if extra:
        message += f"; unexpected {_typed(extra)}"
    as_text = {str(k) for k in extra}
    if as_text and as_text <= set(missing):
        message += (
            ". The keys name the right parameters but are not str: return the gradient under "
            "the same str names, e.g. {str(k): g for k, g in grads.items()}"
        )
    raise InvalidInputError(
        message + ". Return one gradient array per parameter, under the parameter's name."
    )


def as_scalar_loss(value: Any, where: str) -> float:
    """Convert what a loss returned into a Python float, or raise ``InvalidInputError``.

    Accepts Python and numpy scalars, 0-d and one-element arrays, and objects with ``.item()``
    (torch tensors). ``where`` describes the evaluation for the message.
    """
    if isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"loss {where}: expected a real scalar, found a boolean ({value}).")
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise InvalidInputError(
                f"loss {where}: expected a scalar, found an array of shape {value.shape}. "
                "Reduce it (sum or mean) to one number."
            )
        if value.dtype.kind not in "fiu":
            raise InvalidInputError(
                f"loss {where}: expected a real scalar, found dtype {value.dtype}."
            )
        return float(value.reshape(()))
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return as_scalar_loss(item(), where)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InvalidInputError(
                f"loss {where}: expected a scalar, found {type(value).__name__} whose .item() "
                f"failed ({exc}). Reduce it to one number."
            ) from exc
    raise InvalidInputError(
        f"loss {where}: expected a real scalar (float), found {type(value).__name__}."
    )


def validate_callable(name: str, value: Any) -> Callable[..., Any]:
    if not callable(value):
        raise InvalidInputError(
            f"{name}: expected a callable taking the parameter container, found "
            f"{type(value).__name__}."
        )
    return value


def unravel(flat: int | np.integer, shape: Sequence[int]) -> tuple[int, ...]:
    """The index tuple of flat entry ``flat`` of an array of ``shape`` (plain ints)."""
    return tuple(int(i) for i in np.unravel_index(int(flat), tuple(shape)))


def promote_to_float64(
    layout: ParamLayout, base: Sequence[np.ndarray]
) -> tuple[ParamLayout, list[np.ndarray], list[str]]:
    """Cast parameters below float64 precision to float64 (``check(promote=True)``).

    Returns the new layout, the float64 copies and the names that were promoted.
    """
    promoted = [n for n, dt in zip(layout.names, layout.dtypes, strict=True) if dt.itemsize < 8]
    if not promoted:
        return layout, list(base), []
    arrays = [
        np.ascontiguousarray(a, dtype=np.float64) if a.dtype.itemsize < 8 else a for a in base
    ]
    new_layout = replace(layout, dtypes=tuple(a.dtype for a in arrays))
    return new_layout, arrays, promoted
