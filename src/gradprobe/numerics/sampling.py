"""Choosing which entries of a parameter to check one by one: a stratified sample.

Pure functions: a seeded ``numpy.random.Generator`` and the analytic gradient in, sorted flat
index arrays and per-stratum counts out. Nothing here evaluates a loss.

The sample is built in this order, each stratum skipping entries already taken:

1. ``edges``: the first and last entries (off-by-one bugs live at the edges);
2. ``extremes``: the entries with the largest and smallest ``|analytic|``;
3. ``zero gradient``: entries whose analytic gradient is exactly zero (a forgotten term often
   leaves zeros), up to a sixteenth of the budget;
4. ``magnitude``: equal quotas from quantile bins of the nonzero ``|analytic|`` (so small and
   large gradients are both represented, not just the typical ones), half the budget;
5. ``position``: the rest, spread so that every slice along the leading axis (each output
   unit's row) and along the trailing axis (each column) gets an entry when the budget allows:
   pick ``j`` pairs the ``j``-th row and column of independently shuffled orders;
6. uniform top-up from entries not yet taken, when collisions left the sample short.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Quantile bins of the nonzero ``|analytic|`` for the magnitude stratum.
MAGNITUDE_BINS = 8

#: Stratum names, in the order they are filled.
STRATA = ("edges", "extremes", "zero gradient", "magnitude", "position", "uniform")


@dataclass(frozen=True)
class Sample:
    """Entries of one parameter chosen for individual checks.

    Attributes
    ----------
    flat_index : ndarray of int64
        Sorted, distinct flat indices.
    strata : mapping of str to int
        How many of those entries each stratum contributed (sums to ``flat_index.size``).
    n_total : int
        Entries in the parameter.
    rows_covered, cols_covered : int
        Distinct slices along the leading / trailing axis that hold a sampled entry.
    n_rows, n_cols : int
        Slices along the leading / trailing axis (1 for a scalar).
    """

    flat_index: np.ndarray
    strata: Mapping[str, int]
    n_total: int
    rows_covered: int = 0
    cols_covered: int = 0
    n_rows: int = 1
    n_cols: int = 1

    @property
    def size(self) -> int:
        return int(self.flat_index.size)

    @property
    def complete(self) -> bool:
        """Every entry is in the sample."""
        return self.size == self.n_total

    @property
    def kind(self) -> str:
        """``"all"`` when complete, else ``"stratified"``."""
        return "all" if self.complete else "stratified"


class _Picker:
    """Accumulates distinct flat indices, remembering which stratum took each."""

    def __init__(self, n_total: int, budget: int, exclude: np.ndarray | None = None) -> None:
        self.taken = np.zeros(n_total, dtype=bool)
        if exclude is not None:
            self.taken[exclude] = True
        self.order: list[np.ndarray] = []
        self.counts: dict[str, int] = dict.fromkeys(STRATA, 0)
        self.budget = budget
        self.n = 0

    @property
    def left(self) -> int:
        return self.budget - self.n

    def add(self, stratum: str, candidates: np.ndarray, limit: int | None = None) -> None:
        """Take candidates in the given order, skipping duplicates, up to ``limit`` new ones."""
        limit = self.left if limit is None else min(limit, self.left)
        if limit <= 0 or candidates.size == 0:
            return
        candidates = np.asarray(candidates, dtype=np.int64)
        # First occurrence of each candidate, in order, then drop those already taken; on a
        # growing prefix (the same first ``limit``), not on all of a parameter-sized list.
        size = 4 * limit + 64
        while True:
            part = candidates[:size]
            _, first = np.unique(part, return_index=True)
            fresh = part[np.sort(first)]
            fresh = fresh[~self.taken[fresh]][:limit]
            if fresh.size == limit or size >= candidates.size:
                break
            size *= 4
        self.taken[fresh] = True
        self.order.append(fresh)
        self.counts[stratum] += int(fresh.size)
        self.n += int(fresh.size)


def _row_col_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(rows, middle, cols) view of a shape: leading axis, everything between, trailing axis."""
    if len(shape) == 0:
        return 1, 1, 1
    if len(shape) == 1:
        return shape[0], 1, 1
    return shape[0], math.prod(shape[1:-1]), shape[-1]


#: Parameters of fewer entries find their ranks by a stable sort (measured: faster up to a
#: few thousand entries, slower beyond).
SORT_BELOW = 6000


