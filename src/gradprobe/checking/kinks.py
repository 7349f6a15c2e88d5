"""THE retry and kink rule: is a disagreement truncation, a kink crossed, or a wrong gradient?

Used by both the per-entry check (:mod:`gradprobe.checking.entries`) and the directional probes
(:mod:`gradprobe.checking.probes`), which state their evidence in their own units (a slope for
an entry, a loss difference for a probe) and hand it here scaled to the *first* step:

- an estimate that disagrees is re-evaluated at a step :data:`RETRY_FACTOR` times smaller; it
  passes when it agrees there and the disagreement shrank to under a third of the first (a wrong
  gradient disagrees by the same amount at every step, so it cannot hide under the smaller
  step's higher round-off floor), or when it agrees within ``rtol`` itself;
- otherwise the one-sided errors ``e+ = forward - analytic`` and ``e- = backward - analytic``
  decide whether the step crossed a non-differentiable point (ReLU at 0, max, abs): the gap
  ``|e+ - e-|`` of a smooth function shrinks in proportion to the step (curvature), across a
  kink it stays (the jump of the slope), or grows when kinks of opposite sides cancelled at the
  first step. The step crossed a kink when the gap exceeds the allowance and shrank clearly
  less than the step, or grew to over twice the first gap and the allowance;
- a crossing is a kink, not a failure, when the analytic value lies between the one-sided values
  (a valid subgradient), each side widened by the allowance plus how much that side moved
  between the steps (one-sided differences are first-order accurate only);
- where the smaller step's one-sided round-off floor exceeds the first gap (float32 at an 8x
  smaller step) its one-sided values say nothing: the entry is judged from the first step's
  interval alone, with the allowance as margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..numerics.steps import RETRY_FACTOR

__all__ = ["RETRY_FACTOR", "SMOOTH_SHRINK", "KinkVerdict", "OneSided", "classify", "retry_passes"]

#: A one-sided gap that shrinks by less than this when the step shrinks by RETRY_FACTOR is not
#: a smooth function's (which shrinks by RETRY_FACTOR).
SMOOTH_SHRINK = 0.75 * RETRY_FACTOR

#: A retried disagreement must shrink below this fraction of the first to count as truncation.
SHRINK_TO = 1.0 / 3.0


@dataclass(frozen=True)
class OneSided:
    """One-sided errors at one step, ``forward - analytic`` and ``backward - analytic``,
    in units of the first step (aligned arrays)."""

    plus: np.ndarray
    minus: np.ndarray

    @property
    def gap(self) -> np.ndarray:
        return np.abs(self.plus - self.minus)


@dataclass(frozen=True)
class KinkVerdict:
    """What the kink rule found for each disagreeing estimate.

    ``crossed``: the step crossed a non-differentiable point; ``kink``: and the analytic value is
    a valid subgradient there (passes, counted as a kink).
    """

    crossed: np.ndarray
    kink: np.ndarray


def retry_passes(
    small_passed: np.ndarray,
    small_error: np.ndarray,
    first_error: np.ndarray,
    within_rtol: np.ndarray | bool = False,
) -> np.ndarray:
    """The retry at a smaller step passes: it agrees, and its disagreement (scaled to the first
    step) shrank below :data:`SHRINK_TO` of the first or is within ``rtol`` itself."""
    return np.asarray(small_passed & ((small_error < first_error * SHRINK_TO) | within_rtol))


def classify(
    first: OneSided, small: OneSided, allowed: np.ndarray, small_floor: np.ndarray
) -> KinkVerdict:
    """Apply the kink rule to estimates that still disagree after the retry.

    Parameters
    ----------
    first, small : OneSided
        One-sided errors at the first and the smaller step, in first-step units.
    allowed : ndarray
        The first comparison's allowance (same units).
    small_floor : ndarray
        Round-off floor of the smaller step's one-sided values (same units).
    """
    gap_first, gap_small = first.gap, small.gap
    crossed = ((gap_first > allowed) & (gap_small * SMOOTH_SHRINK >= gap_first)) | (
        gap_small > 2.0 * np.maximum(gap_first, allowed)
    )
    # Each side widened by the allowance plus how much it moved between the two steps.
    margin_plus = allowed + np.abs(first.plus - small.plus)
    margin_minus = allowed + np.abs(first.minus - small.minus)
    plus_low = small.plus <= small.minus
    low = np.where(plus_low, small.plus - margin_plus, small.minus - margin_minus)
    high = np.where(plus_low, small.minus + margin_minus, small.plus + margin_plus)
    inside = (low <= 0.0) & (high >= 0.0)
    blind = ~crossed & (gap_first > allowed) & (small_floor >= gap_first)
    blind &= np.minimum(first.plus, first.minus) - allowed <= 0.0
    blind &= np.maximum(first.plus, first.minus) + allowed >= 0.0
    return KinkVerdict(crossed=crossed, kink=(crossed & inside) | blind)
