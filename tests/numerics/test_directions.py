"""Directions drawn again in pieces (numerics/directions.py) are bit for bit the stored ones
the probes used before (issue 20, memory), and piecewise sums are numpy's."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import numpy as np
import pytest

import gradprobe.numerics.directions as directions_module
from gradprobe.evaluate.rows import ComputedRows
from gradprobe.numerics.directions import Directions, Normals, pairwise


def stored_directions(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """The reference: how the probes drew their directions before, a stored (k, n) array."""
    v = rng.standard_normal((k, n))
    for row in v:
        row /= np.sqrt(np.sum(row * row))
    return v


@pytest.mark.parametrize("n", [1, 7, 8, 129, 8192, 8193, 20_011, 100_000])
@pytest.mark.parametrize("leaf", [128, 1000, 8192])
def test_pairwise_is_numpy_sum(n: int, leaf: int) -> None:
    a = np.random.default_rng(n).standard_normal(n) * 1e3
    total = pairwise(0, n, lambda lo, hi: np.sum(a[lo:hi]), leaf)
    assert total == np.sum(a)
    # A range that does not start at 0 is summed as numpy sums that range.
    lo = n // 3
    assert pairwise(lo, n, lambda x, y: np.sum(a[x:y]), leaf) == np.sum(a[lo:])


@pytest.fixture(params=["drawn again", "stored"])
def stored(request, monkeypatch) -> bool:
    """Both ways of reading draws: drawn again in pieces (forced) and kept (small draws)."""
    if request.param == "drawn again":
        monkeypatch.setattr(directions_module, "STORE_BYTES", 0)
    return request.param == "stored"


@pytest.mark.parametrize(("k", "n"), [(1, 1), (2, 5), (3, 8193), (2, 70_001)])
def test_directions_match_stored(k: int, n: int, stored: bool) -> None:
    ref_rng, rng = np.random.default_rng([k, n]), np.random.default_rng([k, n])
    ref = stored_directions(ref_rng, k, n)
    d = Directions(rng, k, n, leaf=1024)
    assert d.stored == stored
    for j in range(k):
        assert np.array_equal(d.row(j), ref[j])
        for lo, hi in [(0, n), (n // 3, n // 2 + 1), (n - 1, n), (n // 2, n)]:
            if lo < hi:
                assert np.array_equal(d.values(j, lo, hi), ref[j, lo:hi])
    # The generator is left where the stored draw leaves it (later draws depend on it).
    assert np.array_equal(rng.standard_normal(4), ref_rng.standard_normal(4))


def test_normals_segments_match_draws_and_squares(stored: bool) -> None:
    sizes = [3, 10_000, 0, 5]
    ref_rng, rng = np.random.default_rng(5), np.random.default_rng(5)
    ref = [ref_rng.standard_normal(m) for m in sizes]
    z = Normals(rng, sizes, leaf=512)
    for s, r in enumerate(ref):
        assert np.array_equal(z.row(s), r)
        assert z.squares[s] == np.sum(r * r)
        got = np.concatenate([z.values(s, a, b) for a, b in z.spans(s, 0, r.size)] or [np.empty(0)])
        assert np.array_equal(got, r)
    assert rng.random() == ref_rng.random()


def test_directions_read_from_threads(monkeypatch) -> None:
    monkeypatch.setattr(directions_module, "STORE_BYTES", 0)
    ref = stored_directions(np.random.default_rng(1), 2, 30_000)
    d = Directions(np.random.default_rng(1), 2, 30_000, leaf=1000)
    bad: list[Any] = []

    def read(j: int) -> None:
        try:
            for lo in range(0, 30_000, 777):
                hi = min(30_000, lo + 1500)
                if not np.array_equal(d.values(j, lo, hi), ref[j, lo:hi]):
                    bad.append(lo)
        except Exception as exc:  # pragma: no cover - reported by the assertion
            bad.append(exc)

    threads = [threading.Thread(target=read, args=(j % 2,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


def test_computed_rows_read_like_a_stored_array() -> None:
    stored = np.arange(12.0).reshape(4, 3)

    def fill(r: int, out: np.ndarray) -> None:
        out[:] = stored[r]

    rows = ComputedRows(4, 3, np.dtype(np.float64), fill)
    assert rows.shape == (4, 3) and len(rows) == 4
    assert np.array_equal(np.asarray(rows), stored)
    assert np.array_equal(np.asarray(rows[1:3]), stored[1:3])
    assert np.array_equal(rows[-1], stored[-1])
    out = np.empty(3)
    rows[2:].fill(1, out)
    assert np.array_equal(out, stored[3])
    # Pickled (for a worker in another process) they travel as stored rows.
    again = pickle.loads(pickle.dumps(rows[1:]))
    assert isinstance(again, np.ndarray) and np.array_equal(again, stored[1:])
    with pytest.raises(IndexError):
        rows[4]