def _magnitudes(analytic: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``|analytic|`` flat in float64 (into ``out`` when given), NaN ranked as the largest
    magnitude (a NaN gradient is the first thing to show); zero exactly where it is."""
    ranked = np.abs(analytic.reshape(-1), out=out, dtype=np.float64)
    np.copyto(ranked, np.inf, where=np.isnan(ranked))
    return ranked


def _entries_at_ranks(
    values: np.ndarray, ranks: np.ndarray, refill: Callable[[np.ndarray], Any] | None = None
) -> np.ndarray:
    """Positions in ``values`` (no NaN) of the entries at ``ranks`` of its stable ascending
    order (ties in position order), as ``np.argsort(values, kind="stable")[ranks]`` gives them,
    by selection: a partition at the ranks gives their values, one pass over ``values`` finds
    the entries holding them (a sort of a large parameter's gradient dominated the sample's
    cost); below :data:`SORT_BELOW` entries the sort itself.

    With ``refill`` (``refill(values)`` writes them again), ``values`` is scratch: partitioned
    in place and refilled, instead of partitioning a copy as large as the parameter."""
    if values.size < SORT_BELOW:
        return np.argsort(values, kind="stable")[ranks]
    if refill is None:
        at = np.partition(values, np.unique(ranks))[ranks]
    else:
        values.partition(np.unique(ranks))
        at = values[ranks]
        refill(values)
    targets = np.unique(at)
    which = np.searchsorted(targets, at)
    positions, slot = _locate(values, targets)
    equal = np.bincount(slot, minlength=targets.size)
    # Entries below each target value: its rank where it is held once; counted where tied.
    below = np.empty(targets.size, dtype=np.int64)
    below[which] = ranks
    # A pass per tied value: ~0.03 ms on 200k entries, faster than one searchsorted pass over
    # them (~4-10 ms) below a few hundred tied values, more than a sample has ranks.
    for t in np.flatnonzero(equal > 1):
        below[t] = np.count_nonzero(values < targets[t])
    grouped = positions[np.argsort(slot, kind="stable")]  # by target, each in position order
    return grouped[(np.cumsum(equal) - equal)[which] + ranks - below[which]]


#: Entries hashed per pass while locating values (bounds the scratch memory) and the hash
#: table's size (a few candidates per block beside the true matches).
LOCATE_BLOCK = 1 << 15
LOCATE_BUCKETS = 1 << 16


def _buckets(x: np.ndarray) -> np.ndarray:
    """A hash of contiguous float64 values into :data:`LOCATE_BUCKETS` by their bits, the
    high half folded in (values with round mantissas differ there only). -0.0 (the sign bit
    alone) lands where 0.0 does, which it equals."""
    bits = x.view(np.uint64)
    return (bits ^ (bits >> np.uint64(32))) & np.uint64(LOCATE_BUCKETS - 1)


def _locate(values: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flat positions, ascending, of the entries of ``values`` equal to one of
    ``targets`` (sorted, distinct), and the index in ``targets`` of the value each holds:
    a hash table of the targets screens each block, an exact comparison confirms."""
    values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets, dtype=np.float64)
    table = np.zeros(LOCATE_BUCKETS, dtype=bool)
    table[_buckets(targets)] = True
    positions, slots = [], []
    for start in range(0, values.size, LOCATE_BLOCK):
        block = values[start : start + LOCATE_BLOCK]
        maybe = np.flatnonzero(table[_buckets(block)])
        screened = block[maybe]
        slot = np.minimum(np.searchsorted(targets, screened), targets.size - 1)
        hit = targets[slot] == screened
        positions.append(maybe[hit] + start)
        slots.append(slot[hit])
    return np.concatenate(positions), np.concatenate(slots)


