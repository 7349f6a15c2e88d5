"""Parameter trees: nested containers flattened to named leaves, and rebuilt.

A tree is a leaf or a container of trees: a mapping, a list or tuple (any sequence but text),
a ``NamedTuple`` or a dataclass instance. Leaves are named by their path: mapping keys and
attribute names joined by ``"."``, sequence indices as ``[i]`` (``encoder.layers[0].W``); a
flat sequence at the top (leaves only) gets the names its user unpacks it into
(:func:`unpacked_names`: ``W, b = params`` in the loss) where the caller passes them, else the
bare indices ``"0"``, ``"1"``, ...; a single leaf is ``"x"``. Which leaves are parameters is the caller's choice (``is_param``); the others
are held: a subtree without a parameter is kept as the very object given, and every rebuild
(:func:`unflatten`) puts it back as is.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidInputError

_TEXT = (str, bytes, bytearray, memoryview)
_MISSING = object()
#: Containers nested deeper than this are refused (naming the path), before Python's own
#: recursion limit would raise a bare RecursionError.
MAX_DEPTH = 100


@dataclass(frozen=True, eq=False)
class TreeDef:
    """One node of a tree's structure.

    Attributes
    ----------
    kind : str
        ``"param"`` (a parameter leaf, filled on rebuild), ``"held"`` (an object kept as is:
        a fixed leaf or a subtree without parameters), ``"mapping"``, ``"sequence"``,
        ``"namedtuple"`` or ``"dataclass"``.
    type : type or None
        The container's type, rebuilt around the children.
    keys : tuple
        Mapping keys, attribute names (NamedTuple, dataclass) or indices (sequence).
    segments : tuple of str
        Each child's own part of a path, as a gradient mapping may key it.
    paths : tuple of str
        Each child's full path.
    children : tuple of TreeDef
    value : object
        The held object of a ``"held"`` node.
    n_params : int
        Parameter leaves below (and at) this node.
    """

    kind: str
    type: type | None = None
    keys: tuple[Any, ...] = ()
    segments: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    children: tuple[TreeDef, ...] = ()
    value: Any = None
    n_params: int = 0

    @functools.cached_property
    def flat_dict(self) -> bool:
        """A plain ``dict`` whose values are all parameters (rebuilt without recursion)."""
        return (
            self.kind == "mapping"
            and self.type is dict
            and all(c.kind == "param" for c in self.children)
        )


@dataclass(frozen=True)
class Flat:
    """A flattened tree: its structure, its parameter leaves and its held leaves, by path."""

    treedef: TreeDef
    params: list[tuple[str, Any]]
    held: list[tuple[str, Any]]  # every non-parameter leaf, inside held subtrees too


def _container_kind(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        return "namedtuple"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return "dataclass"
    if isinstance(value, Sequence) and not isinstance(value, _TEXT):
        return "sequence"
    return None


def _items(kind: str, value: Any) -> list[tuple[Any, Any]]:
    if kind == "mapping":
        return list(value.items())
    if kind == "dataclass":
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value) if f.init]
    if kind == "namedtuple":
        return list(zip(type(value)._fields, value, strict=True))
    return list(enumerate(value))


def _segment(kind: str, key: Any, path: str) -> tuple[str, str]:
    """A child's segment (its name in a gradient mapping) and its full path."""
    if kind == "sequence":
        return str(key), f"{path}[{key}]"
    if isinstance(key, str):
        return key, f"{path}.{key}" if path else key
    return repr(key), f"{path}[{key!r}]"


