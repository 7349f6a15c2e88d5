"""Vector rows computed into the working copy (ComputedRows, issue 20 memory) give the losses
of stored rows in process, on a thread worker and after pickling for a process worker."""

from __future__ import annotations

import pickle

import numpy as np

from gradprobe.evaluate import SerialEvaluator
from gradprobe.evaluate.loops import vector_chunk
from gradprobe.evaluate.rows import ComputedRows
from gradprobe.layout import normalize_params


def _loss(p: dict) -> float:
    return float(p["w"] @ np.arange(p["w"].size) + p["b"].sum() ** 2)


def _rows(base: np.ndarray) -> tuple[ComputedRows, np.ndarray]:
    stored = base + np.linspace(-1.0, 1.0, 4)[:, None] * np.cos(np.arange(base.size))

    def fill(r: int, out: np.ndarray) -> None:
        out[:] = stored[r]

    return ComputedRows(4, base.size, base.dtype, fill), stored


def test_computed_rows_give_the_losses_of_stored_rows():
    rng = np.random.default_rng(0)
    layout, base, _ = normalize_params({"w": rng.standard_normal(50), "b": rng.standard_normal(3)})
    ev = SerialEvaluator(_loss, layout, base)
    before = [b.copy() for b in base]
    rows, stored = _rows(base[0].reshape(-1))
    want = ev.vector_losses(0, stored)
    assert np.array_equal(ev.vector_losses(0, rows), want)
    # A worker task of rows 1:3: on a thread it fills the rows itself; pickled for a process
    # it carries them stored.
    task = ev.rows.chunk_task(ev, 0, None, rows)
    assert np.array_equal(vector_chunk(task.part(1, 3)).losses, want[1:3])
    sent = pickle.loads(pickle.dumps(task.part(1, 3)))
    assert isinstance(sent.values, np.ndarray)
    assert np.array_equal(vector_chunk(sent).losses, want[1:3])
    # The evaluator's parameters are as they were (each row restored from the base).
    assert all(np.array_equal(a, b) for a, b in zip(base, before, strict=True))
