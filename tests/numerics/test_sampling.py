"""The stratified sampler: determinism, strata, edges and extremes, budget."""

from __future__ import annotations

import numpy as np
import pytest

from gradprobe.numerics.sampling import stratified_sample


def _grad(shape, seed=0, zeros=0):
    g = np.random.default_rng(seed).standard_normal(shape) * np.logspace(
        -6, 0, int(np.prod(shape))
    ).reshape(shape)
    g.reshape(-1)[np.random.default_rng(seed + 1).permutation(g.size)[:zeros]] = 0.0
    return g


def test_same_seed_same_sample_different_seed_different_sample():
    g = _grad((300, 40))
    a = stratified_sample(np.random.default_rng(7), g, 256)
    b = stratified_sample(np.random.default_rng(7), g, 256)
    c = stratified_sample(np.random.default_rng(8), g, 256)
    assert a.flat_index.tobytes() == b.flat_index.tobytes() and a.strata == b.strata
    assert a.flat_index.tobytes() != c.flat_index.tobytes()


@pytest.mark.parametrize("shape", [(1000,), (300, 40), (8, 5, 30), (2, 3)])
@pytest.mark.parametrize("budget", [1, 3, 17, 256, 10_000])
def test_budget_respected_distinct_sorted_and_counts_add_up(shape, budget):
    g = _grad(shape, zeros=5)
    s = stratified_sample(np.random.default_rng(0), g, budget)
    assert s.size == min(budget, g.size)
    assert np.all(np.diff(s.flat_index) > 0)
    assert s.flat_index.min() >= 0 and s.flat_index.max() < g.size
    assert sum(s.strata.values()) == s.size
    assert s.complete == (budget >= g.size)


def test_edges_and_extremes_always_included():
    for seed in range(5):
        g = _grad((200, 30), seed=seed)
        s = stratified_sample(np.random.default_rng(seed), g, 10)
        flat = np.abs(g).reshape(-1)
        for must in (0, g.size - 1, int(np.argmax(flat)), int(np.argmin(flat))):
            assert must in s.flat_index
        assert s.strata["edges"] == 2 and s.strata["extremes"] == 2


def test_nan_gradient_entry_is_sampled_as_an_extreme():
    g = _grad((100, 10))
    g[37, 4] = np.nan
    s = stratified_sample(np.random.default_rng(0), g, 8)
    assert 374 in s.flat_index


def test_zero_gradients_form_a_stratum():
    g = _grad((400, 25), zeros=500)
    s = stratified_sample(np.random.default_rng(0), g, 512)
    zero_taken = np.count_nonzero(g.reshape(-1)[s.flat_index] == 0.0)
    assert s.strata["zero gradient"] == 512 // 16
    assert zero_taken >= 512 // 16


def test_magnitude_bins_cover_small_and_large_gradients():
    g = _grad((500, 40))  # magnitudes spread over 6 decades
    s = stratified_sample(np.random.default_rng(0), g, 512)
    ranks = np.argsort(np.argsort(np.abs(g).reshape(-1)))[s.flat_index] / g.size
    # Equal quotas per quantile bin: every eighth of the magnitude range is represented.
    counts = np.histogram(ranks, bins=8, range=(0, 1))[0]
    assert counts.min() >= 512 // 2 // 8


def test_position_strata_cover_every_row_and_column_when_budget_allows():
    g = _grad((64, 32))
    s = stratified_sample(np.random.default_rng(0), g, 512)
    assert s.rows_covered == 64 and s.cols_covered == 32
    g = _grad((300, 7))
    s = stratified_sample(np.random.default_rng(0), g, 700)
    assert s.rows_covered == 300 and s.cols_covered == 7


def test_one_dimensional_parameter_is_spread_along_the_array():
    # With every |gradient| equal, the sample is position-only.
    idx = stratified_sample(np.random.default_rng(0), np.ones(10_000), 100).flat_index
    assert idx.size == 100 and idx[0] == 0 and idx[-1] == 9_999
    # Position-only sampling: no block of 1,000 entries is left empty.
    assert np.histogram(idx, bins=10, range=(0, 10_000))[0].min() > 0


