"""Per-entry results of a finite-difference check, and merging two sets of them.

:class:`EntryResults` is what :mod:`gradprobe.checking.entries` produces and what the probes'
bisection, ties, diagnosis and verdict read: one row per checked entry, aligned with its flat
index.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EntryResults:
    """Per-entry outcome of a finite-difference check, aligned with ``flat_index``.

    ``step`` is the step behind ``numeric`` (half the central step actually taken; the smaller
    step for retried entries); ``retried`` marks entries re-evaluated at a smaller step;
    ``crossed`` those whose step crossed a non-differentiable point (their ``numeric`` is then
    not a derivative: a kink's, or the nearest one-sided difference for a failing entry, never
    reused as evidence elsewhere); ``tie_group`` numbers the entries of a tie that failed
    when moved together (:mod:`gradprobe.checking.ties`; -1 elsewhere, None when no tie failed);
    ``jump`` marks entries where the loss jumps (its change across the step does not shrink
    with the step: piecewise constant or discontinuous there). A jump is also a ``kink`` (no
    derivative to check there, never a failure of the gradient).
    """

    flat_index: np.ndarray
    analytic: np.ndarray
    numeric: np.ndarray
    abs_error: np.ndarray
    rel_error: np.ndarray
    allowed: np.ndarray
    passed: np.ndarray
    kink: np.ndarray
    step: np.ndarray
    retried: np.ndarray | None = None
    crossed: np.ndarray | None = None
    tie_group: np.ndarray | None = None
    jump: np.ndarray | None = None

    @property
    def reusable(self) -> np.ndarray:
        """Entries whose ``numeric`` is a plain derivative estimate (no kink crossed)."""
        crossed = self.kink if self.crossed is None else self.crossed | self.kink
        return ~crossed & np.isfinite(self.numeric)

    @property
    def size(self) -> int:
        return int(self.flat_index.size)

    @property
    def failed(self) -> np.ndarray:
        """Entries that fail and are not explained by a kink."""
        return ~self.passed & ~self.kink

    def worst_order(self) -> np.ndarray:
        """Positions, worst first: failures by how far past tolerance, then kinks, then the
        rest by relative error."""
        failed = self.failed
        if not failed.any() and not self.kink.any():  # every entry passed: the rest alone
            return np.argsort(-self.rel_error, kind="stable")
        failing = np.flatnonzero(failed)
        with np.errstate(invalid="ignore", divide="ignore"):
            excess = np.nan_to_num(self.abs_error[failing] / self.allowed[failing], nan=np.inf)
        failing = failing[np.argsort(-excess, kind="stable")]
        kinks = np.flatnonzero(self.kink)
        rest = np.flatnonzero(self.passed & ~self.kink)
        rest = rest[np.argsort(-self.rel_error[rest], kind="stable")]
        return np.concatenate([failing, kinks, rest])


def merge_entry_results(a: EntryResults, b: EntryResults) -> EntryResults:
    """Per-entry results of ``a`` and of the entries of ``b`` not in ``a``, sorted by index."""
    extra = ~np.isin(b.flat_index, a.flat_index)
    if not np.any(extra):
        return a
    order = np.argsort(np.concatenate([a.flat_index, b.flat_index[extra]]), kind="stable")
    merged = {}
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if (va is None) != (vb is None):  # an optional per-entry field only one side has
            fill: int | bool = -1 if f.name == "tie_group" else False
            va = np.full(a.size, fill) if va is None else va
            vb = np.full(b.size, fill) if vb is None else vb
        if isinstance(va, np.ndarray) and va.shape[:1] == a.flat_index.shape:
            merged[f.name] = np.concatenate([va, vb[extra]])[order]
        else:
            merged[f.name] = va
    return type(a)(**merged)
