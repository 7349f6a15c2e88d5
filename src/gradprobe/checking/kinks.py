"""THE retry and kink rule: is a disagreement truncation, a kink crossed, or a wrong gradient?

Used by both the per-entry check (:mod:`gradprobe.checking.entries`) and the directional probes
(:mod:`gradprobe.checking.probes`), which state their evidence in their own units (a slope for
an entry, a loss difference for a probe) and hand it here scaled to the *first* step:

- an estimate that disagrees is re-evaluated at a step :data:`RETRY_FACTOR` times smaller; it
  passes when it agrees there and the disagreement shrank to under a third of the first (a wrong
  gradient disagrees by the same amount at every step, so it cannot hide under the smaller
  step's higher round-off floor), or when it agrees within ``rtol`` itself;
- otherwise the one-sided errors ``e+ = forward - analytic`` and ``e- = backward - analytic``
  at both steps decide. When they disagree (their gap exceeds the allowance) something
  non-smooth lies within the step (ReLU at 0, max, abs), and:

  * near, not at, a kink the analytic value must be the derivative of the side that does not
    cross it: that side's error, extrapolated to a zero step from the two steps (a smooth
    side's error is ~ c * h), vanishes and does not grow as the step shrinks. A wrong gradient
    leaves its error there, however near the kink;
  * at the kink itself both sides have reached their limits (each moved little between the
    steps) and their gap stays (a jump of the slope; a smooth function's gap shrinks in
    proportion to the step): any analytic value between the sides is a valid subgradient, each
    side widened by the allowance plus how much it moved between the steps (one-sided
    differences are first-order accurate only);
  * a gap that grows as the step shrinks (kinks of opposite sides cancelled at the first step)
    is judged like a kink at the point;
- where the smaller step's one-sided round-off floor exceeds the first gap (float32 at an 8x
  smaller step) its one-sided values say nothing: the entry is judged from the first step's
  interval alone, with the allowance as margin.

A loss piecewise constant on a grid finer than the step (float32's ``round(x, 3)``: its step
spans many jumps) is a staircase whose jumps read as a slope at every step the check takes. An
entry whose analytic value is zero and that still fails is tried at two finer steps
(:func:`flat_steps`): where the loss does not change at all on one side at both (:func:`flat`)
while a slope as large as the numeric one would have changed it by many roundings, the loss
is flat there, and the zero gradient is that side's derivative (as near a kink). A smooth loss
cannot be flat at both: its change grows with the step at the rate of its slope.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..numerics.steps import RETRY_FACTOR

#: A one-sided gap that shrinks by less than this when the step shrinks by RETRY_FACTOR is not
#: a smooth function's (which shrinks by RETRY_FACTOR).
SMOOTH_SHRINK = 0.75 * RETRY_FACTOR

#: A retried disagreement must shrink below this fraction of the first to count as truncation.
SHRINK_TO = 1.0 / 3.0

#: A first disagreement within this multiple of an allowance set by the round-off floor is
#: no evidence (when the retry agrees too).
FLOOR_MARGIN = 2.0

#: A side that moved by less than this fraction of the first gap between the two steps (beyond
#: the allowance and round-off) has reached its limit: the kink is at the point itself.
STABLE_SIDE = 0.25


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
    marginal: np.ndarray | bool = False,
) -> np.ndarray:
    """The retry at a smaller step passes: it agrees, and its disagreement (scaled to the first
    step) shrank below :data:`SHRINK_TO` of the first or is within ``rtol`` itself, or the
    first disagreement was ``marginal`` (within :data:`FLOOR_MARGIN` times an allowance set
    by the round-off floor, not by ``rtol``: no evidence either way)."""
    return np.asarray(
        small_passed & ((small_error < first_error * SHRINK_TO) | within_rtol | marginal)
    )


def marginal(
    first_error: np.ndarray, first_allowed: np.ndarray, at_floor: np.ndarray
) -> np.ndarray:
    """First disagreements within :data:`FLOOR_MARGIN` times an allowance that the round-off
    floor set (``at_floor``): a float32 difference quotient is noisier than its floor model
    now and then, and such a disagreement is no evidence of a wrong gradient."""
    return np.asarray(at_floor & (first_error <= FLOOR_MARGIN * first_allowed))


def classify(
    first: OneSided,
    small: OneSided,
    allowed: np.ndarray,
    small_floor: np.ndarray,
    ratio: np.ndarray | float = RETRY_FACTOR,
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
    ratio : ndarray or float
        The first step over the smaller one, as taken.
    """
    gap_first, gap_small = first.gap, small.gap
    split = gap_first > allowed  # the two sides disagree: something non-smooth within reach
    extrapolated_floor = small_floor * ratio / (ratio - 1.0)

    def is_derivative(e_first: np.ndarray, e_small: np.ndarray) -> np.ndarray:
        # The analytic value is this side's derivative: the side's error, extrapolated to a
        # zero step (Richardson on the two steps; a smooth side's error is ~ c * h), vanishes,
        # and it does not grow as the step shrinks. A wrong gradient leaves its error there.
        at_zero = e_small + (e_small - e_first) / (ratio - 1.0)
        return (np.abs(at_zero) <= allowed + extrapolated_floor) & (
            np.abs(e_small) <= np.abs(e_first) + allowed + small_floor
        )

    def is_stable(e_first: np.ndarray, e_small: np.ndarray) -> np.ndarray:
        # The side barely moved between the steps: its limit is reached (a kink at the point
        # itself, not one the smaller step reaches less of).
        return np.abs(e_first - e_small) <= allowed + small_floor + STABLE_SIDE * gap_first

    one_side = is_derivative(first.plus, small.plus) | is_derivative(first.minus, small.minus)
    # A kink at the point: both sides reached their limits and the gap between them stays (a
    # jump of the slope; a smooth function's shrinks with the step), above the smaller step's
    # round-off.
    at_point = (
        is_stable(first.plus, small.plus)
        & is_stable(first.minus, small.minus)
        & (gap_small * SMOOTH_SHRINK >= gap_first)
        & (gap_first > allowed + small_floor)
    )
    grew = gap_small > 2.0 * np.maximum(gap_first, allowed)
    crossed = (split & (one_side | at_point)) | grew
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
    # Near (not at) a kink the analytic value must be one side's derivative; at the kink itself
    # (or where opposite kinks cancelled at the first step) any value between the sides is a
    # valid subgradient.
    kink = (split & one_side) | ((split & at_point | grew) & inside) | blind
    return KinkVerdict(crossed=crossed, kink=kink)




