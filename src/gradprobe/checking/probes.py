"""Directional probes over every entry of a parameter, and bisection to the wrong entries.

A probe compares the analytic directional change ``g . d`` with the loss difference
``L(x + s) - L(x - s)`` along a random direction ``s = h v`` (``v`` a unit vector over all of the
parameter's entries). The perturbed vectors are rounded to the parameter's dtype, so ``d`` is the
step actually taken, ``(x + s) - (x - s)``, computed in float64. Two loss evaluations cover every
entry; a single entry wrong by ``e`` shifts the probe by ``e * d_i``.

The pass rule is not scaled up with the parameter's size: the probe may disagree by the loss's
round-off floor (as for single entries, ``16 * EPS * (|L+| + |L-|)``), the round-off of the
dot product, a truncation allowance and ``atol * ||d||``. Truncation is measured, not guessed: a
pilot along the first direction at steps ``s`` and ``2 s`` gives the cubic term of the central
difference, and the probe step ``h`` is then chosen so that truncation sits well below the
round-off floor, which makes ``h`` (hence the signal of one wrong entry) as large as the loss's
smoothness allows.

The discrepancy ``g . d - (L+ - L-)`` is additive over disjoint sets of entries, so a failing
probe is bisected: the entries are split into two contiguous halves, each half probed with the
same direction restricted to it, and failing halves are split again down to single entries,
which are then checked one by one (:func:`gradprobe.differences.evaluate_entries`). Only the
left half is evaluated: the right half's loss difference is the parent's minus the left's. When every
half fails at the first levels the failure is widespread and bisection stops early.

Kinks. A step along a random direction over thousands of entries crosses every
non-differentiable point near ``x`` (ReLU at 0, max, abs), where the central difference is not
``g . d``. A failing probe is therefore judged like a disagreeing entry
(:mod:`gradprobe.differences`), with the base loss ``L(x)``: its one-sided errors are
``e+ = (L(x + s) - L(x)) - g . d+`` and ``e- = (L(x) - L(x - s)) - g . d-`` (``d+``, ``d-``
the steps taken each way). It is probed again at a step ``RETRY_FACTOR`` times smaller
(2 evaluations) and passes when the disagreement vanishes there (scaled to the first step,
under a third of the first). Its step crossed a kink when the one-sided gap ``e+ - e-``
(scaled) did not shrink like a smooth function's (which shrinks by the step ratio); it is a
kink, passed and counted, when in addition the analytic slope lies between the one-sided ones
at the smaller step, with margins of the allowance plus how much each side moved between the
steps (a valid subgradient). Bisection of a probe whose step crossed a kink applies the same
rule to every failing half (an inferred right half is evaluated first: across a kink the
discrepancy is not additive); a smooth disagreement is bisected additively, at 2 evaluations
per level. Several kinks crossed at once whose slope jumps have opposite signs can put the
backprop convention (ReLU'(0) = 0) outside the one-sided interval of the whole probe;
bisection then separates them down to halves that pass or to entries the per-entry check
classifies. A wrong gradient still fails when its error exceeds what the kinks crossed can
explain; a smaller one hides under them in that probe (the per-entry sample still sees it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..evaluate import Evaluator
from ..numerics.steps import RETRY_FACTOR
from ..numerics.tolerances import NOISE_FACTOR, Tolerance
from .entries import SMOOTH_SHRINK, EntryResults, evaluate_entries

__all__ = [
    "DEFAULT_PROBES",
    "Probe",
    "ProbeOutcome",
    "merge_entry_results",
    "probe_note",
    "run_probes",
]

#: Random directions probed per parameter by default.
DEFAULT_PROBES = 2

#: Truncation allowed on a probe, as a multiple of the truncation measured by the pilot.
TRUNCATION_SAFETY = 4.0

#: The step is chosen so that the measured truncation is this fraction of the round-off floor.
TRUNCATION_TARGET = 1.0 / 8.0

#: Bisection levels at which "every half fails" means widespread.
WIDESPREAD_DEPTH = 2

#: At most this many entries are localized before the failure is called widespread.
MAX_LOCALIZED = 16

#: Perturbed vectors evaluated per call to the evaluator (bounds memory for slice probes).
CHUNK = 64

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
        The largest ``|analytic - numeric|`` that passes.
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

    @property
    def discrepancy(self) -> float:
        return abs(self.analytic - self.numeric)

    @property
    def within(self) -> bool:
        """The central difference agrees within the allowance (NaN fails)."""
        return bool(self.discrepancy <= self.allowed)

    @property
    def passed(self) -> bool:
        return self.within or self.kink or self.retry_passed

    @property
    def excess(self) -> float:
        """Discrepancy over allowed (inf for NaN)."""
        r = self.discrepancy / self.allowed if self.allowed > 0 else math.inf
        return r if r == r else math.inf


@dataclass(frozen=True)
class ProbeOutcome:
    """What the probes of one parameter found.

    Attributes
    ----------
    probes : tuple of Probe
        Top-level (and slice) probes.
    n_probes : int
        Probes evaluated (2 loss evaluations each), bisection included; the pilot counts as
        two.
    n_evaluations : int
        Loss evaluations spent on probes, bisection and the per-entry checks of the leaves.
    step : float
        ``h``, the length of the probe step ``s = h v``.
    truncation : float
        Truncation allowance on each probe (from the pilot).
    passed : bool
        Every top-level and slice probe passed.
    localized : ndarray of int64
        Flat indices that bisection isolated and per-entry checks confirmed wrong.
    leaves : EntryResults or None
        Per-entry results of the single entries bisection reached.
    widespread : bool
        Probe failures were spread over most of the parameter; bisection stopped early.
    unconfirmed : bool
        A probe failed but bisection isolated no entry that a per-entry check confirmed
        (a kink crossed by the probe step, or many small errors that cancel in halves).
    bisection_depth : int
        Levels of bisection run.
    n_kinks : int
        Top-level and slice probes that crossed a kink with a valid subgradient (passed).
    n_retried : int
        Probes (bisection included) re-evaluated at a smaller step.
    """

    probes: tuple[Probe, ...]
    n_probes: int
    n_evaluations: int
    step: float
    truncation: float
    passed: bool
    localized: np.ndarray
    leaves: EntryResults | None
    widespread: bool
    unconfirmed: bool
    bisection_depth: int = 0
    n_kinks: int = 0
    n_retried: int = 0

    @property
    def worst(self) -> Probe | None:
        return max(self.probes, key=lambda p: p.excess) if self.probes else None


class _Prober:
    """Builds perturbed vectors for ranges of one direction and turns losses into probes."""

    def __init__(
        self,
        evaluator: Evaluator,
        param: int,
        analytic_flat: np.ndarray,
        directions: np.ndarray,
        step: float,
        tolerance: Tolerance,
        truncation: float,
    ) -> None:
        self.evaluator = evaluator
        self.param = param
        base = evaluator.base[param].reshape(-1)
        self.base = base
        self.dtype = base.dtype
        self.directions = directions
        self.step = step
        self.g = np.asarray(analytic_flat, dtype=np.float64)
        self.tolerance = tolerance
        self.truncation = truncation
        self.n_probes = 0
        self.n_retried = 0
        self._f0: float | None = None
        self._set_step(step)
        self._first = (self.plus, self.minus)
        self._small: tuple[np.ndarray, np.ndarray] | None = None

    def _set_step(self, step: float) -> None:
        x = self.base.astype(np.float64, copy=False)
        k = self.directions.shape[0]
        self.plus = np.empty((k, x.size), dtype=self.dtype)
        self.minus = np.empty((k, x.size), dtype=self.dtype)
        for j in range(k):  # row by row: no (k, n) float64 temporaries
            s = step * self.directions[j]
            self.plus[j] = x + s
            self.minus[j] = x - s

    def _sums(self, j: int, lo: int, hi: int) -> tuple[float, float, float, float]:
        """Over entries ``lo:hi`` of direction ``j`` at the current step: ``g . d``, its
        forward part ``g . ((x + s) - x)``, ``|g| . |d|`` and ``|d|**2`` (``d`` the step taken).

        Computed per range rather than stored for every entry: four float64 arrays per
        direction and step would multiply the check's memory for a large parameter.
        """
        x = self.base[lo:hi].astype(np.float64, copy=False)
        g = self.g[lo:hi]
        up = self.plus[j, lo:hi].astype(np.float64)
        up -= x
        taken = x - self.minus[j, lo:hi].astype(np.float64)
        taken += up
        gd = g * taken
        gd_sum = float(gd.sum())
        abs_gd_sum = float(np.abs(gd, out=gd).sum())
        up *= g
        taken *= taken
        return gd_sum, float(up.sum()), abs_gd_sum, float(taken.sum())

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
        if self._small is None:
            self._set_step(self.step / RETRY_FACTOR)
            self._small = (self.plus, self.minus)
        else:
            self.plus, self.minus = self._small
        try:
            small = self.run([(p.lo, p.hi, p.direction)], p.depth)[0]
            norm_small = math.sqrt(self._sums(p.direction, p.lo, p.hi)[3])
            sides = self.one_sided(small)
        finally:
            self.plus, self.minus = self._first
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
        allowed = p.allowed
        small, r, (s_plus, s_minus) = self._run_small(p)
        self.n_retried += 1
        # Scaled to the first step (r = ratio of the steps taken), a wrong gradient disagrees
        # by the same amount at both steps; truncation and kinks no longer crossed shrink.
        if small.within and r * small.discrepancy < p.discrepancy / 3.0:
            return dataclasses.replace(p, retried=True, retry_passed=True)
        # Scaled, a smooth function's one-sided gap (curvature, ~ step**2) shrinks by the step
        # ratio; a kink's (the jump of the slope, ~ step) stays, or grows when kinks of
        # opposite sides cancelled at the first step.
        gap, gap_s = abs(e_plus - e_minus), r * abs(s_plus - s_minus)
        crossed = (gap > allowed and gap_s * SMOOTH_SHRINK >= gap) or (
            gap_s > 2.0 * max(gap, allowed) and abs(s_plus - s_minus) > small.allowed
        )
        # The analytic slope between the one-sided ones at the smaller step, each side widened
        # by the allowance and by how much it moved between the steps (one-sided differences
        # are first-order accurate only).
        sp, sm = r * s_plus, r * s_minus
        m_plus = allowed + abs(e_plus - sp)
        m_minus = allowed + abs(e_minus - sm)
        inside = not ((sp > m_plus and sm > m_minus) or (sp < -m_plus and sm < -m_minus))
        return dataclasses.replace(
            p, retried=True, crossed=bool(crossed), kink=bool(crossed and inside)
        )

    def run(self, ranges: list[tuple[int, int, int]], depth: int) -> list[Probe]:
        """Probe each ``(lo, hi, direction)``; two loss evaluations each."""
        out: list[Probe] = []
        for start in range(0, len(ranges), CHUNK // 2):
            chunk = ranges[start : start + CHUNK // 2]
            vectors = np.empty((2 * len(chunk), self.base.size), dtype=self.dtype)
            for r, (lo, hi, j) in enumerate(chunk):
                vectors[2 * r] = self.base
                vectors[2 * r, lo:hi] = self.plus[j, lo:hi]
                vectors[2 * r + 1] = self.base
                vectors[2 * r + 1, lo:hi] = self.minus[j, lo:hi]
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
        return Probe(
            lo=lo,
            hi=hi,
            direction=j,
            depth=left.depth,
            analytic=self._sums(j, lo, hi)[0],
            numeric=parent.numeric - left.numeric,
            allowed=parent.allowed + left.allowed,
            inferred=True,
        )

    def _probe(self, lo: int, hi: int, j: int, depth: int, f_plus: float, f_minus: float) -> Probe:
        tol = self.tolerance
        noise = float(tol.difference_floor(f_plus, f_minus))
        # The analytic side's own round-off: a sum of (hi - lo) products of inputs that carry
        # the gradient's precision (the loss's epsilon, never finer than float64's).
        gd, _, abs_gd, taken_sq = self._sums(j, lo, hi)
        dot_noise = NOISE_FACTOR * max(tol.loss_eps, _EPS64) * abs_gd
        atol_term = tol.atol * math.sqrt(taken_sq)
        return Probe(
            lo=lo,
            hi=hi,
            direction=j,
            depth=depth,
            analytic=gd,
            numeric=float(f_plus - f_minus),
            allowed=noise + dot_noise + self.truncation + atol_term,
            f_plus=float(f_plus),
            f_minus=float(f_minus),
        )


def _directions(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    v = rng.standard_normal((k, n))
    for row in v:  # row by row: no (k, n) temporary; a plain sum, not BLAS (thread-independent)
        row /= np.sqrt(np.sum(row * row))
    return v


def _choose_step(
    evaluator: Evaluator,
    param: int,
    analytic_flat: np.ndarray,
    direction: np.ndarray,
    relative_step: float,
    tolerance: Tolerance,
) -> tuple[float, float]:
    """Pilot along ``direction`` at ``s`` and ``2 s``: the probe step and its truncation.

    With ``N(s) = L(x + s) - L(x - s) = g . d + T(s) + O(s^5)`` and ``T(2 s) = 8 T(s)``, the
    cubic term is ``T(s) = ((N(2s) - g . d2) - 2 (N(s) - g . d1)) / 6`` (a wrong gradient cancels
    out of this combination). The probe step then puts ``T`` at ``TRUNCATION_TARGET`` of the
    round-off floor, within ``[h_min, 2 h_pilot]``, ``h_pilot = h_min * n**(1/3)``.
    """
    base = evaluator.base[param].reshape(-1)
    n = base.size
    x = base.astype(np.float64, copy=False)
    scale = max(1.0, float(np.sqrt(np.mean(x * x))))
    h_min = relative_step * scale
    h_pilot = h_min * n ** (1.0 / 3.0)
    vectors = np.empty((4, n), dtype=base.dtype)
    for r, mult in enumerate((1.0, -1.0, 2.0, -2.0)):
        vectors[r] = (x + mult * h_pilot * direction).astype(base.dtype)
    losses = evaluator.vector_losses(param, vectors)
    g = np.asarray(analytic_flat, dtype=np.float64)
    d1 = vectors[0].astype(np.float64)
    d1 -= vectors[1]
    d2 = vectors[2].astype(np.float64)
    d2 -= vectors[3]
    r1 = (losses[0] - losses[1]) - float(g @ d1)
    r2 = (losses[2] - losses[3]) - float(g @ d2)
    cubic = abs(r2 - 2.0 * r1) / 6.0  # truncation at h_pilot
    noise = float(tolerance.difference_floor(losses[0], losses[1]))
    if not (np.isfinite(cubic) and np.isfinite(noise)):
        return h_min, math.inf
    # The estimate carries round-off of its own (about noise / 2): never trust less than that.
    cubic = max(cubic, 0.5 * noise)
    h = h_pilot * (TRUNCATION_TARGET * noise / cubic) ** (1.0 / 3.0) if cubic > 0 else h_pilot
    h = min(max(h, h_min), 2.0 * h_pilot)
    truncation = TRUNCATION_SAFETY * cubic * (h / h_pilot) ** 3
    return h, truncation


def run_probes(
    evaluator: Evaluator,
    param: int,
    analytic_flat: np.ndarray,
    relative_step: float,
    tolerance: Tolerance,
    rng: np.random.Generator,
    *,
    n_directions: int = DEFAULT_PROBES,
    slice_probes: bool = False,
    max_localized: int = MAX_LOCALIZED,
    method: str = "central",
) -> ProbeOutcome:
    """Probe every entry of parameter ``param`` along random directions; bisect failures.

    Parameters
    ----------
    evaluator : Evaluator
        Evaluates the loss with the parameter replaced (``vector_losses``).
    param : int
        Which parameter.
    analytic_flat : ndarray
        The analytic gradient of the parameter, flat, float64.
    relative_step : float
        The per-entry relative step (sets the smallest probe step and the leaves' checks).
    tolerance : Tolerance
        The parameter's pass rule (its ``loss_eps`` sets the round-off floor).
    rng : numpy.random.Generator
        Seeded generator for the directions.
    n_directions : int
        Random directions over the whole parameter (>= 1).
    slice_probes : bool
        Also probe each slice along the leading axis (one probe per row, 2 evaluations each).
    max_localized : int
        Entries to localize before calling the failure widespread.
    method : str
        Scheme for the per-entry checks of the leaves.

    Returns
    -------
    ProbeOutcome
    """
    n0 = evaluator.n_evaluations
    shape = evaluator.layout.shapes[param]
    n = int(evaluator.base[param].size)
    directions = _directions(rng, max(1, n_directions), n)
    step, truncation = _choose_step(
        evaluator, param, analytic_flat, directions[0], relative_step, tolerance
    )
    prober = _Prober(evaluator, param, analytic_flat, directions, step, tolerance, truncation)
    prober.n_probes = 2  # the pilot: steps s and 2 s
    ranges = [(0, n, j) for j in range(directions.shape[0])]
    if slice_probes and len(shape) >= 2 and shape[0] > 1:
        row = n // shape[0]
        ranges += [(r * row, (r + 1) * row, 0) for r in range(shape[0])]
    top = [prober.judge(p) for p in prober.run(ranges, depth=0)]
    failing = [p for p in top if not p.passed]

    widespread = False
    depth = 0
    leaves: list[int] = []
    if failing:
        whole = [p for p in failing if p.hi - p.lo == n]
        # One direction is enough to localize: bisect along the worst whole-parameter probe.
        frontier = [max(whole, key=lambda p: p.excess)] if whole else failing
        all_failing = True
        while frontier:
            parents = []
            for p in frontier:
                if p.hi - p.lo == 1:
                    leaves.append(p.lo)
                else:
                    parents.append(p)
            if not parents:
                break
            depth += 1
            # Probe the left half; the right half's loss difference is the parent's minus the
            # left's (the discrepancy is additive), so each level costs 2 evaluations per node.
            lefts = prober.run([(p.lo, (p.lo + p.hi) // 2, p.direction) for p in parents], depth)
            children = []
            for parent, left in zip(parents, lefts, strict=True):
                right = prober.complement(parent, left)
                if parent.crossed:
                    # The parent's step crossed kinks: judge the halves by the kink rule too.
                    # A smooth disagreement (a wrong gradient) is bisected additively.
                    left, right = prober.judge(left), prober.judge(right)
                children += [left, right]
            frontier = [c for c in children if not c.passed]
            all_failing = all_failing and len(frontier) == len(children)
            if (depth >= WIDESPREAD_DEPTH and all_failing) or (
                len(frontier) + len(leaves) > max_localized
            ):
                widespread = True
                break

    leaf_results = None
    localized = np.empty(0, dtype=np.int64)
    if leaves and not widespread:
        idx = np.unique(np.asarray(leaves, dtype=np.int64))
        leaf_results = evaluate_entries(
            evaluator, param, idx, analytic_flat, relative_step, tolerance, method
        )
        localized = idx[leaf_results.failed]
    return ProbeOutcome(
        probes=tuple(top),
        n_probes=prober.n_probes,
        n_evaluations=evaluator.n_evaluations - n0,
        step=step,
        truncation=truncation,
        passed=not failing,
        localized=localized,
        leaves=leaf_results,
        widespread=widespread,
        unconfirmed=bool(failing) and not widespread and localized.size == 0,
        bisection_depth=depth,
        n_kinks=sum(1 for p in top if p.kink),
        n_retried=prober.n_retried,
    )


def merge_entry_results(a: EntryResults, b: EntryResults) -> EntryResults:
    """Per-entry results of ``a`` and of the entries of ``b`` not in ``a``, sorted by index."""
    extra = ~np.isin(b.flat_index, a.flat_index)
    if not np.any(extra):
        return a
    order = np.argsort(np.concatenate([a.flat_index, b.flat_index[extra]]), kind="stable")
    merged = {}
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, np.ndarray) and va.shape[:1] == a.flat_index.shape:
            merged[f.name] = np.concatenate([va, vb[extra]])[order]
        else:
            merged[f.name] = va
    return type(a)(**merged)


def probe_note(outcome: ProbeOutcome | None, shape: tuple[int, ...]) -> str:
    """What the probes found, in words, for the coverage statement ('' when they passed)."""
    if outcome is None or outcome.passed:
        return ""
    worst = outcome.worst
    excess = f"{worst.excess:.3g}x its allowance" if worst is not None else "beyond tolerance"
    if outcome.widespread:
        return (
            f"probes disagree ({excess}) across most of the parameter: widespread, "
            f"bisection stopped after {outcome.bisection_depth} levels"
        )
    if outcome.localized.size:
        where = ", ".join(
            "[" + ", ".join(str(int(i)) for i in np.unravel_index(int(f), shape)) + "]"
            for f in outcome.localized[:5]
        )
        more = f" and {outcome.localized.size - 5} more" if outcome.localized.size > 5 else ""
        return (
            f"a probe disagreed ({excess}); bisection localized {outcome.localized.size} wrong "
            f"{'entry' if outcome.localized.size == 1 else 'entries'}: {where}{more} "
            f"({outcome.n_evaluations} evaluations)"
        )
    return (
        f"a probe disagreed ({excess}) but bisection found no entry that a per-entry check "
        "confirms (a kink crossed by the probe step, or many small errors): not counted as a "
        "failure"
    )
