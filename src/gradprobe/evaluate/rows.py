"""Rows computed when read: the replacement vectors of a probe, each written straight into
the evaluator's working copy instead of stored (:class:`ComputedRows`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


class ComputedRows:
    """Replacement vectors computed when a loop needs them rather than stored: row ``r`` is
    written by ``fill(r, out)`` into ``out`` (flat, the parameter's dtype), which may be the
    working copy it replaces, so a large parameter's vectors never exist apart from it.

    It slices (``rows[a:b]``, for chunks of rows), reads one row (``rows[r]``) and converts
    (``np.asarray(rows)``) like a stored ``(n_rows, size)`` array; pickled (for workers in
    another process) it becomes one, computed then.
    """

    def __init__(
        self,
        n_rows: int,
        size: int,
        dtype: np.dtype,
        fill: Callable[[int, np.ndarray], None],
        start: int = 0,
    ) -> None:
        self.shape = (n_rows, size)
        self.dtype = np.dtype(dtype)
        self._fill, self._start = fill, start

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def fill(self, r: int, out: np.ndarray) -> None:
        """Write row ``r`` (every entry) into ``out``."""
        self._fill(self._start + r, out)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice) -> Any:
        n_rows, size = self.shape
        if isinstance(key, slice):
            start, stop, step = key.indices(n_rows)
            if step != 1:
                raise IndexError("ComputedRows: only contiguous slices of rows")
            return ComputedRows(
                max(0, stop - start), size, self.dtype, self._fill, self._start + start
            )
        r = range(n_rows)[key]  # an int, negative or not; IndexError beyond the rows
        row = np.empty(size, dtype=self.dtype)
        self.fill(r, row)
        return row

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype)
        for r in range(self.shape[0]):
            self.fill(r, out[r])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return (np.asarray, (np.asarray(self),))