#: A failing entry of zero gradient is tried at a fine and a coarse step this factor apart ...
FLAT_RATIO = 4.0

#: ... where a slope as large as the entry's numeric derivative changes the loss by this many
#: of its roundings across the fine central step (and twice that one-sided at the coarse one)
FLAT_UNITS = 4.0

#: ... and the fine one never below float64's relative central step: a stretch where the loss
#: is flat that is shorter than float64's step is no evidence (a float64 check would see the
#: staircase too, and float64 parameters are never tried).
FLAT_MIN_STEP = float(np.finfo(np.float64).eps) ** (1.0 / 3.0)


def flat_steps(
    numeric: np.ndarray, x: np.ndarray, rounding: float, relative_step: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fine and coarse steps at which entries of numeric derivative ``numeric`` at ``x``
    are tried for flatness, and whether they are finer than the check's smaller step
    (``relative_step * max(1, |x|) / RETRY_FACTOR``). ``rounding`` is the loss's rounding (an
    absolute change); the steps aim a quarter above :data:`FLAT_UNITS` of it, so that as
    taken in the parameter's dtype they still reach it."""
    scale = np.maximum(1.0, np.abs(x))
    with np.errstate(divide="ignore", over="ignore"):
        fine = np.maximum(
            1.25 * FLAT_UNITS * rounding / (2.0 * np.abs(numeric)), FLAT_MIN_STEP * scale
        )
    coarse = FLAT_RATIO * fine
    usable = np.isfinite(coarse) & (coarse <= relative_step * scale / RETRY_FACTOR)
    return fine, coarse, usable


def flat(
    losses: np.ndarray, taken: np.ndarray, numeric: np.ndarray, rounding: float
) -> np.ndarray:
    """Entries where the loss is flat: on both sides at the fine step, or on one side at both.

    ``losses`` holds ``L(x)``, ``L(x + fine)``, ``L(x + coarse)``, ``L(x - fine)``,
    ``L(x - coarse)`` in its columns (``L(x)`` evaluated beside them, so that all five come
    from the same computation) and ``taken`` the four steps as taken in the parameter's dtype.
    Flat is equal to ``L(x)`` exactly, where a slope of ``numeric`` would change the loss by
    :data:`FLAT_UNITS` roundings at least: across the fine central step (a smooth loss's
    central difference there is its slope, whatever its curvature), or one-sided at the coarse
    step, and by a quarter of that at the fine one (no curvature cancels a smooth loss's
    change at both).
    """
    f0 = losses[:, 0]
    same = losses[:, 1:] == f0[:, None]
    slope = np.abs(numeric)
    ordered = (taken[:, 1] > taken[:, 0]) & (taken[:, 3] > taken[:, 2])
    ordered &= (taken[:, 0] > 0) & (taken[:, 2] > 0)
    across = same[:, 0] & same[:, 2]
    across &= slope * (taken[:, 0] + taken[:, 2]) >= FLAT_UNITS * rounding
    side = (same[:, 0] & same[:, 1]) | (same[:, 2] & same[:, 3])
    side &= slope * np.minimum(taken[:, 1], taken[:, 3]) >= 2.0 * FLAT_UNITS * rounding
    return np.asarray(ordered & (across | side) & np.isfinite(f0))
