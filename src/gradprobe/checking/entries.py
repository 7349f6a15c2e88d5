"""Finite-difference schemes: which perturbed points to evaluate and how to combine them.

Given the entries to check, this module asks the evaluator for the losses at the perturbed
points, turns them into numeric derivatives and compares them with the analytic values under a
:class:`~gradprobe.tolerances.Tolerance`. It knows nothing of reports or of how the losses are
computed (serial, parallel, batched, jitted).

Methods (:data:`gradprobe.steps.METHODS`):

- ``"central"``: ``(L(x+h) - L(x-h)) / ((x+h) - (x-h))``, 2 evaluations, error ~h**2;
- ``"richardson"``: central differences at ``h`` and ``h/2`` combined to cancel the h**2 term,
  4 evaluations, error ~h**4;
- ``"complex-step"``: ``Im L(x + ih) / h``, 1 evaluation, no subtractive cancellation; the loss
  must accept complex parameters.

An entry that disagrees is not failed at once (central and Richardson). It is re-evaluated at a
step :data:`~gradprobe.steps.RETRY_FACTOR` times smaller, and passes when that estimate (or the
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

import numpy as np

from ..evaluate import Evaluator
from ..numerics import kernels
from ..numerics.steps import METHODS, RETRY_FACTOR, central_steps, complex_steps
from ..numerics.tolerances import NOISE_FACTOR, Tolerance

__all__ = ["EntryResults", "evaluate_entries", "numeric_entries"]

#: A one-sided gap that shrinks by less than this when the step shrinks by RETRY_FACTOR is not
#: a smooth function's (which shrinks by RETRY_FACTOR).
SMOOTH_SHRINK = 0.75 * RETRY_FACTOR


@dataclass(frozen=True)
class EntryResults:
    """Per-entry outcome of a finite-difference check, aligned with ``flat_index``.

    ``step`` is the step behind ``numeric`` (half the central step actually taken; the smaller
    step for retried entries); ``retried`` marks entries re-evaluated at a smaller step.
    """

    flat_index: np.ndarray
    analytic: np.ndarray
    numeric: np.ndarray
    abs_error: np.ndarray
    rel_error: np.ndarray
    allowed: np.ndarray
    passed: np.ndarray
    kink: np.ndarray
    step: np.ndarray
    retried: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.flat_index.size)

    @property
    def failed(self) -> np.ndarray:
        """Entries that fail and are not explained by a kink."""
        return ~self.passed & ~self.kink

    def worst_order(self) -> np.ndarray:
        """Positions, worst first: failures by how far past tolerance, then kinks, then the
        rest by relative error."""
        with np.errstate(invalid="ignore", divide="ignore"):
            excess = np.nan_to_num(self.abs_error / self.allowed, nan=np.inf)
        failing = np.flatnonzero(self.failed)
        failing = failing[np.argsort(-excess[failing], kind="stable")]
        kinks = np.flatnonzero(self.kink)
        rest = np.flatnonzero(self.passed & ~self.kink)
        rest = rest[np.argsort(-self.rel_error[rest], kind="stable")]
        return np.concatenate([failing, kinks, rest])


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


@dataclass(frozen=True)
class _Verdict:
    abs_error: np.ndarray
    rel_error: np.ndarray
    allowed: np.ndarray
    passed: np.ndarray

    def where(self, mask: np.ndarray, other: _Verdict) -> _Verdict:
        """``other``'s verdict where ``mask`` is set, this one elsewhere."""
        return _Verdict(
            np.where(mask, other.abs_error, self.abs_error),
            np.where(mask, other.rel_error, self.rel_error),
            np.where(mask, other.allowed, self.allowed),
            np.where(mask, other.passed, self.passed),
        )


def _compare(a: np.ndarray, numeric: np.ndarray, noise: np.ndarray, tol: Tolerance) -> _Verdict:
    """The pass rule (:func:`gradprobe.kernels.compare`) for any estimate."""
    return _Verdict(
        *kernels.compare(
            np.ascontiguousarray(a, dtype=np.float64),
            np.ascontiguousarray(numeric, dtype=np.float64),
            np.ascontiguousarray(noise, dtype=np.float64),
            tol.rtol,
            tol.atol,
        )
    )


def _noise(
    tol: Tolerance, f_plus: np.ndarray, f_minus: np.ndarray, taken: np.ndarray
) -> np.ndarray:
    return tol.noise_floor(f_plus, f_minus, taken)


