"""Input validation at the public boundary.

Everything a user passes is checked here, once, and turned into plain internal objects: the
rest of the package trusts them. Messages follow ``numpy.testing``: what was expected, what was
found, where, and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .tree import TreeDef, check_held_by_path, flatten, match, unflatten, unpacked_names

FLOAT_KINDS = ("f",)
#: Largest parameter entry checked (2**500, ~3.3e150): beyond it the squares of float64 steps
#: overflow.
MAX_MAGNITUDE = 2.0**500


@dataclass(frozen=True)
class ParamLayout:
    """How the user's parameters are laid out, so losses get back the container they expect.

    Attributes
    ----------
    names : tuple of str
        Parameter names in order: paths in a tree (``encoder.layers[0].W``), the keys of a
        flat mapping, the names the loss unpacks a flat sequence into (``W, b = params``) or
        else "0", "1", ..., "x" for a single array.
    kind : str
        ``"mapping"``, ``"sequence"``, ``"dataclass"`` or ``"array"`` (the top container).
    container_type : type
        The type of the top container (``dict``, ``list``, ``tuple``...).
    shapes, dtypes : tuples
        Shape and dtype of each parameter.
    tree : TreeDef
        The structure :meth:`pack` rebuilds, holding the leaves that are not checked.
    fixed : tuple of (str, str)
        Each leaf held fixed (not a float array): its path and what it is (``"int64 array"``).
    """

    names: tuple[str, ...]
    kind: str
    container_type: type
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    tree: TreeDef = field(repr=False, compare=False)
    fixed: tuple[tuple[str, str], ...] = ()
    watched: tuple[tuple[str, np.ndarray, str], ...] = field(default=(), repr=False)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    def pack(self, arrays: Sequence[Any]) -> Any:
        """Build the user's kind of container around ``arrays`` (one per parameter); the
        leaves held fixed are the caller's own objects."""
        if self.kind == "array":
            return arrays[0]
        return unflatten(self.tree, arrays)

    def changed_fixed(self) -> list[str]:
        """The held-fixed arrays whose contents changed since the check began (written into
        by the loss or grad: they are the caller's own arrays)."""
        return [path for path, arr, digest in self.watched if _digest(arr) != digest]


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
    _reject_subclass(name, value, what)
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


def _reject_subclass(name: str, value: Any, what: str) -> None:
    """Refuse an ndarray subclass whose meaning a plain copy would lose (a mask, ``*`` as a
    matrix product, units...): the loss would see a plain array. ``np.memmap`` is a plain
    array on disk and is accepted; a gradient may be any subclass but a masked one."""
    if not isinstance(value, np.ndarray) or type(value) is np.ndarray:
        return
    if isinstance(value, np.ma.MaskedArray):
        raise InvalidInputError(
            f"{what} {name!r}: expected a plain numpy array, found a masked array "
            "(np.ma.MaskedArray): its mask would be lost, and masked entries checked as "
            "numbers. Pass x.filled(fill) (or np.asarray(x)) and hold the mask as a "
            "non-float leaf of the tree (a bool array), applying it in the loss."
        )
    if what != "parameter" or isinstance(value, np.memmap):
        return
    fix = (
        "np.asarray(m), and @ for the matrix product in the loss"
        if isinstance(value, np.matrix)
        else "np.asarray(x), with the loss working on plain arrays"
    )
    raise InvalidInputError(
        f"{what} {name!r}: expected a plain numpy array, found the ndarray subclass "
        f"{type(value).__module__}.{type(value).__name__}: the check perturbs plain copies, "
        f"so the loss would get plain arrays and lose what the subclass means. Pass {fix}."
    )