def _cycled_permutations(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """``m`` values from fresh permutations of ``range(n)`` laid end to end: every value
    appears once before any repeats, and pairings with another such sequence do not cycle."""
    reps = -(-m // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:m]


def stratified_sample(
    rng: np.random.Generator,
    analytic: np.ndarray,
    n_sample: int,
    exclude: np.ndarray | None = None,
) -> Sample:
    """Choose ``n_sample`` distinct entries of a parameter, stratified by position and magnitude.

    Parameters
    ----------
    rng : numpy.random.Generator
        Seeded generator; the same seed and inputs give the same sample.
    analytic : ndarray
        The analytic gradient of the parameter, in the parameter's shape.
    n_sample : int
        Budget; every entry when ``n_sample >= analytic.size`` (and nothing is excluded).
    exclude : ndarray of int, optional
        Flat indices already checked (an earlier sample being extended): never chosen again;
        the strata skip them as they skip their own duplicates.

    Returns
    -------
    Sample
        Sorted flat indices and the count each stratum contributed.
    """
    shape = tuple(analytic.shape)
    n_total = int(analytic.size)
    n_rows, n_mid, n_cols = _row_col_shape(shape)
    n_excluded = 0 if exclude is None else int(np.unique(exclude).size)
    if n_excluded == 0 and n_sample >= n_total:
        idx = np.arange(n_total, dtype=np.int64)
        return Sample(idx, {"all": n_total}, n_total, n_rows, n_cols, n_rows, n_cols)
    n_sample = max(0, min(int(n_sample), n_total - n_excluded))
    pick = _Picker(n_total, n_sample, exclude)
    # One array as large as the parameter (a large parameter's sample must not cost several
    # times its size): the magnitudes, partitioned in place below and refilled.
    ranked = _magnitudes(np.asarray(analytic))

    pick.add("edges", np.array([0, n_total - 1], dtype=np.int64))
    pick.add("extremes", np.array([np.argmax(ranked), np.argmin(ranked)], dtype=np.int64))

    zeros = np.flatnonzero(ranked == 0.0)
    if zeros.size:
        pick.add("zero gradient", rng.permutation(zeros), limit=max(1, n_sample // 16))
    n_zeros = zeros.size
    del zeros
    n_nonzero = n_total - n_zeros
    if n_nonzero:
        mag_budget = pick.left // 2
        n_bins = min(MAGNITUDE_BINS, n_nonzero)
        # Bins of the nonzero entries ranked by |analytic| (ties by position), as
        # np.array_split cuts them; a few random ranks from each (rng.choice on the bin's
        # size picks the same positions as on its members), found by selection, not a sort.
        size, extra = divmod(n_nonzero, n_bins)
        starts = np.arange(n_bins + 1) * size + np.minimum(np.arange(n_bins + 1), extra)
        quotas = np.full(n_bins, mag_budget // n_bins)
        quotas[: mag_budget % n_bins] += 1
        chosen = [
            (a + rng.choice(b - a, size=min(quota, b - a), replace=False)).astype(np.int64)
            for a, b, quota in zip(starts[:-1], starts[1:], quotas, strict=True)
            if quota
        ]
        if chosen:
            # Zeros come first in the stable ascending order: the nonzero entry of rank r
            # is the entry of rank n_zeros + r (no index array, no compacted copy).
            found = _entries_at_ranks(
                ranked,
                np.concatenate(chosen) + n_zeros,
                refill=lambda out: _magnitudes(np.asarray(analytic), out),
            )
            del ranked
            pick.add("magnitude", found)  # as bin after bin: first occurrences, in order

    if pick.left > 0:
        m = pick.left
        if n_mid == 1 and n_cols == 1:
            # One axis: systematic sampling, one random entry in each of m equal blocks.
            starts = np.linspace(0, n_total, m + 1)
            lo = np.floor(starts[:-1]).astype(np.int64)
            hi = np.maximum(lo + 1, np.floor(starts[1:]).astype(np.int64))
            cand = lo + (rng.random(m) * (hi - lo)).astype(np.int64)
        else:
            rows = _cycled_permutations(rng, n_rows, m)
            cols = _cycled_permutations(rng, n_cols, m)
            mids = rng.integers(0, n_mid, size=m)
            cand = (rows * n_mid + mids) * n_cols + cols
        pick.add("position", cand)

    if pick.left > 0:
        rest = np.flatnonzero(~pick.taken)
        pick.add("uniform", rng.choice(rest, size=pick.left, replace=False))

    idx = np.sort(np.concatenate(pick.order)) if pick.order else np.empty(0, dtype=np.int64)
    rows_cov = np.unique(idx // (n_mid * n_cols)).size
    cols_cov = np.unique(idx % n_cols).size
    strata = {k: v for k, v in pick.counts.items() if v}
    return Sample(idx, strata, n_total, rows_cov, cols_cov, n_rows, n_cols)


def extend_sample(
    rng: np.random.Generator,
    analytic: np.ndarray,
    first: Sample,
    n_more: int,
    checked: np.ndarray | None = None,
) -> tuple[Sample, Sample]:
    """Grow ``first`` by ``n_more`` entries, stratified the same way, skipping ``first`` and
    any other entry already ``checked``.

    Returns ``(extra, grown)``: the new entries alone (to evaluate) and ``first`` with them (to
    report), whose strata add up the two samples' counts.
    """
    skip = first.flat_index if checked is None else np.union1d(first.flat_index, checked)
    extra = stratified_sample(rng, analytic, n_more, exclude=skip.astype(np.int64))
    shape = tuple(analytic.shape)
    _, n_mid, n_cols = _row_col_shape(shape)
    idx = np.union1d(first.flat_index, extra.flat_index).astype(np.int64)
    strata = dict(first.strata)
    for k, v in extra.strata.items():
        strata[k] = strata.get(k, 0) + v
    if idx.size == first.n_total:
        strata = {"all": first.n_total}
    grown = Sample(
        idx,
        strata,
        first.n_total,
        int(np.unique(idx // (n_mid * n_cols)).size),
        int(np.unique(idx % n_cols).size),
        first.n_rows,
        first.n_cols,
    )
    return extra, grown