def _estimate(
    evaluator: Evaluator,
    param: int,
    flat_index: np.ndarray,
    relative_step: float | np.ndarray,
    tol: Tolerance,
    method: str,
) -> _Estimate:
    values = evaluator.base[param].reshape(-1)[flat_index]
    if method == "complex-step":
        h = complex_steps(values, float(np.max(relative_step)))
        losses = evaluator.complex_entry_losses(param, flat_index, h)
        numeric = losses.imag / h
        noise = NOISE_FACTOR * tol.loss_eps * np.abs(numeric)
        return _Estimate(numeric=numeric, noise=noise, step=h)
    big = central_steps(values, relative_step)
    if method == "central":
        f = evaluator.entry_losses(param, flat_index, np.stack([big.plus, big.minus], axis=1))
        f = np.ascontiguousarray(f.T)  # rows: L(x+h), L(x-h)
        numeric = kernels.central_differences(f[0], f[1], big.taken)
        noise = _noise(tol, f[0], f[1], big.taken)
        f = f.T
    elif method == "richardson":
        small = central_steps(values, 0.5 * np.asarray(relative_step))
        cols = np.stack([big.plus, big.minus, small.plus, small.minus], axis=1)
        f = evaluator.entry_losses(param, flat_index, cols)
        g = np.ascontiguousarray(f.T)
        d1 = kernels.central_differences(g[0], g[1], big.taken)
        d2 = kernels.central_differences(g[2], g[3], small.taken)
        # The h**2 term cancels for the ratio of the steps actually taken (about 2).
        r2 = (big.taken / small.taken) ** 2
        numeric = (r2 * d2 - d1) / (r2 - 1.0)
        noise = (
            r2 * _noise(tol, f[:, 2], f[:, 3], small.taken)
            + _noise(tol, f[:, 0], f[:, 1], big.taken)
        ) / (r2 - 1.0)
    else:
        raise ValueError(f"unknown finite-difference method {method!r}")
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
    evaluator: Evaluator,
    param: int,
    flat_index: np.ndarray,
    relative_step: float,
    tolerance: Tolerance,
    method: str = "central",
) -> tuple[np.ndarray, np.ndarray]:
    """Numeric derivatives of entries ``flat_index`` and their round-off floors (no verdict).

    Used by the diagnosis to look at positions the check did not evaluate.
    """
    est = _estimate(
        evaluator, param, np.asarray(flat_index, dtype=np.int64), relative_step, tolerance, method
    )
    return est.numeric, est.noise


