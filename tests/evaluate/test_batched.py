"""Batched losses: B perturbed copies of one parameter per call."""

from __future__ import annotations

import joblib
import numpy as np
import pytest

import gradprobe
from gradprobe.evaluate import BatchedEvaluator, SerialEvaluator
from gradprobe.examples import make_mlp
from gradprobe.layout import normalize_params

from ..helpers import assert_bitwise_unchanged, report_core, snapshot


def test_batched_loss_agrees_with_the_plain_loss():
    m = make_mlp(sizes=(6, 5, 5, 3), batch=4)
    stacked = {k: v[np.newaxis] for k, v in m.params.items()}
    assert m.batched_loss(stacked).shape == (1,)
    np.testing.assert_allclose(m.batched_loss(stacked)[0], m.loss(m.params), rtol=1e-14)


@pytest.mark.parametrize("bug", [None, "transpose", "sign"])
def test_batched_check_finds_the_same_failures(bug):
    m = make_mlp(sizes=(6, 5, 5, 3), batch=4, bug=bug)
    saved = snapshot(m.params)
    plain = gradprobe.check(m.loss, m.grad, m.params)
    batched = gradprobe.check(m.batched_loss, m.grad, m.params, batched=True)
    assert batched.measured["executor"] == "batched"
    failing = {n for n, r in batched.params.items() if not r.passed}
    assert failing == {n for n, r in plain.params.items() if not r.passed}
    assert failing == set(m.expected_failures)
    assert_bitwise_unchanged(m.params, saved)


def test_memory_budget_chunks_give_identical_losses():
    m = make_mlp(sizes=(8, 6, 3), batch=5)
    layout, base, _ = normalize_params(m.params)
    flat = base[0].reshape(-1)
    idx = np.arange(flat.size)
    values = np.stack([flat + 1e-4, flat - 1e-4], axis=1)
    results = []
    for memory in (1, 200, 2**20):  # 1 copy per call, a few per call, all at once
        results.append(BatchedEvaluator(m.batched_loss, layout, base, memory=memory))
        results[-1] = results[-1].entry_losses(0, idx, values)
    assert results[0].tobytes() == results[1].tobytes() == results[2].tobytes()
    serial = SerialEvaluator(m.loss, layout, base).entry_losses(0, idx, values)
    np.testing.assert_allclose(results[0], serial, rtol=1e-13)


@pytest.mark.timeout(60)
def test_batched_chunks_on_threads_match_in_process():
    m = make_mlp(sizes=(6, 5, 5, 3), batch=4, bug="scale")
    one = gradprobe.check(m.batched_loss, m.grad, m.params, batched=True)
    with joblib.parallel_config(backend="threading"):
        two = gradprobe.check(m.batched_loss, m.grad, m.params, batched=True, n_jobs=2)
    assert "batched chunks" in two.measured["executor"]
    assert report_core(one) == report_core(two)


def test_wrong_batched_shape_is_a_clear_error():
    m = make_mlp(sizes=(6, 5, 3), batch=4)
    with pytest.raises(gradprobe.InvalidInputError, match=r"shape \(1,\)"):
        gradprobe.check(lambda p: m.batched_loss(p).sum(), m.grad, m.params, batched=True)
    with pytest.raises(gradprobe.InvalidInputError, match="batched"):
        gradprobe.check(m.batched_loss, m.grad, m.params, batched="yes")


def test_batched_error_names_the_parameter():
    m = make_mlp(sizes=(6, 5, 3), batch=4)
    saved = snapshot(m.params)

    def loss(p):
        if p["b1"].shape[0] > 1:
            raise RuntimeError("bad batch")
        return m.batched_loss(p)

    with pytest.raises(gradprobe.LossEvaluationError, match="b1") as info:
        gradprobe.check(loss, m.grad, m.params, batched=True)
    assert info.value.param == "b1"
    assert_bitwise_unchanged(m.params, saved)


def test_block_tuner_doubles_while_it_pays_then_keeps_the_best():
    from gradprobe.evaluate.batched import FIRST_BLOCK_BYTES, BlockTuner

    # Rows of 256 KiB: the first call holds FIRST_BLOCK_BYTES of copies (4 rows).
    tuner = BlockTuner(256 * 1024, memory=64 * 2**20)
    assert tuner.rows == FIRST_BLOCK_BYTES // (256 * 1024) == 4 and tuner.cap == 256
    # A memory-bound loss: per-row time falls until 16 rows, then rises (copies leave cache).
    per_row = {4: 1.0, 8: 0.7, 16: 0.65}
    while not tuner.settled:
        rows = tuner.rows
        tuner.record(rows, rows * per_row[rows])
    assert tuner.rows == 8  # 16 rows gained under 10% over 8: the best kept is 8
    tuner.record(8, 100.0)  # settled: later timings change nothing
    assert tuner.rows == 8


def test_block_tuner_stops_at_the_memory_cap_and_ignores_short_blocks():
    from gradprobe.evaluate.batched import BlockTuner

    tuner = BlockTuner(10 * 2**20, memory=64 * 2**20)  # rows of 10 MiB: cap 6
    assert tuner.rows == 1 and tuner.cap == 6
    tuner.record(1, 1.0)
    assert tuner.rows == 2
    tuner.record(1, 0.01)  # a short last block: no evidence about 2 rows
    assert tuner.rows == 2 and not tuner.settled
    tuner.record(2, 1.0)  # halves the time per row
    assert tuner.rows == 4
    tuner.record(4, 1.0)  # 0.25 per row: better, but 8 rows exceed the cap
    assert tuner.settled and tuner.rows == 4
