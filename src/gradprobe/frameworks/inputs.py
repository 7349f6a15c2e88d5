"""Which inputs of a framework function are checked, and what is held fixed (both adapters).

:func:`checked_leaves` picks the floating-point tensors among the inputs' leaves (inside lists
and tuples too), named by :func:`leaf_names` after the function's arguments (``x``,
``w[2]``) or ``input0``, ``input1[2]``... by position; a refusal names each leaf's dtype.
:class:`Held` takes out what :func:`gradprobe.check` cannot perturb: an empty tensor among
others (nothing to check there) and non-finite entries (a masked ``-inf``), which are held at
their values in every call, get a gradient of zero, and are listed in the report as not
checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..functional.adapted import mapped_inputs


@dataclass
class Checked:
    """The checked leaves: their positions among all leaves, names, and notes."""

    positions: list[int]
    names: list[str]
    not_checked: list[str] = field(default_factory=list)


def leaf_names(
    inputs: Sequence[Any],
    flatten: Callable[[Any], tuple[list[Any], Any]],
    prefixes: Sequence[str] | None = None,
) -> list[str]:
    """``prefixes[i]`` (default ``input{i}``) for an input that is a leaf itself,
    ``prefixes[i][j]`` for the leaves of one that is a list or tuple (in ``flatten``'s order)."""
    prefixes = prefixes or [f"input{i}" for i in range(len(inputs))]
    names = []
    for prefix, value in zip(prefixes, inputs, strict=True):
        leaves, _ = flatten(value)
        if len(leaves) == 1 and leaves[0] is value:
            names.append(prefix)
        else:
            names += [f"{prefix}[{j}]" for j in range(len(leaves))]
    return names


def checked_leaves(
    leaves: Sequence[Any],
    names: Sequence[str],
    is_float: Callable[[Any], bool],
    wanted: Callable[[Any], bool],
    kind: str,
) -> Checked:
    """The floating-point leaves for which ``wanted`` holds, else every floating-point leaf."""
    floats = [i for i, a in enumerate(leaves) if is_float(a)]
    if not floats:
        described = (f"{n}: {_describe(a)}" for n, a in zip(names, leaves, strict=True))
        found = "; ".join(described) or "no inputs"
        complex_hint = ""
        if any("complex" in str(getattr(a, "dtype", "")) for a in leaves):
            complex_hint = (
                " A complex input is not checked: pass its real and imaginary parts as two "
                "real inputs (torch.view_as_real, or x.real and x.imag) and rebuild it in fn."
            )
        raise InvalidInputError(
            f"inputs: expected at least one floating-point {kind} to check, found {found}. Pass "
            "the arrays fn differentiates, in float32 or float64 (an integer or bool one is "
            f"passed as it is, not checked).{complex_hint}"
        )
    chosen = [i for i in floats if wanted(leaves[i])] or floats
    return Checked(chosen, [names[i] for i in chosen])


def _describe(value: Any) -> str:
    """``Tensor of dtype torch.int64``, ``int``."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and hasattr(value, "shape"):
        return f"{type(value).__name__} of dtype {dtype}"
    return type(value).__name__


@dataclass
class Held:
    """The checked inputs as :func:`gradprobe.check` sees them (``base``: empty ones left out,
    non-finite entries set to 0) and the way back to every input's full value."""

    names: list[str]
    original: dict[str, np.ndarray]
    base: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    notes: list[str]

    def arrays(
        self, params: Mapping[str, np.ndarray], batched: bool = False
    ) -> tuple[list[np.ndarray], list[bool]]:
        """Every checked input in order, the held entries at their values, and (batched) which
        are mapped over their leading axis; the others come without their size-1 axis."""
        mapped: dict[str, bool] = {}
        if batched:
            live = [params[n] for n in self.base]
            mapped = dict(zip(self.base, mapped_inputs(live), strict=True))
        out, maps = [], []
        for n in self.names:
            if n not in self.base:
                out.append(self.original[n])
                maps.append(False)
                continue
            a = params[n]
            if batched and not mapped[n]:
                a = a[0]
            if n in self.masks:
                a = np.array(a, copy=True)
                a[..., self.masks[n]] = self.original[n][self.masks[n]]
            out.append(a)
            maps.append(batched and mapped[n])
        return out, maps

    def gradient(self, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``grads`` with zeros at the held entries (they are not perturbed either)."""
        for n, mask in self.masks.items():
            grads[n] = np.where(mask, 0, grads[n]).astype(grads[n].dtype)
        return grads


def hold_fixed(base: Mapping[str, np.ndarray]) -> Held:
    """:class:`Held` for ``base``; refused when nothing is left to check."""
    live: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for n, a in base.items():
        if a.size == 0:
            notes.append(f"{n} (empty, shape {a.shape}: nothing to check)")
            continue
        bad = ~np.isfinite(a)
        if bad.all():
            notes.append(f"{n} (no finite entry: held fixed)")
            continue
        if bad.any():
            masks[n] = bad
            notes.append(f"{n} ({int(bad.sum())} non-finite entries held fixed)")
            a = np.where(bad, 0, a).astype(a.dtype)
        live[n] = a
    if not live:
        raise InvalidInputError(
            f"inputs: expected at least one finite entry to check, found only "
            f"{'; '.join(notes)}. Pass inputs with entries to perturb."
        )
    return Held(list(base), dict(base), live, masks, notes)