def test_small_parameters_are_checked_in_full():
    s = stratified_sample(np.random.default_rng(0), np.zeros((3, 4)), 512)
    assert s.complete and s.kind == "all" and s.flat_index.tolist() == list(range(12))


@pytest.mark.parametrize("shape", [(300,), (40, 30), (8, 6, 5)])
def test_an_extended_sample_adds_new_entries_only_and_counts_add_up(shape):
    from gradprobe.numerics.sampling import extend_sample

    g = _grad(shape, seed=2, zeros=5)
    first = stratified_sample(np.random.default_rng(0), g, 20)
    checked = np.array([1, 7, 11], dtype=np.int64)  # e.g. entries bisection reached
    extra, grown = extend_sample(np.random.default_rng(1), g, first, 50, checked=checked)
    assert extra.size == 50
    assert not np.isin(extra.flat_index, first.flat_index).any()
    assert not np.isin(extra.flat_index, checked).any()
    assert np.array_equal(grown.flat_index, np.union1d(first.flat_index, extra.flat_index))
    assert sum(grown.strata.values()) == grown.size == 70
    assert grown.n_total == g.size and not grown.complete


def test_an_extended_sample_never_exceeds_the_entries_left():
    from gradprobe.numerics.sampling import extend_sample

    g = _grad((30,), seed=3)
    first = stratified_sample(np.random.default_rng(0), g, 25)
    extra, grown = extend_sample(np.random.default_rng(1), g, first, 100)
    assert extra.size == 5 and grown.complete and grown.strata == {"all": 30}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block, buckets", [(1 << 15, 1 << 16), (7, 4)])
def test_entries_at_ranks_are_the_stable_sorts_without_sorting(seed, block, buckets, monkeypatch):
    from gradprobe.numerics import sampling
    from gradprobe.numerics.sampling import _entries_at_ranks

    # The selection path itself, at every size (below SORT_BELOW it would be the sort); with
    # tiny blocks and a tiny hash table, most screened entries are collisions and every match
    # may sit on a block's edge.
    monkeypatch.setattr(sampling, "SORT_BELOW", 0)
    monkeypatch.setattr(sampling, "LOCATE_BLOCK", block)
    monkeypatch.setattr(sampling, "LOCATE_BUCKETS", buckets)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    values = np.round(np.abs(rng.standard_normal(n)), int(rng.integers(0, 3)))  # many ties
    values[rng.random(n) < 0.05] = np.inf
    values[rng.random(n) < 0.05] = -0.0  # equal to 0.0, other bits
    ranks = rng.choice(n, size=min(n, 25), replace=False)
    expected = np.argsort(values, kind="stable")[ranks]
    assert np.array_equal(_entries_at_ranks(values, ranks), expected)
    # Partitioned in place and refilled (the sampler's scratch): the same entries, and the
    # values as they were.
    scratch = values.copy()
    found = _entries_at_ranks(scratch, ranks, refill=lambda out: np.copyto(out, values))
    assert np.array_equal(found, expected) and np.array_equal(scratch, values)


@pytest.mark.parametrize("seed", range(4))
def test_a_stratum_takes_the_first_fresh_candidates_from_a_prefix(seed):
    """``_Picker.add`` reads a growing prefix of a long candidate list: the same entries as
    deduplicating all of it (repeats and entries already taken skipped, in order)."""
    from gradprobe.numerics.sampling import _Picker

    rng = np.random.default_rng(seed)
    n = 50_000
    candidates = rng.integers(0, n, size=40_000)  # many repeats
    exclude = rng.choice(n, size=int(rng.integers(0, 45_000)), replace=False)
    limit = int(rng.integers(1, 500))
    pick = _Picker(n, 10_000, exclude.astype(np.int64))
    pick.add("zero gradient", candidates, limit=limit)
    taken = np.zeros(n, dtype=bool)
    taken[exclude] = True
    _, first = np.unique(candidates, return_index=True)
    fresh = candidates[np.sort(first)]
    expected = fresh[~taken[fresh]][:limit]
    assert np.array_equal(pick.order[0], expected)