def flatten(
    tree: Any, is_param: Callable[[str, Any], bool], names: Sequence[str] | None = None
) -> Flat:
    """Flatten ``tree``; ``is_param(path, leaf)`` says which leaves are parameters (it may
    raise ``InvalidInputError`` for a leaf it refuses). ``names``: the paths of a flat sequence
    at the top, one per item (a gradient mapping may still key them ``"0"``, ``"1"``...)."""
    params: list[tuple[str, Any]] = []
    held: list[tuple[str, Any]] = []
    kind = _container_kind(tree)
    if kind is None:
        node = _leaf("x", tree, is_param, params, held)
        return Flat(node, params, held)
    flat_root = kind in ("sequence", "namedtuple") and all(
        _container_kind(v) is None for _, v in _items(kind, tree)
    )
    if not flat_root or names is None or len(names) != len(tree):
        names = None
    node = _flatten(tree, kind, "", is_param, params, held, {id(tree)}, flat_root, names)
    return Flat(node, params, held)


def _leaf(
    path: str,
    value: Any,
    is_param: Callable[[str, Any], bool],
    params: list[tuple[str, Any]],
    held: list[tuple[str, Any]],
) -> TreeDef:
    if is_param(path, value):
        params.append((path, value))
        return TreeDef("param", n_params=1)
    held.append((path, value))
    return TreeDef("held", value=value)


def _flatten(
    tree: Any,
    kind: str,
    path: str,
    is_param: Callable[[str, Any], bool],
    params: list[tuple[str, Any]],
    held: list[tuple[str, Any]],
    on_path: set[int],
    flat_root: bool = False,
    names: Sequence[str] | None = None,
) -> TreeDef:
    keys, segments, paths, children = [], [], [], []
    for i, (key, value) in enumerate(_items(kind, tree)):
        if flat_root:  # a flat sequence at the top: its names, or "0", "1", ...
            segment = str(i)
            child_path = names[i] if names is not None else segment
        else:
            segment, child_path = _segment(kind, key, path)
        child_kind = _container_kind(value)
        if child_kind is None:
            child = _leaf(child_path, value, is_param, params, held)
        else:
            if id(value) in on_path:
                raise InvalidInputError(
                    f"params: expected a tree of containers, found {child_path!r} containing "
                    "itself (a cycle). Pass each parameter once, in a tree without cycles."
                )
            if len(on_path) >= MAX_DEPTH:
                shown = child_path if len(child_path) <= 80 else child_path[:80] + "..."
                raise InvalidInputError(
                    f"params: expected containers nested at most {MAX_DEPTH} deep, found "
                    f"deeper ones at {shown!r}. Flatten the tree (a dict of named arrays)."
                )
            child = _flatten(
                value, child_kind, child_path, is_param, params, held, on_path | {id(value)}
            )
        if kind == "mapping" and not isinstance(key, str) and child.n_params:
            where = f"at {path!r}" if path else "at the top level"
            raise InvalidInputError(
                f"params: expected string keys (parameter names), found key {key!r} of type "
                f"{type(key).__name__} {where}. Use names such as 'W1', 'b1'."
            )
        keys.append(key)
        segments.append(segment)
        paths.append(child_path)
        children.append(child)
    n_params = sum(c.n_params for c in children)
    if n_params == 0:
        return TreeDef("held", value=tree)
    return TreeDef(
        kind,
        type=type(tree),
        keys=tuple(keys),
        segments=tuple(segments),
        paths=tuple(paths),
        children=tuple(children),
        n_params=n_params,
    )


def unflatten(treedef: TreeDef, params: Sequence[Any]) -> Any:
    """Rebuild the tree around ``params`` (one per parameter leaf, in flattening order)."""
    if treedef.flat_dict:
        # The common case, rebuilt once per loss evaluation: a plain dict of arrays.
        return dict(zip(treedef.keys, params, strict=True))
    it = iter(params)
    return _build(treedef, it)


