"""Kinks checked jointly: tied entries moved together.

The per-entry kink rule (:mod:`.kinks`) passes an entry whose step crossed a kink when its
analytic value lies between the one-sided derivatives of that entry alone. At a tie (a max over
equal values, a sort, a median) each tied entry's value can be a valid one-sided derivative
alone while together they are not a subgradient: the backward pass of ``max`` that gives every
tied entry the full gradient predicts ``2 h`` where moving both tied entries up by ``h``
changes the loss by ``h``.

:func:`check_ties` groups the entries classified as kinks by equal parameter value and probes
each group along ``d`` = ones on the group: the group fails where ``g . d`` lies outside the
one-sided directional derivatives (between ``f'(x; d)`` and ``-f'(x; -d)``, both measured as
``(L(x +- h d) - L(x)) / h``), beyond the pass rule's allowance, at the first step and at a step
:data:`~gradprobe.numerics.steps.RETRY_FACTOR` times smaller (a wrong gradient misses by the
same amount at every step; truncation shrinks with it). A correct subgradient at a tie (split
between the tied entries, or given to one of them) passes. The failing groups' entries are
failed and marked (``EntryResults.tie_group``); the diagnosis names them ``ties``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..numerics.steps import RETRY_FACTOR
from .context import ParamCheck
from .kinks import SHRINK_TO
from .results import EntryResults

#: Tie groups probed per parameter (two to four evaluations each).
MAX_GROUPS = 32
#: Entries of one group moved together (a larger tie is probed on its first ones).
MAX_GROUP_SIZE = 64


def _groups(ctx: ParamCheck, e: EntryResults) -> list[np.ndarray]:
    """Positions in ``e`` of kink entries sharing one parameter value (2 or more each)."""
    pos = np.flatnonzero(e.kink)
    if pos.size < 2:
        return []
    values = ctx.base_flat[e.flat_index[pos]]
    out = []
    for v in np.unique(values):
        same = pos[values == v]
        if same.size >= 2:
            out.append(same[:MAX_GROUP_SIZE])
    return out[:MAX_GROUPS]


def _violation(
    ctx: ParamCheck, flat: np.ndarray, g: np.ndarray, h: float, f0: float
) -> tuple[float, bool]:
    """How far ``g . d`` lies outside the one-sided slopes along d = ones on ``flat`` at step
    ``h`` (per unit of d), and whether that is beyond the allowance."""
    x = ctx.base_flat
    dtype = x.dtype
    up = x.copy()
    down = x.copy()
    up[flat] = (x[flat].astype(np.float64) + h).astype(dtype)
    down[flat] = (x[flat].astype(np.float64) - h).astype(dtype)
    losses = ctx.evaluator.vector_losses(ctx.param, np.stack([up, down]))
    d_up = up[flat].astype(np.float64) - x[flat]
    d_down = x[flat].astype(np.float64) - down[flat]
    s_up, s_down = float(np.mean(d_up)), float(np.mean(d_down))
    if s_up <= 0.0 or s_down <= 0.0:
        return 0.0, False
    tol = ctx.tolerance
    forward = (losses[0] - f0) / s_up  # f'(x; d)
    backward = -(losses[1] - f0) / s_down  # -f'(x; -d)
    gd = float(np.sum(g))
    lo, hi = min(forward, backward), max(forward, backward)
    nearest = min(max(gd, lo), hi)
    noise = float(tol.difference_floor(losses[0], f0)) / min(s_up, s_down)
    v = tol.compare(np.array([gd]), np.array([nearest]), np.array([noise]))
    return abs(gd - nearest), not bool(v.passed[0])


def check_ties(ctx: ParamCheck, e: EntryResults, f0: float | None = None) -> EntryResults:
    """``e`` with the entries of every failing tie group failed and marked in ``tie_group``
    (the group's number; -1 elsewhere). No evaluations when fewer than two kinks share a value."""
    groups = _groups(ctx, e)
    if not groups or ctx.method == "complex-step":
        return e
    if f0 is None:
        f0 = ctx.evaluator.base_loss()
    tie = np.full(e.size, -1, dtype=np.int64) if e.tie_group is None else e.tie_group.copy()
    g_all = ctx.analytic_flat.astype(np.float64)
    failed_any = False
    for k, pos in enumerate(groups):
        flat = e.flat_index[pos]
        x = float(np.max(np.abs(ctx.base_flat[flat].astype(np.float64))))
        h = ctx.relative_step * max(1.0, x)
        miss, beyond = _violation(ctx, flat, g_all[flat], h, f0)
        if not beyond:
            continue
        miss_small, beyond_small = _violation(ctx, flat, g_all[flat], h / RETRY_FACTOR, f0)
        if beyond_small and miss_small >= SHRINK_TO * miss:
            tie[pos] = k
            failed_any = True
    if not failed_any:
        return e
    hit = tie >= 0
    return dataclasses.replace(e, passed=e.passed & ~hit, kink=e.kink & ~hit, tie_group=tie)
