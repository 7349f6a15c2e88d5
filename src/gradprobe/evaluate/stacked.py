"""Whole points in one batched call: every parameter stacked along the leading axis.

A loss that takes every parameter with the same leading axis (an adapter's vmap: its
``stacks_points``) evaluates points that move several parameters at once, or blocks of
several parameters' entries, in one call. :class:`StackedPoints` keeps an evaluator's stacked
calls: whether one stood in for direct calls (``verified``, the noise estimate's check at its
centre), the entry blocks evaluated ahead, and those waiting to go with the next stacked call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..errors import CheckAborted
from .threads import one_blas_thread


class Evaluator(Protocol):
    """What a stacked call needs of :class:`~gradprobe.evaluate.base.Evaluator` (which sits
    above this module)."""

    loss: Any
    base: list[np.ndarray]

    @property
    def rows(self) -> Any: ...

    def charge(self, n: int) -> None: ...


#: Bytes of copies one stacked call may hold: what stays in a core's cache; larger parameters
#: are evaluated point by point, holding one copy at a time.
STACKED_BYTES = 2**20

#: Rows the first stacked call keeps for its own points (the noise estimate's 9) beside the
#: blocks that wait for it.
FIRST_CALL_ROOM = 16

Request = tuple[int, np.ndarray, np.ndarray]


def block_key(param: int, flat_index: np.ndarray, values: np.ndarray) -> tuple[int, bytes, bytes]:
    """An entry block's identity: the parameter, its entries and their values."""
    return param, np.ascontiguousarray(flat_index).tobytes(), np.ascontiguousarray(values).tobytes()


def block_points(
    base: Sequence[np.ndarray], requests: Sequence[Request], rows: int
) -> list[np.ndarray]:
    """Every parameter at each row of the entry blocks ``requests``, stacked: one entry of one
    parameter perturbed per row, all else at ``base``; ``rows`` in all."""
    stacked = [np.repeat(b.reshape(1, -1), rows, axis=0) for b in base]
    start = 0
    for param, flat_index, values in requests:
        m, k = values.shape
        which = start + np.arange(m * k)
        stacked[param][which, np.repeat(flat_index, k)] = values.reshape(-1)
        start += m * k
    return [a.reshape(rows, *b.shape) for a, b in zip(stacked, base, strict=True)]


class StackedPoints:
    """An evaluator's stacked calls and the entry blocks they answered ahead."""

    def __init__(self) -> None:
        #: Whether a stacked call stood in for direct ones at the base point; None until tried.
        self.verified: bool | None = None
        self.ready: dict[tuple[int, bytes, bytes], np.ndarray] = {}
        self.pending: list[Request] = []

    @staticmethod
    def possible(ev: Evaluator, n_points: int) -> bool:
        """Whether ``n_points`` whole points go in one call: a batched loss that takes every
        parameter stacked, the copies within :data:`STACKED_BYTES`."""
        return (
            getattr(ev.rows, "stacked_losses", None) is not None
            and getattr(ev.loss, "stacks_points", False)
            and n_points * sum(b.nbytes for b in ev.base) <= STACKED_BYTES
        )

    def losses(self, ev: Evaluator, points: Sequence[np.ndarray], where: str) -> np.ndarray:
        """The losses at ``points`` in one call, with the blocks waiting (where they fit)."""
        n = len(points[0])
        pending, self.pending = self.pending, []
        rows = sum(values.size for _, _, values in pending)
        if pending and self.possible(ev, n + rows):
            blocks = block_points(ev.base, pending, rows)
            points = [np.concatenate([p, b]) for p, b in zip(points, blocks, strict=True)]
        else:
            pending = []
        ev.charge(len(points[0]))
        with one_blas_thread():
            losses = ev.rows.stacked_losses(ev, points, where)  # type: ignore[attr-defined]
        self._keep(pending, losses[n:])
        return losses[:n]

    def refuse(self) -> None:
        """A stacked call could not stand in for direct ones: none is made from now on, and
        the blocks answered ahead are dropped (each is evaluated when asked for)."""
        self.verified = False
        self.ready.clear()
        self.pending = []

    def wanted(self, ev: Evaluator) -> bool:
        """Whether blocks sent ahead may go in a stacked call."""
        return self.verified is not False and self.possible(ev, 1)

    def prefetch(self, ev: Evaluator, requests: Sequence[Request]) -> bool:
        """Take the blocks ``requests`` (True) or leave them to the placement (False).

        Before the first stacked call (the noise estimate's) they wait to go with it, where
        they fit beside its points (:data:`FIRST_CALL_ROOM`); once one stood in for direct
        calls, those not answered yet go in one of their own, where they fit. The decision
        depends on sizes alone, never on the placement, so the numbers do not either."""
        new = [r for r in requests if block_key(*r) not in self.ready]
        rows = sum(values.size for _, _, values in new)
        if self.verified is None:
            if not self.possible(ev, rows + FIRST_CALL_ROOM):
                return False
            self.pending = new
            return True
        if not self.verified or not self.possible(ev, rows):
            return False
        if not new:
            return True
        try:
            self._keep(
                new, self.losses(ev, block_points(ev.base, new, rows), "at perturbed entries")
            )
        except CheckAborted:
            raise
        except Exception:  # each block is evaluated again when asked for, its error located
            self.refuse()
        return True

    def take(self, param: int, flat_index: np.ndarray, values: np.ndarray) -> np.ndarray | None:
        """The losses of a block answered ahead (once), or None."""
        if not self.ready:
            return None
        return self.ready.pop(block_key(param, flat_index, values), None)

    def _keep(self, requests: Sequence[Request], losses: np.ndarray) -> None:
        start = 0
        for param, flat_index, values in requests:
            m, k = values.shape
            self.ready[block_key(param, flat_index, values)] = losses[
                start : start + m * k
            ].reshape(m, k)
            start += m * k