def _build(node: TreeDef, params: Any) -> Any:
    if node.kind == "param":
        return next(params)
    if node.kind == "held":
        return node.value
    values = [_build(child, params) for child in node.children]
    kind, cls = node.kind, node.type
    assert cls is not None
    if kind == "namedtuple":
        return cls(*values)  # p.W works as it does on the caller's
    if kind == "dataclass":
        return cls(**dict(zip(node.keys, values, strict=True)))
    if kind == "mapping":
        mapping = dict(zip(node.keys, values, strict=True))
        if cls is dict:
            return mapping
        try:
            return cls(mapping)
        except TypeError:
            return mapping
    if cls in (list, tuple):
        return cls(values)
    try:
        return cls(values)
    except TypeError:
        return tuple(values) if issubclass(cls, tuple) else list(values)


def match(treedef: TreeDef, other: Any, what: str = "grad") -> list[Any]:
    """The leaves of ``other`` at the paths of ``treedef``'s parameters, in order.

    ``other`` has the same structure, or one with the same paths: a mapping may stand for any
    container (keyed by the path segments), a sequence for a mapping (in key order), and an
    object with the attributes for a NamedTuple or dataclass. What stands at held leaves is
    ignored and may be left out.
    """
    out: list[Any] = []
    _match(treedef, other, "", what, out)
    return out


def _where(what: str, path: str) -> str:
    return f"{what} at {path!r}" if path else what


def _match(node: TreeDef, other: Any, path: str, what: str, out: list[Any]) -> None:
    if node.kind == "held":
        _check_held_gradient(node.value, other, path, what)
        return
    if node.kind == "param":
        out.append(other)
        return
    values = _children_of(node, other, path, what)
    for i, (child, value) in enumerate(zip(node.children, values, strict=True)):
        child_path = node.paths[i]
        if value is _MISSING and child.n_params:
            raise InvalidInputError(
                f"{_where(what, path)}: expected an entry {node.segments[i]!r} holding the "
                f"gradient of {child_path!r}, found none in {type(other).__name__}. Return the "
                "gradient in the structure of params (leaves held fixed may be left out)."
            )
        _match(child, value, child_path, what, out)


def check_held_by_path(treedef: TreeDef, by_path: Mapping[str, Any], what: str = "grad") -> None:
    """:func:`match`'s rule for held float scalars, for a gradient keyed by full paths."""
    # A stack, not a recursive closure: that would be a reference cycle holding the gradient
    # (as large as the parameters) until the garbage collector runs.
    if treedef.kind in ("held", "param"):
        return
    stack = [iter(zip(treedef.paths, treedef.children, strict=True))]
    while stack:  # depth first, children in order
        for path, child in stack[-1]:
            if child.kind == "held" and path in by_path:
                _check_held_gradient(child.value, by_path[path], path, what)
            elif child.kind not in ("held", "param"):
                stack.append(iter(zip(child.paths, child.children, strict=True)))
                break
        else:
            stack.pop()


def _check_held_gradient(held: Any, other: Any, path: str, what: str) -> None:
    """A float scalar is held fixed, not checked: a gradient that gives it a value of its own
    (not zero, not the held value passed through) expects a check that does not happen."""
    if not isinstance(held, (float, np.floating)) or other is _MISSING or other is None:
        return
    try:
        value = float(other)
    except (TypeError, ValueError):
        return
    if value != 0.0 and value != float(held):
        raise InvalidInputError(
            f"{_where(what, path)}: expected no gradient (params holds the float {held!r} "
            f"there fixed: a Python or numpy float scalar is not checked), found {other!r}. "
            "To check it, pass it as an array (np.array(x) or np.atleast_1d(x)) in params."
        )


