"""Finite-difference schemes: which perturbed points to evaluate and how to combine them.

Given the entries to check, this module asks the evaluator for the losses at the perturbed
points, turns them into numeric derivatives and compares them with the analytic values under a
:class:`~gradprobe.numerics.tolerances.Tolerance`. It knows nothing of reports or of how the losses are
computed (serial, parallel, batched, jitted).

Methods (:data:`gradprobe.numerics.steps.METHODS`):

- ``"central"``: ``(L(x+h) - L(x-h)) / ((x+h) - (x-h))``, 2 evaluations, error ~h**2;
- ``"richardson"``: central differences at ``h`` and ``h/2`` combined to cancel the h**2 term,
  4 evaluations, error ~h**4;
- ``"complex-step"``: ``Im L(x + ih) / h``, 1 evaluation, no subtractive cancellation; the loss
  must accept complex parameters.

An entry that disagrees is not failed at once (central and Richardson). It is re-evaluated at a
step :data:`~gradprobe.numerics.steps.RETRY_FACTOR` times smaller, and passes when that estimate (or the
Richardson combination of the two steps) agrees, within ``rtol`` or with a disagreement under a
third of the first (a wrong gradient disagrees by the same amount at every step, so it cannot
hide under the smaller step's higher round-off floor): a large ``|x|`` makes the default step
large and its truncation error can exceed ``rtol`` on a correct gradient. When the retry still
disagrees, the one-sided differences ``(L(x+h) - L(x)) / h`` and ``(L(x) - L(x-h)) / h`` decide
whether the step crosses a kink (ReLU at 0, max, abs): their gap does not shrink with the step
(a smooth function's shrinks in proportion) and the analytic value lies between them (a valid
subgradient). Such entries are marked ``kink`` and do not fail the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..numerics import differences
from ..numerics.steps import METHODS, central_steps, complex_steps
from ..numerics.tolerances import NOISE_FACTOR, Verdict
from .context import ParamCheck
from .kinks import RETRY_FACTOR, OneSided, classify, marginal, retry_passes
from .results import EntryResults


@dataclass(frozen=True)
class _Estimate:
    """Numeric derivatives of some entries at one step, with what the verdict needs."""

    numeric: np.ndarray
    noise: np.ndarray  # round-off floor of ``numeric``
    step: np.ndarray  # half the central step taken (the imaginary step for complex-step)
    plus: np.ndarray | None = None  # L(x+h), L(x-h) and the steps taken each way (central
    minus: np.ndarray | None = None  # part), for the one-sided differences
    up: np.ndarray | None = None
    down: np.ndarray | None = None


def first_rows(ctx: ParamCheck, flat_index: np.ndarray) -> np.ndarray | None:
    """The perturbed values :func:`evaluate_entries` first asks the evaluator for, one row per
    entry of ``flat_index`` (None for the complex step, which runs in this process): what a
    placement with workers can send ahead (:meth:`gradprobe.evaluate.Evaluator.prefetch`)."""
    if ctx.method == "complex-step":
        return None
    return _rows(ctx, np.asarray(flat_index, dtype=np.int64), ctx.relative_step)[0]


def _rows(
    ctx: ParamCheck, flat_index: np.ndarray, relative_step: float
) -> tuple[np.ndarray, Any, Any]:
    """The perturbed values of a central or Richardson estimate, and the steps behind them."""
    values = ctx.base_flat[flat_index]
    big = central_steps(values, relative_step)
    if ctx.method == "central":
        return np.stack([big.plus, big.minus], axis=1), big, None
    small = central_steps(values, 0.5 * np.asarray(relative_step))
    return np.stack([big.plus, big.minus, small.plus, small.minus], axis=1), big, small


def _estimate(ctx: ParamCheck, flat_index: np.ndarray, relative_step: float) -> _Estimate:
    """Numeric derivatives of entries ``flat_index`` at ``relative_step`` (no verdict)."""
    evaluator, param, tol, method = ctx.evaluator, ctx.param, ctx.tolerance, ctx.method
    if method == "complex-step":
        h = complex_steps(ctx.base_flat[flat_index], float(np.max(relative_step)))
        losses = evaluator.complex_entry_losses(param, flat_index, h)
        numeric = losses.imag / h
        noise = NOISE_FACTOR * tol.loss_eps * np.abs(numeric)
        return _Estimate(numeric=numeric, noise=noise, step=h)
    if method not in ("central", "richardson"):
        raise ValueError(f"unknown finite-difference method {method!r}")
    cols, big, small = _rows(ctx, flat_index, relative_step)
    f = evaluator.entry_losses(param, flat_index, cols)
    if method == "central":
        f = np.ascontiguousarray(f.T)  # rows: L(x+h), L(x-h)
        numeric = differences.central_differences(f[0], f[1], big.taken)
        noise = tol.noise_floor(f[0], f[1], big.taken)
        f = f.T
    else:
        g = np.ascontiguousarray(f.T)
        d1 = differences.central_differences(g[0], g[1], big.taken)
        d2 = differences.central_differences(g[2], g[3], small.taken)
        # The h**2 term cancels for the ratio of the steps actually taken (about 2).
        r2 = (big.taken / small.taken) ** 2
        numeric = (r2 * d2 - d1) / (r2 - 1.0)
        noise = (
            r2 * tol.noise_floor(f[:, 2], f[:, 3], small.taken)
            + tol.noise_floor(f[:, 0], f[:, 1], big.taken)
        ) / (r2 - 1.0)
    return _Estimate(
        numeric=numeric,
        noise=noise,
        step=0.5 * big.taken,
        plus=f[:, 0],
        minus=f[:, 1],
        up=big.forward_taken,
        down=big.backward_taken,
    )


def numeric_entries(
    ctx: ParamCheck, flat_index: np.ndarray, relative_step: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Numeric derivatives of entries ``flat_index`` and their round-off floors (no verdict).

    Used by the diagnosis to look at positions the check did not evaluate, and by the step
    sweep (``relative_step`` overrides the context's).
    """
    step = ctx.relative_step if relative_step is None else relative_step
    est = _estimate(ctx, np.asarray(flat_index, dtype=np.int64), step)
    return est.numeric, est.noise


