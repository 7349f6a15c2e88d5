"""Whether the loss or grad wrote into the arrays it was given, and the error that says so.

The pre-flight compares what a call was given with a reference after the call: the check's
base copies, or the caller's own arrays where the call was given the base copies themselves.
The comparison goes a block of rows at a time: it runs while the check holds the most copies
of the parameters, and a boolean array as large as one would add to that peak.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError
from ..layout import ParamLayout

#: Entries compared at a time by :func:`arrays_equal`.
COMPARE_BLOCK = 1 << 18


def arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal(a, b)`` (NaN unequal), a block of rows at a time."""
    if a.shape != b.shape:
        return False
    if a.ndim == 0 or a.size <= COMPARE_BLOCK:
        return bool(np.array_equal(a, b))
    rows = max(1, COMPARE_BLOCK * a.shape[0] // a.size)
    return all(
        np.array_equal(a[i : i + rows], b[i : i + rows]) for i in range(0, a.shape[0], rows)
    )


def mutated(
    layout: ParamLayout, given: Sequence[np.ndarray], reference: Sequence[np.ndarray]
) -> list[str]:
    """The parameters whose ``given`` array differs from its ``reference``, and the held-fixed
    leaves changed since the check began (they are the caller's own arrays)."""
    return [
        name
        for name, g, r in zip(layout.names, given, reference, strict=True)
        if not arrays_equal(g, r)  # parameters are finite (validated): no NaN to equate
    ] + layout.changed_fixed()


def mutation_error(who: str, names: list[str]) -> InvalidInputError:
    """``who`` ("loss" or "grad") modified the parameters ``names``: what to do instead."""
    return InvalidInputError(
        f"{who}: expected it to leave the parameters it is given unchanged, found {names} "
        f"modified after one call (an in-place update such as p[name] -= ..., p[name] *= ..., "
        f"np.clip(..., out=...) or a normalization in place). gradprobe calls the {who} many "
        "times on the same arrays, so every later result would be wrong. Fix: work on a copy "
        "(p[name].copy()) or use out-of-place operations."
    )