def _children_of(node: TreeDef, other: Any, path: str, what: str) -> list[Any]:
    if isinstance(other, Mapping):
        names = node.keys if node.kind == "mapping" else node.segments
        _check_keys(node, names, other, path, what)
        return [other.get(k, _MISSING) for k in names]
    if isinstance(other, Sequence) and not isinstance(other, _TEXT) and node.kind != "dataclass":
        n = len(node.children)
        last = max(i for i, c in enumerate(node.children) if c.n_params)
        if not last < len(other) <= n:
            if not path:
                raise InvalidInputError(
                    f"{what}: expected {n} gradient arrays (one per parameter "
                    f"{list(node.segments)}), found {len(other)}."
                )
            raise InvalidInputError(
                f"{_where(what, path)}: expected {n} entries like params, found {len(other)}."
            )
        return [other[i] if i < len(other) else _MISSING for i in range(n)]
    if node.kind in ("namedtuple", "dataclass") and other is not None:
        return [getattr(other, k, _MISSING) for k in node.keys]
    like = {"mapping": "a mapping", "dataclass": f"a {node.type.__name__}"}.get(  # type: ignore[union-attr]
        node.kind, "a sequence"
    )
    raise InvalidInputError(
        f"{_where(what, path)}: expected {like} of gradients like params, found "
        f"{type(other).__name__}. Return the gradient in the structure of params."
    )


def _typed(keys: Sequence[Any]) -> str:
    """``['W', 0]`` shown with each key's type: ``['W' (str), 0 (int)]``."""
    return "[" + ", ".join(f"{k!r} ({type(k).__name__})" for k in keys) + "]"


def _check_keys(
    node: TreeDef, names: Sequence[Any], other: Mapping[Any, Any], path: str, what: str
) -> None:
    """A gradient mapping's keys must be the container's own (str) names; those of held
    children may be left out."""
    needed = [n for n, c in zip(names, node.children, strict=True) if c.n_params]
    missing = [n for n in needed if n not in other]
    extra = [k for k in other if k not in names]
    if not missing and not extra:
        return
    message = (
        f"{_where(what, path)}: expected the same names as params {_typed(names)}, found "
        f"{_typed(list(other))}"
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


def argument_names(
    fn: Callable[..., Any], count: int, prefix: str, *, taken: Sequence[str] = ()
) -> list[str]:
    """Names for ``count`` arrays passed positionally to ``fn``: the names of its first
    ``count`` positional parameters (``def f(x, w, b)``), or ``prefix0``, ``prefix1``... where
    it has none to give (``*args``, a builtin, too few) or they clash with ``taken``."""
    fallback = [f"{prefix}{i}" for i in range(count)]
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return fallback
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = []
    for parameter in parameters:
        if parameter.kind not in positional:
            break
        names.append(parameter.name)
    names = names[:count]
    if len(names) < count or set(names) & set(taken):
        return fallback
    return names


def unpacked_names(fn: Callable[..., Any], count: int) -> list[str] | None:
    """The names ``fn`` gives the ``count`` items of its first argument by unpacking it, as in
    ``def loss(params): W, b = params`` (``["W", "b"]``): the first such line among the
    statements of ``fn``'s body. None where it gives none: no such line, another count, a
    name repeated or starting with ``_``, or no Python source (a lambda, a builtin, a
    callable object, code typed at the prompt)."""
    target = inspect.unwrap(getattr(fn, "py_func", fn))  # a numba dispatcher's function
    bound = inspect.ismethod(target)  # its first argument is self
    target = target.__func__ if bound else target
    if not inspect.isfunction(target) or target.__name__ == "<lambda>":
        return None
    try:
        source = textwrap.dedent(inspect.getsource(target))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    node = next(
        (
            n
            for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == target.__name__
        ),
        None,
    )
    arguments = [*node.args.posonlyargs, *node.args.args][bound:] if node is not None else []
    if not arguments:
        return None
    first = arguments[0].arg
    for statement in node.body:  # type: ignore[union-attr]
        if not (
            isinstance(statement, ast.Assign)
            and isinstance(statement.value, ast.Name)
            and statement.value.id == first
        ):
            continue
        targets = statement.targets[0] if len(statement.targets) == 1 else None
        if not isinstance(targets, (ast.Tuple, ast.List)):
            return None
        found = [e.id if isinstance(e, ast.Name) else "" for e in targets.elts]
        ok = len(found) == count == len(set(found)) and all(n and n[0] != "_" for n in found)
        return found if ok else None
    return None
