"""The contraction: what :func:`gradprobe.check` is handed for a vector-valued function.

:class:`Contraction` is the scalar loss ``sum over output leaves of vdot(G, f(x))`` for a fixed
cotangent ``G`` (``B`` of them per call with ``batched=True``); :class:`Backward` calls the
user's VJP with a fresh copy of ``G`` and refuses one that writes into it. Outputs are
flattened by :func:`gradprobe.layout.normalize_params` (the same names and order as
parameters), after :func:`unshared` gives every output array its own memory (a function may
return one array twice) and zeroes non-finite entries, whose loss is then NaN.
:class:`Roles` carries what the user calls each piece (``f``/``vjp``, ``grad``/``hvp``,
``forward``/``backward``), for messages.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import GradCheckError, InvalidInputError
from ..layout import ParamLayout, normalize_params

#: Attribute set on the errors raised here, inside the check's loss and grad: their message
#: already speaks of f, vjp and the cotangent (not of the check's loss and grad).
IN_CALLER_TERMS = "_in_caller_terms"


def _mark(exc: GradCheckError) -> None:
    setattr(exc, IN_CALLER_TERMS, True)


@dataclass(frozen=True)
class Roles:
    """What the user calls the pieces, for messages: the forward function, the backward, the
    vector given to the backward, and the public function that was called."""

    f: str = "f"
    vjp: str = "vjp"
    cotangent: str = "cotangent"
    api: str = "check_vjp"
    #: What the check's grad stands for, when it is not ``vjp(inputs, cotangent)``.
    grad: str = ""

    @property
    def context(self) -> str:
        """One line for the end of an error message: what the check's loss and grad are."""
        grad = self.grad or f"{self.vjp}(inputs, {self.cotangent})"
        return (
            f"[{self.api}: the loss is sum({self.cotangent} * {self.f}(inputs)) with a random "
            f"{self.cotangent}, and grad is {grad}]"
        )


# -- flattening outputs ----------------------------------------------------------------------------
def unshared(value: Any, bad: list[np.ndarray], batched: bool) -> Any:
    """``value`` rebuilt with a private copy of every array (and numbers as 0-d arrays).
    Non-finite entries are set to 0 and their rows (leading axis when ``batched``) appended
    to ``bad``."""
    if isinstance(value, Mapping):
        items = {k: unshared(v, bad, batched) for k, v in value.items()}
        try:
            return type(value)(items)
        except TypeError:
            return items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: unshared(getattr(value, f.name), bad, batched)
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **fields)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(unshared(v, bad, batched) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(unshared(v, bad, batched) for v in value)
    if isinstance(value, (np.ndarray, np.generic)) or (
        isinstance(value, numbers.Number) and not isinstance(value, bool)
    ):
        arr = np.array(value, copy=True)
        if arr.dtype.kind == "f" and not np.all(finite := np.isfinite(arr)):
            rows = finite.reshape(arr.shape[0], -1) if batched and arr.ndim else finite
            bad.append(~rows.all(axis=-1) if batched and arr.ndim else np.bool_(True))
            arr[~finite] = 0
        return arr
    return value


@dataclass(frozen=True)
class Flat:
    """One output flattened: its layout, its arrays, and which rows held non-finite values
    (shape ``(lead,)`` in batched mode, ``()`` otherwise)."""

    layout: ParamLayout
    arrays: list[np.ndarray]
    bad: np.ndarray


def flatten(value: Any, who: str, where: str, batched: bool) -> Flat:
    """``value`` (what ``who`` returned ``where``) as :func:`normalize_params` lays it out."""
    bad: list[np.ndarray] = []
    try:
        layout, arrays, _ = normalize_params(unshared(value, bad, batched))
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"{who} {where}: expected float arrays (an array, or a tuple, list or dict of "
            f"them), found an output that is not: {exc}"
        ) from None
    if layout.fixed:
        raise InvalidInputError(
            f"{who} {where}: expected float arrays only (an array, or a tree of them), found "
            f"{', '.join(f'{path!r} ({what})' for path, what in layout.fixed)}. Return the "
            "differentiable outputs only, as floats."
        )
    mask = np.asarray(False)
    for rows in bad:  # shapes (1,) and (B,) in batched mode: broadcast
        mask = np.logical_or(mask, rows)
    return Flat(layout, arrays, mask)