def _one_sided_gap(est: _Estimate, f0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward and backward differences and their gap ``|forward - backward|``."""
    assert est.plus is not None and est.minus is not None
    assert est.up is not None and est.down is not None
    return kernels.one_sided_differences(
        np.ascontiguousarray(est.plus),
        float(f0),
        np.ascontiguousarray(est.minus),
        np.ascontiguousarray(est.up),
        np.ascontiguousarray(est.down),
    )


def evaluate_entries(
    evaluator: Evaluator,
    param: int,
    flat_index: np.ndarray,
    analytic_flat: np.ndarray,
    relative_step: float,
    tolerance: Tolerance,
    method: str = "central",
    *,
    base_value: float | None = None,
    retry: bool = True,
) -> EntryResults:
    """Check entries ``flat_index`` of parameter ``param`` against ``analytic_flat``.

    Parameters
    ----------
    evaluator : Evaluator
        Computes the perturbed losses.
    param : int
        Position of the parameter in the layout.
    flat_index : ndarray of int
        Entries to check (flat indices).
    analytic_flat : ndarray
        The whole analytic gradient of the parameter, flattened.
    relative_step : float
        ``h = relative_step * max(1, |x|)``.
    tolerance : Tolerance
        The pass rule.
    method : str
        One of :data:`gradprobe.steps.METHODS`.
    base_value : float, optional
        The loss at the base point, for the one-sided differences of disagreeing entries
        (evaluated once when needed and not given).
    retry : bool
        Re-evaluate disagreeing entries at a smaller step and classify kinks (central and
        Richardson; the complex step neither needs nor supports it).
    """
    if method not in METHODS:
        raise ValueError(f"unknown finite-difference method {method!r}")
    flat_index = np.asarray(flat_index, dtype=np.int64)
    a = np.ascontiguousarray(analytic_flat[flat_index], dtype=np.float64)
    m = flat_index.size
    est = _estimate(evaluator, param, flat_index, relative_step, tolerance, method)
    numeric = est.numeric
    v = _compare(a, numeric, est.noise, tolerance)
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
    )
    if not retry or method == "complex-step" or bool(np.all(passed)):
        return results
    if base_value is None:
        base_value = evaluator.base_loss()
    return _retry(evaluator, param, results, est, relative_step, tolerance, method, base_value)


def _retry(
    evaluator: Evaluator,
    param: int,
    results: EntryResults,
    est: _Estimate,
    relative_step: float,
    tol: Tolerance,
    method: str,
    f0: float,
) -> EntryResults:
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
    small = _estimate(
        evaluator, param, results.flat_index[pos], relative_step / RETRY_FACTOR, tol, method
    )
    v_small = _compare(a, small.numeric, small.noise, tol)
    numeric, step = small.numeric.copy(), small.step.copy()
    v = v_small
    if method == "central":
        # Richardson extrapolation of the two central differences (ratio of steps taken).
        r2 = (first.step / small.step) ** 2
        extrap = (r2 * small.numeric - first.numeric) / (r2 - 1.0)
        extrap_noise = (r2 * small.noise + first.noise) / (r2 - 1.0)
        v_ex = _compare(a, extrap, extrap_noise, tol)
        use_ex = v_ex.passed & ~v_small.passed
        numeric = np.where(use_ex, extrap, numeric)
        v = v_small.where(use_ex, v_ex)
    # A smaller step has a higher round-off floor: its pass counts only when within rtol
    # itself, or when the disagreement shrank to under a third of the first (truncation or
    # a kink the smaller step no longer crosses). A wrong gradient disagrees by the same
    # amount at every step, so it cannot hide under the second step's noise floor.
    shrunk = v.abs_error < results.abs_error[pos] / 3.0
    strict = v.abs_error <= tol.rtol * np.maximum(1e-8, np.abs(a) + np.abs(numeric)) + tol.atol
    v = _Verdict(v.abs_error, v.rel_error, v.allowed, v.passed & (shrunk | strict))
    fwd, bwd, gap = _one_sided_gap(small, f0)
    fwd_big, bwd_big, gap_big = _one_sided_gap(first, f0)
    allowed = results.allowed[pos]
    # One-sided differences are only first-order accurate: widen each side of [lo, hi] by the
    # first comparison's allowance plus how much that side moved between the two steps.
    fwd_m = allowed + np.abs(fwd_big - fwd)
    bwd_m = allowed + np.abs(bwd_big - bwd)
    fwd_low = fwd <= bwd
    lo = np.where(fwd_low, fwd - fwd_m, bwd - bwd_m)
    hi = np.where(fwd_low, bwd + bwd_m, fwd + fwd_m)
    # The one-sided gap of a smooth function shrinks in proportion to the step (~ |L''| h);
    # across a kink it stays (the jump of the derivative), or shrinks less when the smaller
    # step no longer reaches every kink the larger one crossed. A gap above the comparison's
    # tolerance that shrank clearly less than the step means the step crossed a kink; with the
    # analytic value between the two sides (a valid subgradient) the entry is a kink, not a
    # failure.
    # The gap must exceed the first step's allowance (whose round-off floor is the lower one),
    # or grow clearly when the step shrinks (kinks of opposite sides can cancel at the first
    # step; a smooth function's gap never grows).
    crossed = ~v.passed & (
        ((gap_big > allowed) & (gap * SMOOTH_SHRINK >= gap_big))
        | (gap > 2.0 * np.maximum(gap_big, allowed))
    )
    # Where the smaller step's round-off floor (one-sided differences carry about twice the
    # central one) exceeds the first step's gap, its one-sided differences say nothing (float32
    # at an 8x smaller step): judge from the first step alone, with only its allowance as margin.
    # Such an entry is a kink when the analytic value lies between them; otherwise the retry's
    # verdict stands.
    blind = ~v.passed & ~crossed & (gap_big > allowed) & (2.0 * small.noise >= gap_big)
    blind &= a >= np.minimum(fwd_big, bwd_big) - allowed
    blind &= a <= np.maximum(fwd_big, bwd_big) + allowed
    kink = (crossed & (a >= lo) & (a <= hi)) | blind
    # Across a kink with the analytic value outside [lo, hi] the entry fails; the nearest
    # one-sided difference is the numeric value it should have matched.
    outside = crossed & ~kink
    if np.any(outside):
        nearest = np.clip(a, np.minimum(fwd, bwd), np.maximum(fwd, bwd))
        # Judged with the first step's allowance, which "outside" already exceeds.
        v_out = _compare(a, nearest, first.noise, tol)
        numeric = np.where(outside, nearest, numeric)
        v = v.where(outside, v_out)
    fixed = v.passed | crossed | blind  # entries whose verdict the retry replaces
    out = {
        "numeric": results.numeric.copy(),
        "abs_error": results.abs_error.copy(),
        "rel_error": results.rel_error.copy(),
        "allowed": results.allowed.copy(),
        "passed": results.passed.copy(),
        "kink": results.kink.copy(),
        "step": results.step.copy(),
        "retried": np.zeros(results.size, dtype=bool),
    }
    p = pos[fixed]
    out["numeric"][p] = numeric[fixed]
    out["abs_error"][p] = v.abs_error[fixed]
    out["rel_error"][p] = v.rel_error[fixed]
    out["allowed"][p] = v.allowed[fixed]
    out["passed"][p] = v.passed[fixed]
    out["step"][p] = step[fixed]
    out["kink"][pos[kink]] = True
    out["retried"][pos] = True
    return EntryResults(flat_index=results.flat_index, analytic=results.analytic, **out)
