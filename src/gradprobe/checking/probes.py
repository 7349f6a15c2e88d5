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
which are then checked one by one (:func:`gradprobe.checking.entries.evaluate_entries`). Only the
left half is evaluated: the right half's loss difference is the parent's minus the left's. When every
half fails at the first levels the failure is widespread and bisection stops early.

Kinks. A step along a random direction over thousands of entries crosses every
non-differentiable point near ``x`` (ReLU at 0, max, abs), where the central difference is not
``g . d``. A failing probe is judged like a disagreeing entry, by the one retry and kink rule of
:mod:`gradprobe.checking.kinks`: its one-sided errors ``e+ = (L(x + s) - L(x)) - g . d+`` and
``e- = (L(x) - L(x - s)) - g . d-`` at ``s`` and at a step ``RETRY_FACTOR`` times smaller
(2 evaluations), the smaller one's scaled to the first step. Bisection of a probe whose step
crossed a kink applies the same rule to every failing half (an inferred right half is evaluated
first: across a kink the discrepancy is not additive); a smooth disagreement is bisected
additively, at 2 evaluations per level. A wrong gradient still fails when its error exceeds
what the kinks crossed can explain; a smaller one hides under them in that probe (the per-entry
sample still sees it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..numerics.directions import Directions
from ..options import DEFAULT_PROBES
from ..report.model import MAX_BAD_INDICES
from .context import ParamCheck
from .entries import evaluate_entries
from .plan import slice_rows
from .prober import Probe, Prober, choose_step
from .results import EntryResults, merge_entry_results

#: Bisection levels after which "every half fails" asks whether most entries are wrong.
WIDESPREAD_DEPTH = 2

#: Entries checked one by one to decide whether most entries are wrong, when the sample
#: already checked has fewer.
WIDESPREAD_CHECKS = 16


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
        Probes disagreed across the whole parameter beyond ``rtol`` and most entries checked
        one by one fail: bisection stopped early.
    capped : bool
        More ranges disagreed beyond ``rtol`` than entries may be localized
        (``max_localized``): localization stopped with those found so far.
    within_rtol : bool
        Probes disagreed across the parameter, but never by more than entries all within
        ``rtol`` can explain: a relative error below ``rtol`` everywhere (not a failure).
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
    capped: bool = False
    within_rtol: bool = False
    bisection_depth: int = 0
    n_kinks: int = 0
    n_retried: int = 0

    @property
    def worst(self) -> Probe | None:
        return max(self.probes, key=lambda p: p.excess) if self.probes else None


def run_probes(
    ctx: ParamCheck,
    rng: np.random.Generator,
    *,
    n_directions: int = DEFAULT_PROBES,
    slice_probes: bool = False,
    max_localized: int = MAX_BAD_INDICES,
    checked: EntryResults | None = None,
) -> ProbeOutcome:
    """Probe every entry of the parameter of ``ctx`` along random directions; bisect failures.

    Parameters
    ----------
    ctx : ParamCheck
        The parameter, its analytic gradient, the pass rule (its ``loss_eps`` sets the
        round-off floor) and the per-entry step (the smallest probe step and the leaves'
        checks).
    rng : numpy.random.Generator
        Seeded generator for the directions.
    n_directions : int
        Random directions over the whole parameter (>= 1).
    slice_probes : bool
        Also probe each slice along the leading axis (one probe per row, 2 evaluations each).
    max_localized : int
        Entries to localize one by one before localization stops.
    checked : EntryResults, optional
        Entries already checked one by one (the sample): evidence of whether most entries
        are wrong when the probes disagree everywhere.

    Returns
    -------
    ProbeOutcome
    """
    evaluator = ctx.evaluator
    n0 = evaluator.n_evaluations
    shape = ctx.shape
    n = ctx.size
    # Drawn again piece by piece when needed: never a (directions, n) array.
    directions = Directions(rng, max(1, n_directions), n)
    step, truncation = choose_step(ctx, directions)
    prober = Prober(ctx, directions, step, truncation)
    prober.n_probes = 2  # the pilot: steps s and 2 s
    ranges = [(0, n, j) for j in range(directions.k)]
    rows = slice_rows(shape) if slice_probes else 0  # the plan counts the same rows
    if rows:
        row = n // rows
        ranges += [(r * row, (r + 1) * row, 0) for r in range(rows)]
    top = [prober.judge(p) for p in prober.run(ranges, depth=0)]
    failing = [p for p in top if not p.passed]

    search = _Bisection(ctx, prober, n, max_localized, checked, rng)
    if failing:
        whole = [p for p in failing if p.hi - p.lo == n]
        # One direction is enough to localize: bisect along the worst whole-parameter probe.
        search.run([max(whole, key=lambda p: p.excess)] if whole else failing)
    leaf_results = search.leaf_results()
    localized = (
        leaf_results.flat_index[leaf_results.failed]
        if leaf_results is not None
        else np.empty(0, dtype=np.int64)
    )
    return ProbeOutcome(
        probes=tuple(top),
        n_probes=prober.n_probes,
        n_evaluations=evaluator.n_evaluations - n0,
        step=step,
        truncation=truncation,
        passed=not failing,
        localized=localized,
        leaves=leaf_results,
        widespread=search.widespread,
        capped=search.capped,
        within_rtol=bool(failing) and search.within_rtol,
        unconfirmed=bool(failing)
        and not (search.widespread or search.capped or search.within_rtol)
        and localized.size == 0,
        bisection_depth=search.depth,
        n_kinks=sum(1 for p in top if p.kink),
        n_retried=prober.n_retried,
    )


class _Bisection:
    """Bisects failing probes to single entries, up to ``max_localized`` of them.

    It stops early in three cases, each with its evidence:

    - every range fails at the first levels and each disagrees by no more than entries all
      within ``rtol`` can explain (:attr:`Probe.bound`): a relative error below ``rtol``
      everywhere, which the pass rule accepts (``within_rtol``; not a failure);
    - every range fails at the first levels, some beyond ``rtol``, and most entries checked one
      by one (the sample, or :data:`WIDESPREAD_CHECKS` spot checks) fail: ``widespread``;
    - more ranges fail than entries may be localized, some beyond ``rtol``: ``capped`` (more
      wrong entries than ``max_localized``; those localized so far are kept).
    """

    def __init__(
        self,
        ctx: ParamCheck,
        prober: Prober,
        n: int,
        max_localized: int,
        checked: EntryResults | None,
        rng: np.random.Generator,
    ) -> None:
        self.ctx, self.prober, self.n = ctx, prober, n
        self.max_localized = max_localized
        self.checked, self.rng = checked, rng
        self.leaves: list[int] = []
        self.depth = 0
        self.widespread = self.capped = self.within_rtol = False
        self.spot: EntryResults | None = None
        self._asked_most = False

    def run(self, frontier: list[Probe]) -> None:
        prober, all_failing = self.prober, True
        while frontier:
            parents = []
            for p in frontier:
                if p.hi - p.lo == 1:
                    self.leaves.append(p.lo)
                else:
                    parents.append(p)
            if not parents:
                return
            self.depth += 1
            # Probe the left half; the right half's loss difference is the parent's minus the
            # left's (the discrepancy is additive), so each level costs 2 evaluations per node.
            lefts = prober.run(
                [(p.lo, (p.lo + p.hi) // 2, p.direction) for p in parents], self.depth
            )
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
            everywhere = self.depth >= WIDESPREAD_DEPTH and all_failing
            too_many = len(frontier) + len(self.leaves) > self.max_localized
            if (everywhere or too_many) and self._stop(frontier, everywhere, too_many):
                return

    def _stop(self, frontier: list[Probe], everywhere: bool, too_many: bool) -> bool:
        if not any(p.beyond_rtol for p in frontier):
            if everywhere:
                self.within_rtol = True
                return True
            return False  # many small suspicions: keep localizing until the cap says stop
        if everywhere and not self._asked_most:
            self._asked_most = True
            if self._most_wrong():
                self.widespread = True
                return True
        if too_many:
            self.capped = True
            return True
        return False

    def _most_wrong(self) -> bool:
        """Whether most entries checked one by one fail (kinks aside): the sample when it
        has at least WIDESPREAD_CHECKS entries, else that many spot checks."""
        e = self.checked
        if e is None or e.size < WIDESPREAD_CHECKS:
            taken = set() if e is None else set(e.flat_index.tolist())
            free = np.setdiff1d(np.arange(self.n), np.fromiter(taken, dtype=np.int64))
            k = min(WIDESPREAD_CHECKS, free.size)
            idx = np.sort(self.rng.choice(free, size=k, replace=False)) if k else free
            self.spot = evaluate_entries(self.ctx, idx.astype(np.int64))
            e = self.spot if e is None else merge_entry_results(e, self.spot)
        judged = e.size - int(np.count_nonzero(e.kink))
        return judged > 0 and 2 * int(np.count_nonzero(e.failed)) > judged

    def leaf_results(self) -> EntryResults | None:
        """Per-entry results of the single entries reached (and of any spot checks)."""
        out = self.spot
        if self.leaves:
            idx = np.unique(np.asarray(self.leaves, dtype=np.int64))
            leaves = evaluate_entries(self.ctx, idx)
            out = leaves if out is None else merge_entry_results(out, leaves)
        return out
