"""Choosing which entries of a parameter to check one by one.

Pure functions: a seeded ``numpy.random.Generator`` in, sorted flat index arrays out.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sample_entries"]


def sample_entries(rng: np.random.Generator, n_total: int, n_sample: int) -> np.ndarray:
    """Flat indices of ``n_sample`` distinct entries out of ``n_total``, sorted.

    Every entry when ``n_sample >= n_total``; otherwise a uniform draw without replacement
    that always includes the first and last entries (off-by-one bugs live at the edges).
    """
    if n_sample >= n_total:
        return np.arange(n_total, dtype=np.int64)
    if n_sample <= 0:
        return np.empty(0, dtype=np.int64)
    edges = np.array([0, n_total - 1], dtype=np.int64)[: min(2, n_sample)]
    rest = n_sample - edges.size
    if rest > 0:
        inner = rng.choice(np.arange(1, n_total - 1, dtype=np.int64), size=rest, replace=False)
        edges = np.concatenate([edges, inner])
    return np.sort(edges)