def _check_magnitude(name: str, arr: np.ndarray) -> None:
    """Entries beyond :data:`MAX_MAGNITUDE` cannot be checked faithfully in float64: squares
    and sums of their steps overflow."""
    if arr.dtype.itemsize < 8:  # float16/32 values are far inside float64's range
        return
    big = np.abs(arr) > MAX_MAGNITUDE
    if np.any(big):
        at = np.argwhere(big)[0]
        raise InvalidInputError(
            f"parameter {name!r}: expected entries of magnitude up to {MAX_MAGNITUDE:.3g}, "
            f"found {float(arr[tuple(at)]):g} at index {tuple(int(i) for i in at)}: the squares and "
            "sums of finite differences at that scale overflow float64. Rescale the parameter "
            "(check the loss of x * 2**-k and its gradient)."
        )


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=10**6))
    except Exception:  # numpy's TooHardError: too costly to decide; the bounds overlap
        return True


def _describe(value: Any) -> str:
    """What a leaf held fixed is, for the report: ``int64 array``, ``int``, ``str``."""
    dtype = getattr(value, "dtype", None)
    if hasattr(value, "shape") and dtype is not None and not isinstance(value, np.generic):
        return f"{dtype} array"
    return type(value).__name__


def _dtype_kind(value: Any) -> str:
    """The numpy kind of an array-like leaf ("f", "i", ...), or "" for a leaf that is none."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind
    if isinstance(value, (numbers.Number, np.generic, str, bytes)) or value is None:
        return ""  # scalars and text are data, held fixed
    if not hasattr(value, "__array__"):
        return ""
    dtype = getattr(value, "dtype", None)
    try:
        return np.dtype(dtype).kind if dtype is not None else np.asarray(value).dtype.kind
    except Exception:  # a framework's own dtype (torch.float32): let the array check decide
        try:
            return np.asarray(value).dtype.kind
        except Exception:
            return "f"


def _is_param(path: str, value: Any) -> bool:
    """A float array is a parameter; complex arrays are refused; the rest is held fixed."""
    kind = _dtype_kind(value)
    if kind == "c":
        _check_float_array(path, value, "parameter")  # raises, with the fix
    return kind in FLOAT_KINDS


def _digest(value: np.ndarray) -> str:
    return hashlib.blake2b(
        np.ascontiguousarray(value).view(np.uint8).data, digest_size=16
    ).hexdigest()


def describe_fixed(fixed: Sequence[tuple[str, str]]) -> str:
    """``labels (int64 array), cfg.n_heads (int)``, at most :data:`MAX_LISTED` of them."""
    text = ", ".join(f"{path} ({what})" for path, what in fixed[:MAX_LISTED])
    return text + (f" and {len(fixed) - MAX_LISTED} more" if len(fixed) > MAX_LISTED else "")


def _no_parameter_error(held: list[tuple[str, Any]]) -> InvalidInputError:
    found = describe_fixed([(p, _describe(v)) for p, v in held])
    arrays = [(p, v) for p, v in held if _dtype_kind(v) not in ("", "f")]
    if arrays:  # the message of a single array, which names the dtype and the fix
        try:
            _check_float_array(arrays[0][0], arrays[0][1], "parameter")
        except InvalidInputError as exc:
            return InvalidInputError(
                f"{exc} params: no floating-point array to check, only leaves held fixed: {found}."
            )
    return InvalidInputError(
        "params: expected at least one floating-point array to check, found only leaves held "
        f"fixed: {found}. Pass the parameters to check as float arrays "
        "(np.asarray(v, dtype=np.float64))."
    )


#: Leaves named in a message or warning before "and N more".
MAX_LISTED = 10


def normalize_params(
    params: Any, named_by: Callable[..., Any] | None = None
) -> tuple[ParamLayout, list[np.ndarray], list[np.ndarray | None]]:
    """Validate ``params`` and return its layout, private C-contiguous copies and, for each
    copy, the caller's array it was made from (None where the leaf was converted: a scalar, a
    list).

    ``params`` is one array or a tree (mappings, sequences, NamedTuples, dataclasses) whose
    float-array leaves are the parameters; other leaves (ints, strings, None, integer or bool
    arrays) are held fixed, passed as they are. The copies are what the check perturbs: the
    caller's arrays are never written to. A flat list or tuple is named as ``named_by`` (the
    loss) unpacks it (:func:`gradprobe.tree.unpacked_names`), else ``"0"``, ``"1"``, ....
    """
    _reject_framework_array(params, "params")
    if isinstance(params, np.ndarray):
        kind, container_type = "array", np.ndarray
        _check_float_array("x", params, "parameter")
    elif isinstance(params, Mapping):
        if len(params) == 0:
            raise InvalidInputError(
                "params: expected at least one parameter, found an empty mapping."
            )
        kind, container_type = "mapping", type(params)
    elif isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
        if len(params) == 0:
            raise InvalidInputError(
                "params: expected at least one parameter, found an empty sequence."
            )
        kind, container_type = "sequence", type(params)
    elif dataclasses.is_dataclass(params) and not isinstance(params, type):
        kind, container_type = "dataclass", type(params)
    else:
        raise InvalidInputError(
            "params: expected a mapping of names to float arrays, a sequence of arrays, a tree "
            f"of those (dataclasses, NamedTuples) or one array, found {type(params).__name__}."
        )
    names = None
    if named_by is not None and kind == "sequence" and container_type in (list, tuple):
        names = unpacked_names(named_by, len(params))
    flat = flatten(params, _is_param, names)
    if not flat.params:
        raise _no_parameter_error(flat.held)
    arrays, sources = [], []
    originals: list[tuple[str, np.ndarray]] = []
    for name, value in flat.params:
        if any(name == other for other, _ in originals):
            raise InvalidInputError(
                f"params: expected one leaf per path, found two named {name!r} (a key with a "
                "'.' beside a nested container of the same path). Rename one of them."
            )
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
        _check_magnitude(name, arr)
        arrays.append(np.array(arr, dtype=arr.dtype, order="C", copy=True))
        sources.append(arr if arr is value else None)
    layout = ParamLayout(
        names=tuple(name for name, _ in flat.params),
        kind=kind,
        container_type=container_type,
        shapes=tuple(a.shape for a in arrays),
        dtypes=tuple(a.dtype for a in arrays),
        tree=flat.treedef,
        fixed=tuple((p, _describe(v)) for p, v in flat.held),
        # Held arrays of Python objects cannot be hashed by their bytes: not watched.
        watched=tuple(
            (p, v, _digest(v))
            for p, v in flat.held
            if isinstance(v, np.ndarray) and not v.dtype.hasobject
        ),
    )
    return layout, arrays, sources


def normalize_gradient(layout: ParamLayout, grad: Any, *, copy: bool = True) -> list[np.ndarray]:
    """Validate a gradient container against ``layout``; return float64 copies in order
    (``copy=False``: the arrays themselves where they are C-contiguous float64 already, for a
    gradient only compared and dropped).

    The gradient has the structure of the parameters, or one with the same paths (a mapping
    keyed by the parameter names will do); leaves held fixed may be left out.
    """
    names = set(layout.names)
    if (
        isinstance(grad, Mapping)
        and all(isinstance(k, str) for k in grad)
        and names <= set(grad) <= names | {p for p, _ in layout.fixed}
    ):
        values = [grad[n] for n in layout.names]  # keyed by path
        check_held_by_path(layout.tree, grad)
    elif layout.kind == "array":
        values = [grad]
    else:
        values = match(layout.tree, grad)
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
        if copy:
            result.append(np.array(arr, dtype=np.float64, order="C", copy=True))
        else:
            result.append(np.asarray(arr, dtype=np.float64, order="C"))
    return result


def as_scalar_loss(value: Any, where: str) -> float:
    """Convert what a loss returned into a Python float, or raise ``InvalidInputError``.

    Accepts Python and numpy scalars, 0-d and one-element arrays, and objects with ``.item()``
    (torch tensors). ``where`` describes the evaluation for the message.
    """
    kind = type(value)
    if kind is float or kind is np.float64:  # the common case, first (per evaluation)
        return float(value)
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