def _own_arrays(value: Any, count: int) -> bool:
    return (
        type(value) is list
        and len(value) == count
        and all(type(a) is np.ndarray and a.dtype.kind == "f" for a in value)
    )


def _zero_nonfinite(layout: ParamLayout, arrays: list[np.ndarray], batched: bool) -> Flat:
    """:func:`flatten` of a list of private float arrays laid out as ``layout``: non-finite
    entries set to 0 in place, their rows marked."""
    mask = np.asarray(False)
    for arr in arrays:
        finite = np.isfinite(arr)
        if not finite.all():
            if batched and arr.ndim:
                mask = np.logical_or(mask, ~finite.reshape(arr.shape[0], -1).all(axis=-1))
            else:
                mask = np.asarray(True)
            arr[~finite] = 0
    return Flat(layout, arrays, mask)


def same_structure(flat: Flat, expected: ParamLayout, who: str, where: str, batched: bool) -> None:
    """Raise unless ``flat`` has the names and shapes (after the batch axis) of ``expected``."""
    shapes = [a.shape[1:] if batched else a.shape for a in flat.arrays]
    if flat.layout.names == expected.names and all(
        s == e for s, e in zip(shapes, expected.shapes, strict=True)
    ):
        return
    found = dict(zip(flat.layout.names, [a.shape for a in flat.arrays], strict=True))
    raise InvalidInputError(
        f"{who} {where}: expected outputs {dict(zip(expected.names, expected.shapes, strict=True))}"
        f"{' after the leading batch axis' if batched else ''} (as at the inputs), found "
        f"{found}. Return the same structure and shapes for every input."
    )


def contract(flat: Flat, cotangent: Sequence[np.ndarray], batched: bool, lead: int) -> Any:
    """``sum vdot(G, y)`` over the leaves (in float64), per row when ``batched``."""
    if not batched:
        total = sum(
            float(a.reshape(-1).astype(np.float64, copy=False) @ g)
            for a, g in zip(flat.arrays, cotangent, strict=True)
        )
        return np.nan if flat.bad.any() else total
    out = np.zeros(lead)
    for a in flat.arrays:
        if a.shape[0] not in (1, lead):
            raise InvalidInputError(
                f"outputs with batched=True and {lead} copies: expected a leading axis of 1 or "
                f"{lead}, found shape {a.shape}."
            )
    for a, g in zip(flat.arrays, cotangent, strict=True):
        out += a.reshape(a.shape[0], -1).astype(np.float64, copy=False) @ g
    bad = np.broadcast_to(flat.bad, (lead,))
    return np.where(bad, np.nan, out) if bad.any() else out


def leading(value: Any) -> int:
    """The largest leading-axis length among the arrays of a (batched) container."""
    if isinstance(value, np.ndarray):
        return int(value.shape[0]) if value.ndim else 1
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return max((leading(v) for v in value), default=1)
    return 1


# -- the loss and the gradient handed to check() ------------------------------------------------
def call_user(fn: Any, args: tuple[Any, ...], static: Mapping[str, Any], who: str) -> Any:
    """``fn(*args, **static)``; a write into a read-only array becomes a clear error."""
    try:
        return fn(*args, **static)
    except GradCheckError as exc:
        _mark(exc)
        raise
    except ValueError as exc:
        if "read-only" in str(exc):
            raise _read_only_error(exc, who) from exc
        raise


