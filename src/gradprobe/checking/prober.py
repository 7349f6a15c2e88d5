"""The probing machinery: one directional probe over a range of entries, its pilot step and
its judgement by the kink rule (see :mod:`gradprobe.checking.probes` for what probes are for).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

from ..evaluate.rows import ComputedRows
from ..numerics.directions import Directions, pairwise
from ..numerics.steps import in_dtype
from ..numerics.tolerances import NOISE_FACTOR
from .context import ParamCheck
from .kinks import RETRY_FACTOR, OneSided, classify, retry_passes

#: Truncation allowed on a probe, as a multiple of the truncation measured by the pilot.
TRUNCATION_SAFETY = 4.0

#: The step is chosen so that the measured truncation is this fraction of the round-off floor.
TRUNCATION_TARGET = 1.0 / 8.0

#: Perturbed vectors evaluated per call to the evaluator (bounds memory for slice probes).
CHUNK = 64
#: ... and at most this many bytes of them (but always one pair).
VECTOR_BYTES = 16 * 2**20

_EPS64 = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Probe:
    """One directional probe over entries ``lo:hi`` (flat) of a parameter.

    Attributes
    ----------
    lo, hi : int
        The flat range of entries the direction covers.
    direction : int
        Which random direction (restricted to ``lo:hi``).
    depth : int
        Bisection depth (0 for a top-level or slice probe).
    analytic : float
        ``g . d`` over the range.
    numeric : float
        ``L(x + s) - L(x - s)``.
    allowed : float
        The largest ``|analytic - numeric|`` that passes: round-off, truncation and ``atol``,
        no ``rtol`` (a disagreement above it is a suspicion, bisected to single entries that
        the per-entry rule judges).
    inferred : bool
        ``numeric`` was not evaluated but inferred as the parent's minus the sibling's.
    f_plus, f_minus : float
        ``L(x + s)`` and ``L(x - s)`` (NaN when inferred).
    retried : bool
        Probed again at a smaller step.
    kink : bool
        The step crosses a non-differentiable point and ``g . d`` is a valid subgradient
        slope: the probe passes.
    retry_passed : bool
        The disagreement vanished at the smaller step: the probe passes.
    crossed : bool
        The one-sided gap did not shrink like a smooth function's: the step crosses a kink
        (whether or not the analytic slope lies within the one-sided interval).
    bound : float
        ``allowed`` plus the most that entries all within ``rtol`` and ``atol`` can add up to:
        a discrepancy above it proves that some entry of the range exceeds ``rtol``.
    """

    lo: int
    hi: int
    direction: int
    depth: int
    analytic: float
    numeric: float
    allowed: float
    inferred: bool = False
    f_plus: float = math.nan
    f_minus: float = math.nan
    retried: bool = False
    kink: bool = False
    retry_passed: bool = False
    crossed: bool = False
    bound: float = math.inf

    @property
    def discrepancy(self) -> float:
        return abs(self.analytic - self.numeric)

    @property
    def within(self) -> bool:
        """The central difference agrees within the allowance (NaN fails)."""
        return bool(self.discrepancy <= self.allowed)

    @property
    def beyond_rtol(self) -> bool:
        """The discrepancy exceeds what entries all within ``rtol`` can explain (NaN counts)."""
        return not bool(self.discrepancy <= self.bound)

    @property
    def passed(self) -> bool:
        return self.within or self.kink or self.retry_passed

    @property
    def excess(self) -> float:
        """Discrepancy over allowed (inf for NaN)."""
        r = self.discrepancy / self.allowed if self.allowed > 0 else math.inf
        return r if r == r else math.inf


class Prober:
    """Builds perturbed vectors for ranges of one direction and turns losses into probes."""

    def __init__(
        self, ctx: ParamCheck, directions: Directions, step: float, truncation: float
    ) -> None:
        self.evaluator = ctx.evaluator
        self.param = ctx.param
        base = ctx.base_flat
        self.base = base
        self.dtype = base.dtype
        self.directions = directions
        self.step = step
        self.g = np.asarray(ctx.analytic_flat, dtype=np.float64)
        self.tolerance = ctx.tolerance
        self.truncation = truncation
        self.n_probes = 0
        self.n_retried = 0
        self._f0: float | None = None
        #: The step the perturbed values are computed at (the first, or the retry's).
        self._at = step

    def _side(self, j: int, lo: int, hi: int, sign: float, at: float | None = None) -> np.ndarray:
        """Entries ``lo:hi`` (a span of :meth:`Directions.spans`) of ``x + sign * s`` (``s`` the step
        ``at``, default the current one, along direction ``j``) in the parameter's dtype.

        Computed when needed rather than stored, a piece at a time: a (directions, n) array
        per side and step would multiply the check's memory for a large parameter
        (elementwise, so a piece computed alone is bit for bit that piece of the whole)."""
        x = self.base[lo:hi].astype(np.float64, copy=False)
        v = (self._at if at is None else at) * self.directions.values(j, lo, hi)
        with np.errstate(over="ignore"):  # kept inside the dtype's range (issue 26)
            if sign > 0:
                v += x
            else:
                np.subtract(x, v, out=v)
            return in_dtype(v, self.dtype, overwrite=True)

    def _fill(self, ranges: list[tuple[int, int, int]], at: float, r: int, out: np.ndarray) -> None:
        """Vector ``r`` of :meth:`run`'s call: ``x + s`` (even ``r``) or ``x - s`` (odd) over
        range ``r // 2``, the base elsewhere, written into ``out`` piece by piece."""
        lo, hi, j = ranges[r // 2]
        sign = 1.0 if r % 2 == 0 else -1.0
        out[:lo] = self.base[:lo]
        out[hi:] = self.base[hi:]
        for a, b in self.directions.spans(j, lo, hi):
            out[a:b] = self._side(j, a, b, sign, at)

    def _sums(self, j: int, lo: int, hi: int) -> tuple[float, float, float, float, float]:
        """Over entries ``lo:hi`` of direction ``j`` at the current step: ``g . d``, its
        forward part ``g . ((x + s) - x)``, ``|g| . |d|``, ``|d|**2`` and ``sum |d|`` (``d`` the
        step taken).

        Computed per range, piece by piece (numpy's pairwise sums reproduced to the bit by
        :func:`~gradprobe.numerics.directions.pairwise`), rather than stored for every entry:
        float64 arrays per direction and step would multiply the check's memory for a large
        parameter.
        """
        sums = pairwise(lo, hi, lambda a, b: self._piece_sums(j, a, b), self.directions.leaf)
        return (float(sums[0]), float(sums[1]), float(sums[2]), float(sums[3]), float(sums[4]))

    def _piece_sums(self, j: int, lo: int, hi: int) -> np.ndarray:
        """:meth:`_sums`'s five ``np.sum`` over one piece, in that order."""
        x = self.base[lo:hi].astype(np.float64, copy=False)
        g = self.g[lo:hi]
        up = self._side(j, lo, hi, 1.0).astype(np.float64, copy=False)  # a fresh array
        up -= x
        taken = self._side(j, lo, hi, -1.0).astype(np.float64, copy=False)
        np.subtract(x, taken, out=taken)
        taken += up
        tmp = g * taken  # g . d, then |g| . |d|, then sum |d|: one scratch array for the three
        gd_sum = tmp.sum()
        abs_gd_sum = np.abs(tmp, out=tmp).sum()
        up *= g
        abs_d_sum = np.abs(taken, out=tmp).sum()
        taken *= taken
        return np.array([gd_sum, up.sum(), abs_gd_sum, taken.sum(), abs_d_sum])

    @property
    def f0(self) -> float:
        """The base loss (evaluated once, when a probe first needs its one-sided errors)."""
        if self._f0 is None:
            self._f0 = self.evaluator.base_loss()
        return self._f0

    def one_sided(self, p: Probe) -> tuple[float, float]:
        """``(e+, e-)``: each one-sided difference minus its analytic part."""
        a_plus = self._sums(p.direction, p.lo, p.hi)[1]
        e_plus = (p.f_plus - self.f0) - a_plus
        e_minus = (self.f0 - p.f_minus) - (p.analytic - a_plus)
        return e_plus, e_minus

    def _run_small(self, p: Probe) -> tuple[Probe, float, tuple[float, float]]:
        """``p`` probed at a ``RETRY_FACTOR`` times smaller step: the probe, the ratio of the
        steps taken (first / small) and its one-sided errors."""
        norm_first = math.sqrt(self._sums(p.direction, p.lo, p.hi)[3])
        self._at = self.step / RETRY_FACTOR
        try:
            small = self.run([(p.lo, p.hi, p.direction)], p.depth)[0]
            norm_small = math.sqrt(self._sums(p.direction, p.lo, p.hi)[3])
            sides = self.one_sided(small)
        finally:
            self._at = self.step
        ratio = norm_first / norm_small if norm_small > 0 else math.inf
        return small, ratio, sides

    def judge(self, p: Probe) -> Probe:
        """``p`` with the kink rule applied when it disagrees (see the module text)."""
        if p.within or not math.isfinite(p.analytic):
            return p
        if p.inferred:
            # Across a kink the discrepancy is not additive: measure this half itself.
            p = self.run([(p.lo, p.hi, p.direction)], p.depth)[0]
            if p.within:
                return p
        if not math.isfinite(p.numeric):
            return p
        e_plus, e_minus = self.one_sided(p)
        small, r, (s_plus, s_minus) = self._run_small(p)
        self.n_retried += 1
        # Scaled to the first step (r = ratio of the steps taken): the kink rule of
        # gradprobe.checking.kinks, in units of a loss difference.
        if retry_passes(small.within, r * small.discrepancy, p.discrepancy):
            return dataclasses.replace(p, retried=True, retry_passed=True)
        small_floor = r * float(self.tolerance.difference_floor(small.f_plus, small.f_minus))
        found = classify(
            OneSided(np.array([e_plus]), np.array([e_minus])),
            OneSided(np.array([r * s_plus]), np.array([r * s_minus])),
            np.array([p.allowed]),
            np.array([small_floor]),
            r,
        )
        return dataclasses.replace(
            p, retried=True, crossed=bool(found.crossed[0]), kink=bool(found.kink[0])
        )

    def run(self, ranges: list[tuple[int, int, int]], depth: int) -> list[Probe]:
        """Probe each ``(lo, hi, direction)``; two loss evaluations each."""
        out: list[Probe] = []
        # Vectors per call: up to CHUNK, fewer where they would outgrow VECTOR_BYTES (a large
        # parameter's vectors go one pair at a time; each loss value is the same either way).
        pairs = max(1, min(CHUNK // 2, VECTOR_BYTES // max(1, 2 * self.base.nbytes)))
        for start in range(0, len(ranges), pairs):
            chunk = ranges[start : start + pairs]
            # Computed into the evaluator's working copy as each is evaluated, never stored.
            vectors = ComputedRows(
                2 * len(chunk),
                self.base.size,
                self.dtype,
                functools.partial(self._fill, chunk, self._at),
            )
            losses = self.evaluator.vector_losses(self.param, vectors)
            for r, (lo, hi, j) in enumerate(chunk):
                out.append(self._probe(lo, hi, j, depth, losses[2 * r], losses[2 * r + 1]))
        self.n_probes += len(ranges)
        return out

    def complement(self, parent: Probe, left: Probe) -> Probe:
        """The right half of ``parent``, its loss difference inferred as parent minus left.

        The analytic side is summed directly; the allowance is the parent's plus the left's
        (both round-off floors and truncations enter the inferred difference).
        """
        lo, hi, j = left.hi, parent.hi, parent.direction
        gd, _, abs_gd, _, abs_d = self._sums(j, lo, hi)
        allowed = parent.allowed + left.allowed
        return Probe(
            lo=lo,
            hi=hi,
            direction=j,
            depth=left.depth,
            analytic=gd,
            numeric=parent.numeric - left.numeric,
            allowed=allowed,
            bound=allowed + self._rtol_share(abs_gd, abs_d),
            inferred=True,
        )

    def _probe(self, lo: int, hi: int, j: int, depth: int, f_plus: float, f_minus: float) -> Probe:
        tol = self.tolerance
        noise = float(tol.difference_floor(f_plus, f_minus))
        # The analytic side's own round-off: a sum of (hi - lo) products of inputs that carry
        # the gradient's precision (the loss's epsilon, never finer than float64's).
        gd, _, abs_gd, taken_sq, abs_d = self._sums(j, lo, hi)
        dot_noise = NOISE_FACTOR * max(tol.loss_eps, _EPS64) * abs_gd
        allowed = noise + dot_noise + self.truncation + tol.atol * math.sqrt(taken_sq)
        return Probe(
            lo=lo,
            hi=hi,
            direction=j,
            depth=depth,
            analytic=gd,
            numeric=float(f_plus - f_minus),
            allowed=allowed,
            bound=allowed + self._rtol_share(abs_gd, abs_d),
            f_plus=float(f_plus),
            f_minus=float(f_minus),
        )

    def _rtol_share(self, abs_gd: float, abs_d: float) -> float:
        """The largest discrepancy that entries all within ``rtol`` and ``atol`` can add up to.

        ``|a - n| <= rtol * (|a| + |n|) + atol`` for every entry implies
        ``|a - n| <= (2 rtol |a| + atol) / (1 - rtol)``, so the probe's discrepancy is at most
        ``sum (2 rtol |g_i| + atol) |d_i| / (1 - rtol)``.
        """
        rtol = min(self.tolerance.rtol, 0.5)
        return (2.0 * rtol * abs_gd + self.tolerance.atol * abs_d) / (1.0 - rtol)


def choose_step(ctx: ParamCheck, directions: Directions) -> tuple[float, float]:
    """Pilot along the first of ``directions`` at ``s`` and ``2 s``: the probe step and its
    truncation.

    With ``N(s) = L(x + s) - L(x - s) = g . d + T(s) + O(s^5)`` and ``T(2 s) = 8 T(s)``, the
    cubic term is ``T(s) = ((N(2s) - g . d2) - 2 (N(s) - g . d1)) / 6`` (a wrong gradient cancels
    out of this combination). The probe step then puts ``T`` at ``TRUNCATION_TARGET`` of the
    round-off floor, within ``[h_min, 2 h_pilot]``, ``h_pilot = h_min * n**(1/3)``.

    Everything over the parameter's entries goes piece by piece (sums as numpy's, to the bit,
    whatever the BLAS thread count), so nothing as large as the parameter is held.
    """
    base = ctx.base_flat
    n = base.size
    dtype = base.dtype

    def x(a: int, b: int) -> np.ndarray:
        return base[a:b].astype(np.float64, copy=False)

    pieces = directions.spans(0, 0, n)
    big = max((float(np.max(np.abs(x(a, b)))) for a, b in pieces), default=0.0)
    if big > 0:  # an rms by scaled squares: no overflow
        squares = pairwise(0, n, lambda a, b: np.sum((x(a, b) / big) ** 2))
        scale = max(1.0, big * float(np.sqrt(squares / n)))
    else:
        scale = 1.0
    h_min = ctx.relative_step * scale
    h_pilot = h_min * n ** (1.0 / 3.0)
    g = np.asarray(ctx.analytic_flat, dtype=np.float64)

    def side(sign: float, a: int, b: int) -> np.ndarray:
        v = sign * h_pilot * directions.values(0, a, b)  # then x + v in its place
        with np.errstate(over="ignore"):  # kept inside the dtype's range (issue 26)
            v += x(a, b)
            return in_dtype(v, dtype, overwrite=True)

    def pair(mult: float) -> np.ndarray:
        """``L(x + m h d)``, ``L(x - m h d)``."""

        def fill(r: int, out: np.ndarray) -> None:
            for a, b in pieces:
                out[a:b] = side((mult, -mult)[r], a, b)

        return ctx.evaluator.vector_losses(ctx.param, ComputedRows(2, n, dtype, fill))

    def analytic(mult: float) -> float:
        """``g .`` the step taken between ``x + m h d`` and ``x - m h d``: a sum as numpy's,
        piece by piece (a BLAS dot product splits the sum by its thread count, and the probe
        step would depend on the machine's)."""

        def dots(a: int, b: int) -> np.float64:
            taken = np.subtract(side(mult, a, b), side(-mult, a, b), dtype=np.float64)
            return np.sum(g[a:b] * taken)

        return float(pairwise(0, n, dots))

    # The two pairs' losses, then each step taken and its dot product in turn.
    losses = np.concatenate([pair(1.0), pair(2.0)])
    gd1 = analytic(1.0)
    gd2 = analytic(2.0)
    r1 = (losses[0] - losses[1]) - gd1
    r2 = (losses[2] - losses[3]) - gd2
    cubic = abs(r2 - 2.0 * r1) / 6.0  # truncation at h_pilot
    noise = float(ctx.tolerance.difference_floor(losses[0], losses[1]))
    if not (np.isfinite(cubic) and np.isfinite(noise)):
        return h_min, math.inf
    # The estimate carries round-off of its own (about noise / 2): never trust less than that.
    cubic = max(cubic, 0.5 * noise)
    h = h_pilot * (TRUNCATION_TARGET * noise / cubic) ** (1.0 / 3.0) if cubic > 0 else h_pilot
    h = min(max(h, h_min), 2.0 * h_pilot)
    truncation = TRUNCATION_SAFETY * cubic * (h / h_pilot) ** 3
    return h, truncation