def _one_sided(est: _Estimate, f0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward and backward differences and their gap ``|forward - backward|``."""
    assert est.plus is not None and est.minus is not None
    assert est.up is not None and est.down is not None
    return differences.one_sided_differences(est.plus, f0, est.minus, est.up, est.down)


def evaluate_entries(
    ctx: ParamCheck,
    flat_index: np.ndarray,
    *,
    base_value: float | None = None,
    retry: bool = True,
) -> EntryResults:
    """Check entries ``flat_index`` of the parameter of ``ctx`` against its analytic gradient.

    Parameters
    ----------
    ctx : ParamCheck
        The parameter, its analytic gradient, the pass rule, step and method.
    flat_index : ndarray of int
        Entries to check (flat indices).
    base_value : float, optional
        The loss at the base point, for the one-sided differences of disagreeing entries
        (evaluated once when needed and not given).
    retry : bool
        Re-evaluate disagreeing entries at a smaller step and classify kinks (central and
        Richardson; the complex step neither needs nor supports it).
    """
    if ctx.method not in METHODS:
        raise ValueError(f"unknown finite-difference method {ctx.method!r}")
    flat_index = np.asarray(flat_index, dtype=np.int64)
    a = np.ascontiguousarray(ctx.analytic_flat[flat_index], dtype=np.float64)
    m = flat_index.size
    est = _estimate(ctx, flat_index, ctx.relative_step)
    numeric = est.numeric
    v = ctx.tolerance.compare(a, numeric, est.noise)
    abs_error, rel_error, allowed, passed = v.abs_error, v.rel_error, v.allowed, v.passed
    results = EntryResults(
        flat_index=flat_index,
        analytic=a,
        numeric=numeric,
        abs_error=abs_error,
        rel_error=rel_error,
        allowed=allowed,
        passed=passed,
        kink=np.zeros(m, dtype=bool),
        step=est.step,
        retried=np.zeros(m, dtype=bool),
        crossed=np.zeros(m, dtype=bool),
    )
    if not retry or ctx.method == "complex-step" or bool(np.all(passed)):
        return results
    if base_value is None:
        base_value = ctx.evaluator.base_loss()
    return _retry(ctx, results, est, base_value)


def _retry(ctx: ParamCheck, results: EntryResults, est: _Estimate, f0: float) -> EntryResults:
    """Re-evaluate the disagreeing entries at a smaller step; pass them or mark kinks."""
    pos = np.flatnonzero(~results.passed)
    # A NaN loss or analytic value is a failure whatever the step: do not spend on it.
    pos = pos[np.isfinite(results.numeric[pos]) & np.isfinite(results.analytic[pos])]
    if pos.size == 0:
        return results
    a = results.analytic[pos]
    first = _Estimate(
        numeric=est.numeric[pos],
        noise=est.noise[pos],
        step=est.step[pos],
        plus=est.plus[pos] if est.plus is not None else None,
        minus=est.minus[pos] if est.minus is not None else None,
        up=est.up[pos] if est.up is not None else None,
        down=est.down[pos] if est.down is not None else None,
    )
    tol = ctx.tolerance
    small = _estimate(ctx, results.flat_index[pos], ctx.relative_step / RETRY_FACTOR)
    v_small = tol.compare(a, small.numeric, small.noise)
    numeric, step = small.numeric.copy(), small.step.copy()
    v = v_small
    if ctx.method == "central":
        # Richardson extrapolation of the two central differences (ratio of steps taken).
        r2 = (first.step / small.step) ** 2
        extrap = (r2 * small.numeric - first.numeric) / (r2 - 1.0)
        extrap_noise = (r2 * small.noise + first.noise) / (r2 - 1.0)
        v_ex = tol.compare(a, extrap, extrap_noise)
        use_ex = v_ex.passed & ~v_small.passed
        numeric = np.where(use_ex, extrap, numeric)
        v = v_small.where(use_ex, v_ex)
    # A smaller step has a higher round-off floor: its pass counts only when within rtol
    # itself, or when the disagreement shrank to under a third of the first (truncation or
    # a kink the smaller step no longer crosses). A wrong gradient disagrees by the same
    # amount at every step, so it cannot hide under the second step's noise floor.
    v = Verdict(
        v.abs_error,
        v.rel_error,
        v.allowed,
        retry_passes(
            v.passed,
            v.abs_error,
            results.abs_error[pos],
            tol.within_rtol(a, numeric, v.abs_error),
            marginal(
                results.abs_error[pos],
                results.allowed[pos],
                ~tol.within_rtol(a, results.numeric[pos], results.allowed[pos]),
            ),
        ),
    )
    # Still failing, but the disagreement shrank with the step: truncation (inputs far from
    # zero make h = eps * |x| far larger than the function's scale) or a kink near the step,
    # not a wrong gradient, which disagrees alike at every step. Go on down the step ladder
    # while it keeps shrinking, before any kink is considered.
    # Far from zero even the retry's step may dwarf the function's scale, before any
    # shrinking shows: such entries take one more rung whatever.
    far = np.abs(ctx.base_flat[results.flat_index[pos]].astype(np.float64)) > FAR_FROM_ZERO
    ladder = ~v.passed & ((v.abs_error < SHRINKING * results.abs_error[pos]) | far)
    if ctx.method == "central" and np.any(ladder):
        numeric, step, v = _descend(
            ctx,
            results.flat_index[pos],
            a,
            ladder,
            # Far from zero the first step's allowance says nothing (that step dwarfed the
            # function's scale): the small steps' own floors are the reference there.
            np.where(far, np.inf, results.allowed[pos]),
            v,
            numeric,
            step,
        )
    fwd, bwd, _ = _one_sided(small, f0)
    fwd_big, bwd_big, _ = _one_sided(first, f0)
    found = classify(
        OneSided(fwd_big - a, bwd_big - a),
        OneSided(fwd - a, bwd - a),
        results.allowed[pos],
        2.0 * small.noise,  # one-sided differences carry about twice the central floor
        first.step / small.step,
    )
    crossed, kink = found.crossed & ~v.passed, found.kink & ~v.passed
    jump = _jumps(ctx, first, small, a) & ~v.passed
    crossed, kink = crossed | jump, kink | jump
    # Across a kink with the analytic value outside [lo, hi] the entry fails; the nearest
    # one-sided difference is the numeric value it should have matched.
    outside = crossed & ~kink
    if np.any(outside):
        nearest = np.clip(a, np.minimum(fwd, bwd), np.maximum(fwd, bwd))
        # Judged with the first step's allowance, which "outside" already exceeds.
        v_out = tol.compare(a, nearest, first.noise)
        numeric = np.where(outside, nearest, numeric)
        v = v.where(outside, v_out)
    fixed = v.passed | crossed | kink  # entries whose verdict the retry replaces
    out = {
        "numeric": results.numeric.copy(),
        "abs_error": results.abs_error.copy(),
        "rel_error": results.rel_error.copy(),
        "allowed": results.allowed.copy(),
        "passed": results.passed.copy(),
        "kink": results.kink.copy(),
        "step": results.step.copy(),
        "retried": np.zeros(results.size, dtype=bool),
        "crossed": np.zeros(results.size, dtype=bool),
    }
    p = pos[fixed]
    out["numeric"][p] = numeric[fixed]
    out["abs_error"][p] = v.abs_error[fixed]
    out["rel_error"][p] = v.rel_error[fixed]
    out["allowed"][p] = v.allowed[fixed]
    out["passed"][p] = v.passed[fixed]
    out["step"][p] = step[fixed]
    out["kink"][pos[kink]] = True
    out["jump"] = np.zeros(results.size, dtype=bool)
    out["jump"][pos[jump]] = True
    out["retried"][pos] = True
    out["crossed"][pos[crossed | kink]] = True
    return EntryResults(flat_index=results.flat_index, analytic=results.analytic, **out)


#: A loss change across the step that keeps at least this share of itself when the step
#: shrinks by RETRY_FACTOR does not shrink with the step: a jump (a smooth or kinked
#: function's change shrinks in proportion, to 1 / RETRY_FACTOR of itself).
JUMP_KEEPS = 0.5


def _jumps(ctx: ParamCheck, first: _Estimate, small: _Estimate, a: np.ndarray) -> np.ndarray:
    """Entries where the loss jumps within the step: its change across the step,
    ``L(x + h) - L(x - h)``, keeps :data:`JUMP_KEEPS` of itself at the smaller step, stands
    well above the round-off floor there, and dwarfs what any slope near ``a`` accounts for."""
    assert first.plus is not None and first.minus is not None
    assert small.plus is not None and small.minus is not None
    d_first = np.abs(first.plus - first.minus)
    d_small = np.abs(small.plus - small.minus)
    floor = ctx.tolerance.difference_floor(small.plus, small.minus)
    slope = np.abs(a) * 2.0 * small.step
    return (d_small >= JUMP_KEEPS * d_first) & (d_small > 4.0 * floor) & (slope < 0.5 * d_small)


#: A retried disagreement below this fraction of the first one shrank with the step: the
#: entry goes down the step ladder (a wrong gradient disagrees alike at every step).
SHRINKING = 0.75

#: Entries larger than this in magnitude (the relative step then exceeds RETRY_FACTOR**2
#: times a unit entry's) go down the step ladder even when the retry did not shrink.
FAR_FROM_ZERO = RETRY_FACTOR**2

#: Further steps, each RETRY_FACTOR times smaller, tried while the disagreement shrinks.
MAX_RUNGS = 4


def _descend(
    ctx: ParamCheck,
    flat_index: np.ndarray,
    a: np.ndarray,
    ladder: np.ndarray,
    first_allowed: np.ndarray,
    v: Verdict,
    numeric: np.ndarray,
    step: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, Verdict]:
    """Central differences at ever smaller steps for the entries where ``ladder`` is set,
    while their disagreement keeps decreasing (at most :data:`MAX_RUNGS` rungs). An entry
    passes when it agrees within ``rtol``, or within a round-off floor no higher than
    ``first_allowed`` (the first comparison's allowance). The arrays are aligned
    with ``flat_index``; the returned ones carry each entry's last (smallest-error) rung."""
    tol = ctx.tolerance
    numeric, step = numeric.copy(), step.copy()
    fields = {f: getattr(v, f).copy() for f in ("abs_error", "rel_error", "allowed", "passed")}
    todo = np.flatnonzero(ladder)
    previous = fields["abs_error"][todo]
    relative = ctx.relative_step / RETRY_FACTOR
    for _ in range(MAX_RUNGS):
        if todo.size == 0:
            break
        relative /= RETRY_FACTOR
        est = _estimate(ctx, flat_index[todo], relative)
        w = tol.compare(a[todo], est.numeric, est.noise)
        # A pass down here must be within rtol itself, or rest on a round-off floor no higher
        # than the first comparison's allowance: deep rungs have high floors, and a wrong
        # gradient must not hide under them.
        ok = w.passed & (
            tol.within_rtol(a[todo], est.numeric, w.abs_error) | (w.allowed <= first_allowed[todo])
        )
        # Keep the rung whose estimate disagrees least (its verdict is the entry's).
        better = ok | (w.abs_error < previous)
        idx = todo[better]
        numeric[idx], step[idx] = est.numeric[better], est.step[better]
        for f in ("abs_error", "rel_error", "allowed"):
            fields[f][idx] = getattr(w, f)[better]
        fields["passed"][idx] = ok[better]
        # Before the asymptotic range the decrease can be slow: go on while it decreases.
        go_on = ~ok & (w.abs_error < previous)
        todo, previous = todo[go_on], w.abs_error[go_on]
    return numeric, step, Verdict(**fields)
