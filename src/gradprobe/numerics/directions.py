"""Random unit directions drawn again in pieces instead of stored, and sums taken piece by
piece that are bit for bit numpy's.

:class:`Directions` (built on :class:`Normals`) stands for ``v = rng.standard_normal((k, n))`` with each row divided by
``np.sqrt(np.sum(row * row))``, and leaves ``rng`` where that draw leaves it; but it keeps only
the generator's state where each piece of a row starts and each row's norm, so no ``(k, n)``
array exists (``k`` times the parameter's size): a piece is drawn again from its state when it
is needed. Normal draws take a variable number of bits each, so a piece cannot be jumped to
without its saved state.

Reproducing ``np.sum`` piece by piece: numpy sums a contiguous float array pairwise, halving
it (each half a multiple of 8 long) down to blocks of at most 128 entries (numpy 2.2 first
cuts a long array in blocks of its buffer size, 8192 entries, summed one after another). :func:`pairwise`
walks the same tree down to nodes of at most ``leaf`` entries, sums each with ``np.sum`` (the
same subtree) and adds the nodes up the tree in numpy's order, so the result is ``np.sum`` of
the whole range to the last bit (tests/numerics/test_directions.py checks it against
numpy's). :func:`numpy_sum` is the same for a short list of Python floats, in Python (a
dozen values, where numpy's per-call cost would dominate).
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: Entries per piece: a piece's float64 temporaries stay far below a large parameter, and
#: below the 128 KiB from which the C allocator maps memory afresh (page faults at each use).
LEAF = 16000

#: Draws of at most this many bytes in all are kept rather than drawn again: drawing costs
#: about as much as the arithmetic of a pass over them, and a small parameter's copies do not
#: weigh on memory (a large one's would).
STORE_BYTES = 4 * 2**20


#: Up to this many values numpy sums in one pairwise block (its PW_BLOCKSIZE).
_NUMPY_BLOCK = 128


def numpy_sum(values: Sequence[float]) -> float:
    """``np.sum`` of a short float64 sequence, to the bit, in Python: one after another below
    8 values, else 8 running sums joined as a tree, the rest added after (numpy's pairwise
    summation within one block); ``np.sum`` itself beyond a block."""
    n = len(values)
    if n > _NUMPY_BLOCK:
        return float(np.sum(np.asarray(values, dtype=np.float64)))
    if n < 8:
        total = 0.0
        for v in values:
            total += v
        return total
    r = list(values[:8])
    full = n - n % 8
    for i in range(8, full, 8):
        for k in range(8):
            r[k] += values[i + k]
    total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for v in values[full:]:
        total += v
    return total


def pairwise(lo: int, hi: int, leaf_sums: Callable[[int, int], Any], leaf: int = LEAF) -> Any:
    """``leaf_sums(a, b)`` over the nodes of numpy's pairwise-sum tree of ``lo:hi`` no longer
    than ``leaf`` (left to right), added up the tree in numpy's order.

    ``leaf_sums`` returns ``np.sum`` of its node's values (or an array of several such sums,
    added elementwise): the total is then ``np.sum`` over ``lo:hi`` bit for bit. (Older numpy,
    2.2 for one, sums a long array in blocks of its buffer size, one tree each, added one after
    another: :func:`numpy_block`.)
    """
    if hi - lo <= int(np.getbufsize()):  # within one buffer: one tree in every numpy
        return _tree(lo, hi, leaf_sums, leaf)
    block = numpy_block()
    if block is None or hi - lo <= block:
        return _tree(lo, hi, leaf_sums, leaf)
    total = _tree(lo, lo + block, leaf_sums, leaf)
    for a in range(lo + block, hi, block):
        total = total + _tree(a, min(hi, a + block), leaf_sums, leaf)
    return total


def _tree(lo: int, hi: int, leaf_sums: Callable[[int, int], Any], leaf: int) -> Any:
    m = hi - lo
    if m <= leaf:
        return leaf_sums(lo, hi)
    half = m // 2
    half -= half % 8
    left = _tree(lo, lo + half, leaf_sums, leaf)
    return left + _tree(lo + half, hi, leaf_sums, leaf)


@functools.cache
def numpy_block() -> int | None:
    """How this numpy sums a long contiguous float64 array: one pairwise tree (None), or one
    tree per block of its buffer size, added one after another (the block's size). Found on
    first use, not at import: the probe's sums cost ~10 ms, which every process importing
    gradprobe would pay (the command line, each worker)."""
    block = int(np.getbufsize())
    rng = np.random.default_rng(0)
    for n in (2 * block + 3627, 4 * block + 1011, 12 * block + 7):
        a = rng.standard_normal(n) * 1e3
        if _tree(0, n, lambda x, y, a=a: np.sum(a[x:y]), 128) != np.sum(a):
            return block
    return None


def pairwise_nodes(n: int, leaf: int = LEAF) -> list[tuple[int, int]]:
    """The nodes :func:`pairwise` sums over ``0:n``, left to right."""
    nodes: list[tuple[int, int]] = []

    def visit(a: int, b: int) -> int:
        nodes.append((a, b))
        return 0

    pairwise(0, n, visit, leaf)
    return nodes


class Normals:
    """Standard normal draws from ``rng`` for segments of ``sizes`` entries, one after the
    other (``[rng.standard_normal(m) for m in sizes]``, which leaves ``rng`` where that leaves
    it), drawn again in pieces when read (:meth:`values`) rather than stored.

    ``squares[s]`` is ``np.sum(z * z)`` over segment ``s`` (to the bit). Draws of at most
    :data:`STORE_BYTES` in all are kept instead (:attr:`stored`; :meth:`values` is then a
    view). Reading is thread-safe (each thread draws with
    its own generator).
    """

    def __init__(self, rng: np.random.Generator, sizes: Sequence[int], leaf: int = LEAF) -> None:
        self.sizes, self.leaf = [int(m) for m in sizes], leaf
        self.stored = 8 * sum(self.sizes) <= STORE_BYTES
        self._pieces = [pairwise_nodes(m, leaf) if m else [] for m in self.sizes]
        self._starts = [[a for a, _ in p] for p in self._pieces]
        self._kind = type(rng.bit_generator)
        self._states: list[list[dict[str, Any]]] = []
        self._rows: list[np.ndarray] = []  # the draws, when stored
        self.squares: list[np.float64] = []
        bits = rng.bit_generator
        for m in self.sizes:
            states: list[dict[str, Any]] = []
            row = np.empty(m if self.stored else 0)

            def squares(
                a: int, b: int, states: list[dict[str, Any]] = states, row: np.ndarray = row
            ) -> np.float64:
                states.append(bits.state)  # the tree's nodes come left to right: in draw order
                z = rng.standard_normal(b - a)
                if self.stored:
                    row[a:b] = z
                return np.sum(z * z)

            self.squares.append(pairwise(0, m, squares, leaf) if m else np.float64(0.0))
            self._states.append(states)
            self._rows.append(row)
        self._local = threading.local()
        self._last: tuple[int, int, np.ndarray] | None = None

    def _scaled(self, s: int, z: np.ndarray) -> np.ndarray:
        """Draws of segment ``s`` as :meth:`values` returns them, in place (here: as drawn)."""
        return z

    def _piece(self, s: int, i: int) -> np.ndarray:
        """Piece ``i`` of segment ``s`` drawn again (a fresh array, never written)."""
        last = self._last  # one tuple read: safe while another thread replaces it
        if last is not None and last[0] == s and last[1] == i:
            return last[2]
        gen = getattr(self._local, "gen", None)
        if gen is None:
            gen = self._local.gen = np.random.Generator(self._kind(0))
        gen.bit_generator.state = self._states[s][i]
        a, b = self._pieces[s][i]
        z = self._scaled(s, gen.standard_normal(b - a))
        self._last = (s, i, z)
        return z

    def values(self, s: int, lo: int, hi: int) -> np.ndarray:
        """Entries ``lo:hi`` of segment ``s`` (float64; read only: it may be shared)."""
        if self.stored:
            return self._rows[s][lo:hi]
        pieces = self._pieces[s]
        i = bisect.bisect_right(self._starts[s], lo) - 1
        parts = []
        while lo < hi:
            a, b = pieces[i]
            stop = min(b, hi)
            parts.append(self._piece(s, i)[lo - a : stop - a])
            lo, i = stop, i + 1
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.empty(0)

    def spans(self, s: int, lo: int, hi: int) -> list[tuple[int, int]]:
        """``lo:hi`` of segment ``s`` cut at its pieces' bounds: the ranges to compute at a
        time. Each is within one piece (drawn again once for all that reads it) of at most
        ``leaf`` entries, so temporaries stay small (below the size that the C allocator maps
        afresh, and faults in, at each use), even where the draws are stored."""
        pieces = self._pieces[s]
        i = bisect.bisect_right(self._starts[s], lo) - 1
        out = []
        while lo < hi:
            stop = min(pieces[i][1], hi)
            out.append((lo, stop))
            lo, i = stop, i + 1
        return out

    def row(self, s: int) -> np.ndarray:
        """Segment ``s`` in full (a new array)."""
        if self.stored:
            return self._rows[s].copy()
        out = np.empty(self.sizes[s])
        for i, (a, b) in enumerate(self._pieces[s]):
            out[a:b] = self._piece(s, i)
        return out


class Directions(Normals):
    """``k`` random unit directions over ``n`` entries: ``v = rng.standard_normal((k, n))``
    with each row divided by ``np.sqrt(np.sum(row * row))``, drawn again in pieces when read
    (:meth:`values`, :meth:`row`) unless small enough to be stored."""

    def __init__(self, rng: np.random.Generator, k: int, n: int, leaf: int = LEAF) -> None:
        super().__init__(rng, [n] * k, leaf)
        self.k, self.n = k, n
        self.norms = [np.sqrt(q) for q in self.squares]
        for row, norm in zip(self._rows, self.norms, strict=True):
            row /= norm  # stored rows (empty otherwise), as pieces drawn again are

    def _scaled(self, s: int, z: np.ndarray) -> np.ndarray:
        z /= self.norms[s]
        return z
