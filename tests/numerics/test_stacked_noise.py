"""The noise estimate's points in one stacked call, where the loss takes every parameter with
the same leading axis (an adapter's vmap): the same values as point by point, and the
point-by-point calls wherever the stacked call cannot stand in for them."""

from __future__ import annotations

import numpy as np
import pytest

from gradprobe.checking.noise import estimate_loss_noise
from gradprobe.evaluate import BatchedEvaluator
from gradprobe.evaluate.stacked import STACKED_BYTES
from gradprobe.layout import normalize_params
from gradprobe.numerics.tolerances import NOISE_HALF_POINTS

POINTS = 2 * NOISE_HALF_POINTS


class RowLoss:
    """``sum(w**3) - sum(b**3)`` per row (a cancelling loss with measurable noise), each row
    computed alone, so stacked and point-by-point calls give the same bits."""

    def __init__(self, stacks_points: bool, lie_at_centre: bool = False, refuse: bool = False):
        self.stacks_points = stacks_points
        self.lie_at_centre, self.refuse = lie_at_centre, refuse
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, p):
        w, b = p["w"], p["b"]
        rows = max(w.shape[0], b.shape[0])
        self.calls.append((w.shape[0], b.shape[0]))
        if self.refuse and w.shape[0] > 1 and b.shape[0] > 1:
            raise RuntimeError("both inputs mapped")
        out = np.array(
            [
                np.sum(w[min(r, len(w) - 1)] ** 3) - np.sum(b[min(r, len(b) - 1)] ** 3)
                for r in range(rows)
            ]
        )
        if self.lie_at_centre and rows >= POINTS + 1:  # the noise estimate's centre
            out[POINTS // 2] += 1.0
        return out


def _estimate(loss, size=300):
    rng = np.random.default_rng(3)
    layout, base, _ = normalize_params(
        {"w": rng.standard_normal(size), "b": rng.standard_normal((size // 3, 3))}
    )
    ev = BatchedEvaluator(loss, layout, base)
    f0 = ev.base_loss()
    return estimate_loss_noise(ev, f0, np.random.default_rng(0)), ev


def test_one_stacked_call_gives_the_point_by_point_estimate():
    stacked, ev = _estimate(RowLoss(stacks_points=True))
    alone, ev_alone = _estimate(RowLoss(stacks_points=False))
    assert stacked.status == "measured"
    assert (stacked.sigma, stacked.status) == (alone.sigma, alone.status)
    # One call of 9 rows (the centre again among them) instead of 8 calls of one.
    assert ev.loss.calls[1:] == [(POINTS + 1, POINTS + 1)]
    assert ev_alone.loss.calls[1:] == [(1, 1)] * POINTS
    assert stacked.n_evaluations == POINTS + 1 and ev.n_evaluations == 1 + POINTS + 1


@pytest.mark.parametrize("fault", ["refuse", "lie_at_centre"])
def test_a_stacked_call_that_raises_or_disagrees_falls_back_point_by_point(fault):
    est, ev = _estimate(RowLoss(stacks_points=True, **{fault: True}))
    alone, _ = _estimate(RowLoss(stacks_points=False))
    assert ev.loss.calls[1:] == [(POINTS + 1, POINTS + 1)] + [(1, 1)] * POINTS
    assert (est.sigma, est.status) == (alone.sigma, alone.status)
    assert est.n_evaluations == 2 * POINTS + 1  # every evaluation that ran is counted


def test_parameters_too_large_to_stack_are_evaluated_point_by_point():
    size = STACKED_BYTES // (8 * (POINTS + 1)) + 3  # w alone is over the bound when stacked
    _, ev = _estimate(RowLoss(stacks_points=True), size=size)
    assert ev.loss.calls[1:] == [(1, 1)] * POINTS


def _requests(base):
    rng = np.random.default_rng(5)
    out = []
    for p, b in enumerate(base):
        idx = rng.choice(b.size, size=4, replace=False)
        vals = b.reshape(-1)[idx][:, None] + np.array([[1e-3, -1e-3]])
        out.append((p, idx, vals.astype(b.dtype)))
    return out


@pytest.mark.parametrize("verified", [True, False])
def test_every_parameters_first_blocks_in_one_stacked_call_once_verified(verified):
    rng = np.random.default_rng(3)
    params = {"w": rng.standard_normal(30), "b": rng.standard_normal((10, 3))}
    layout, base, _ = normalize_params(params)
    ev = BatchedEvaluator(RowLoss(stacks_points=True), layout, base)
    plain = BatchedEvaluator(RowLoss(stacks_points=False), layout, base)
    ev.stacking = verified  # the noise estimate's stacked call agreed at the centre (or not)
    requests = _requests(base)
    assert ev.sends_ahead is verified
    ev.prefetch(requests)
    got = [ev.entry_losses(*r) for r in requests]
    want = [plain.entry_losses(*r) for r in requests]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    if verified:  # one call of every block's 16 rows, all parameters stacked
        assert ev.loss.calls == [(16, 16)]
    else:
        assert len(ev.loss.calls) == 2 and all(1 in c for c in ev.loss.calls)
    assert ev.n_evaluations == plain.n_evaluations == 16


def test_a_stacked_block_call_that_raises_leaves_the_blocks_to_their_own_calls():
    rng = np.random.default_rng(3)
    layout, base, _ = normalize_params({"w": rng.standard_normal(30), "b": rng.standard_normal(9)})
    ev = BatchedEvaluator(RowLoss(stacks_points=True, refuse=True), layout, base)
    ev.stacking = True
    requests = _requests(base)
    ev.prefetch(requests)
    assert ev.stacking is False
    plain = BatchedEvaluator(RowLoss(stacks_points=False), layout, base)
    for r in requests:
        np.testing.assert_array_equal(ev.entry_losses(*r), plain.entry_losses(*r))


@pytest.mark.parametrize("centre_agrees", [True, False])
def test_blocks_sent_before_the_noise_estimate_go_in_its_call(centre_agrees):
    rng = np.random.default_rng(3)
    layout, base, _ = normalize_params({"w": rng.standard_normal(30), "b": rng.standard_normal(9)})
    ev = BatchedEvaluator(
        RowLoss(stacks_points=True, lie_at_centre=not centre_agrees), layout, base
    )
    plain = BatchedEvaluator(RowLoss(stacks_points=False), layout, base)
    f0 = ev.base_loss()
    requests = _requests(base)
    assert ev.sends_ahead  # not verified yet: the blocks wait for the first stacked call
    ev.prefetch(requests)
    assert ev.loss.calls == [(1, 1)]
    estimate_loss_noise(ev, f0, np.random.default_rng(0))
    assert ev.loss.calls[1] == (POINTS + 1 + 16, POINTS + 1 + 16)
    calls = len(ev.loss.calls)
    for r in requests:
        np.testing.assert_array_equal(ev.entry_losses(*r), plain.entry_losses(*r))
    if centre_agrees:  # answered from that call
        assert len(ev.loss.calls) == calls and ev.stacking is True
    else:  # dropped with the stacked call: each block in its own call
        assert len(ev.loss.calls) == calls + 2 and ev.stacking is False


def test_blocks_that_do_not_fit_beside_the_first_stacked_call_are_left_to_the_placement():
    from gradprobe.evaluate.stacked import FIRST_CALL_ROOM

    # w fits 16 stacked rows and more, but not beside 16 rows of blocks: they are not held.
    size = STACKED_BYTES // (8 * (FIRST_CALL_ROOM + 20))
    rng = np.random.default_rng(3)
    layout, base, _ = normalize_params({"w": rng.standard_normal(size), "b": rng.standard_normal(4)})
    ev = BatchedEvaluator(RowLoss(stacks_points=True), layout, base)
    f0 = ev.base_loss()
    small = [(0, np.arange(4), base[0][:4, None] + np.array([[1e-3, -1e-3]]))]
    large = [(0, np.arange(12), base[0][:12, None] + np.array([[1e-3, -1e-3]]))]
    assert ev.stacked.prefetch(ev, small) and ev.stacked.pending == small
    assert not ev.stacked.prefetch(ev, large)  # 24 rows + the room: over the bound
    estimate_loss_noise(ev, f0, np.random.default_rng(0))
    assert ev.loss.calls[1] == (POINTS + 1 + 8, POINTS + 1 + 8)  # the small blocks went along