def _read_only_error(exc: ValueError, who: str) -> InvalidInputError:
    error = InvalidInputError(
        f"{who}: wrote into an array it was given ({exc}): gradprobe passes static "
        "arguments (and, with batched=True, the inputs not being perturbed) read-only. Fix: "
        "work on a copy (arr.copy()) or use out-of-place operations."
    )
    _mark(error)
    return error


class Contraction:
    """The scalar loss ``sum vdot(G, f(x))`` (``B`` of them per call when batched).

    ``private``: ``f`` returns a list of numpy float arrays of its own (an adapter's, which
    converts the framework's outputs to fresh arrays), laid out as ``out``: they are used as
    they are, without the copy and layout checks a user's function gets (~0.3 ms a call, as
    much as a tiny op itself).

    ``stacks_points`` (set by an adapter): a batched call may give every input the same
    leading axis of ``B`` copies, not only the perturbed one.
    """

    stacks_points = False

    def __init__(
        self,
        f,
        static,
        out: ParamLayout,
        cotangent,
        batched: bool,
        roles: Roles,
        private: bool = False,
    ):
        self.f, self.static, self.out, self.batched, self.roles = f, static, out, batched, roles
        self.cotangent = [np.asarray(g, dtype=np.float64).reshape(-1) for g in cotangent]
        self.private = private

    def __call__(self, inputs: Any) -> Any:
        value = call_user(self.f, (inputs,), self.static, self.roles.f)
        try:
            where = "at perturbed inputs"
            if self.private and _own_arrays(value, len(self.out.names)):
                flat = _zero_nonfinite(self.out, value, self.batched)
            else:
                flat = flatten(value, f"{self.roles.f}'s output", where, self.batched)
            same_structure(flat, self.out, f"{self.roles.f}'s output", where, self.batched)
            lead = leading(inputs) if self.batched else 1
            return contract(flat, self.cotangent, self.batched, lead)
        except GradCheckError as exc:
            _mark(exc)
            raise


class Backward:
    """``vjp(x, G)`` on a fresh copy of ``G``, refused when it writes into that copy."""

    def __init__(self, vjp, static, out: ParamLayout, cotangent, roles: Roles):
        self.vjp, self.static, self.out, self.cotangent, self.roles = (
            vjp,
            static,
            out,
            list(cotangent),
            roles,
        )

    def __call__(self, inputs: Any) -> Any:
        given = [g.copy() for g in self.cotangent]
        value = call_user(self.vjp, (inputs, self.out.pack(given)), self.static, self.roles.vjp)
        changed = [
            n
            for n, a, b in zip(self.out.names, given, self.cotangent, strict=True)
            if not np.array_equal(a, b)
        ]
        if changed:
            r = self.roles
            exc = InvalidInputError(
                f"{r.vjp}: expected it to leave the {r.cotangent} it is given unchanged, found "
                f"{changed if len(self.out.names) > 1 else 'it'} modified after one call (an "
                "in-place update such as g *= mask or g[x <= 0] = 0). In a network the same "
                "array feeds other branches, and gradprobe reuses it. Fix: g = g * mask, or "
                "work on g.copy()."
            )
            _mark(exc)
            raise exc
        return value


# -- static arguments ------------------------------------------------------------------------------
def freeze_static(static: Any) -> dict[str, Any]:
    """Keyword arguments passed unchanged to f and vjp; arrays as read-only private copies."""
    if static is None:
        return {}
    if not isinstance(static, Mapping) or not all(isinstance(k, str) for k in static):
        raise InvalidInputError(
            f"static: expected a mapping of keyword names (str) to values passed unchanged to "
            f"the functions (data, labels, masks), found {type(static).__name__}. Pass e.g. "
            "static={'y': labels}."
        )
    out: dict[str, Any] = {}
    for key, value in static.items():
        if isinstance(value, np.ndarray):
            value = np.array(value, copy=True)
            value.flags.writeable = False
        out[key] = value
    return out
