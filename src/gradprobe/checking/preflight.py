"""Pre-flight checks: cheap tests at the base point before any expensive work.

A check of thousands of perturbed losses is worthless when the loss is not a function of the
parameters alone (dropout left on, unseeded sampling, data shuffled between calls), when grad
keeps state between calls, or when the loss or gradient writes into the arrays it is given.
:func:`run_preflight` spends one extra loss evaluation and one extra gradient call to rule them
out (three more loss calls when the loss does not repeat: the call order tells a random loss
from grad's state), and lists the entries where the analytic gradient is not finite. A relative
difference up to ``nondet_tol`` is run-to-run jitter (summation order, atomics): accepted,
folded into the noise floor (the tolerance's ``loss_noise``) and reported as a warning.

:func:`~gradprobe.checking.noise.estimate_loss_noise` measures the loss's rounding noise (ECnoise, see
:mod:`gradprobe.numerics.tolerances`) with ``2 * NOISE_HALF_POINTS`` more evaluations, for losses whose
value cancels (its round-off is then far above ``EPS * |L|``).

Non-finite analytic entries are reported, not raised: the loss is finite at the base point, so
a NaN or inf in the gradient is a bug of the backward pass. The check fails those parameters
(diagnosis ``"nonfinite"``, the entries in ``bad_indices``) whether or not the sample reached
them, and the other parameters are still checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import (
    GradCheckError,
    InvalidInputError,
    LossEvaluationError,
    NondeterministicLossError,
    StatefulGradientError,
)
from ..evaluate import Evaluator
from ..evaluate.threads import one_blas_thread
from ..layout import ParamLayout, normalize_gradient
from ..numerics.tolerances import (
    NOISE_FACTOR,
    NOISE_SAFETY,
    NoiseEstimate,
)
from ..validators import DEFAULT_NONDET_TOL
from .mutation import arrays_equal, mutated, mutation_error
from .noise import PIECEWISE_CONSTANT, estimate_loss_noise, piecewise_note

_NOT_MEASURED = NoiseEstimate(0.0, 0, "not measured")
#: Parameters of this many bytes or more are given to grad's second call as they are, not
#: copied (:func:`_repeat`): at that size the copy is what the check's peak memory is made of.
IN_PLACE_BYTES = 1 << 22

_NONDETERMINISM_FIX = (
    "Usual causes: dropout or other random layers left in training mode, sampling without a "
    "fixed seed (noise, negative sampling, data augmentation), data shuffled or batches drawn "
    "inside the loss, or state updated by each call (batch-norm running statistics, caches). "
    "Fix: put the model in evaluation mode or fix the random draws (a seeded generator "
    "created inside the loss, or a fixed mask), and close over one fixed batch."
)


@dataclass(frozen=True)
class PreflightResult:
    """What the pre-flight checks found (when they did not raise).

    Attributes
    ----------
    base_loss : float
        The loss at the base point.
    nonfinite : mapping of str to ndarray
        For each parameter whose analytic gradient has NaN or inf entries, their flat indices.
    warnings : tuple of str
        One line per finding that does not stop the check.
    noise : NoiseEstimate
        The loss's measured rounding noise (sigma 0 when not measured), raised to the
        difference between its two values at the base point when that is larger (status
        ``"jitter"``): the tolerance's noise floor then covers the accepted jitter.
    """

    base_loss: float
    nonfinite: Mapping[str, np.ndarray] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    noise: NoiseEstimate = field(default_factory=lambda: _NOT_MEASURED)


def analytic_gradient(
    grad: Any, layout: ParamLayout, base: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """The analytic gradient at the base point: ``grad`` called on copies, or the given value."""
    if callable(grad):
        try:
            value = grad(layout.pack([a.copy() for a in base]))
        except GradCheckError:
            raise
        except Exception as exc:
            raise LossEvaluationError(
                f"grad raised {type(exc).__name__} at the base point: {exc}"
            ) from exc
    else:
        value = grad
    return normalize_gradient(layout, value)


def base_loss(evaluator: Evaluator) -> float:
    """The loss at the base point, which must be finite."""
    try:
        value = evaluator.base_loss()
    except GradCheckError:
        raise
    except Exception as exc:
        raise LossEvaluationError(
            f"loss raised {type(exc).__name__} at the base point: {exc}"
        ) from exc
    if not np.isfinite(value):
        raise InvalidInputError(
            f"loss at the base point: expected a finite value, found {value}. Check the model "
            "at its current parameters (log of zero, overflow in exp, NaN in the data)."
        )
    return value


def jitter_bar(nondet_tol: float | None, loss_eps: float) -> float:
    """The relative difference between two evaluations at the same parameters accepted as
    run-to-run jitter: ``nondet_tol`` (None: :data:`~gradprobe.options.DEFAULT_NONDET_TOL`),
    never below ``NOISE_FACTOR`` ulps of the loss's dtype (its rounding allowance)."""
    return max(DEFAULT_NONDET_TOL if nondet_tol is None else nondet_tol, NOISE_FACTOR * loss_eps)


def _relative(x: float, y: float) -> float:
    if not (np.isfinite(x) and np.isfinite(y)):
        return 0.0 if x == y else math.inf
    return abs(x - y) / max(abs(x), abs(y)) if x != y else 0.0


def _repeat(
    evaluator: Evaluator,
    nth: str,
    grad: Callable[[Any], Any] | None = None,
    sources: Sequence[np.ndarray | None] | None = None,
) -> Any:
    """The loss (``grad`` None; under one BLAS thread, as the base loss) or ``grad`` at the base
    point once more; refused if it writes into the arrays it is given.

    The loss gets fresh copies. grad gets the base copies themselves where the parameters
    take :data:`IN_PLACE_BYTES` or more and every one's caller array is at hand
    (``sources``), and they are compared with those after the call: the analytic gradient is
    held meanwhile, so one more copy would be the fourth copy of the parameters at the check's
    peak; not while tasks in threads may read them (:attr:`Evaluator.base_in_use`: blocks
    sent ahead to process workers travel through files this thread writes, before or after).
    Below that size the copies are cheap, and nothing grad keeps of its arrays can reach the
    base copies.
    """
    layout, who = evaluator.layout, "loss" if grad is None else "grad"
    in_place = (
        grad is not None
        and sources is not None
        and len(sources) == len(evaluator.base)
        and all(s is not None for s in sources)
        and sum(b.nbytes for b in evaluator.base) >= IN_PLACE_BYTES
        and not evaluator.base_in_use
    )
    given = list(evaluator.base) if in_place else [a.copy() for a in evaluator.base]
    try:
        if grad is not None:  # compared with the first and dropped: not copied again
            value = normalize_gradient(layout, grad(layout.pack(given)), copy=False)
        else:
            evaluator.charge(1)
            with one_blas_thread():
                value = evaluator.call_loss(given, f"at the base point ({nth} pre-flight call)")
    except GradCheckError:
        raise
    except Exception as exc:
        raise LossEvaluationError(
            f"{who} raised {type(exc).__name__} at the base point on its {nth} call (the first "
            f"succeeded): {exc}"
        ) from exc
    reference: Sequence[np.ndarray] = evaluator.base
    if in_place and sources is not None:
        reference = [s for s in sources if s is not None]
    changed = mutated(layout, given, reference)
    if changed:
        raise mutation_error(who, changed)
    return value


def _suggested_tol(rel: float) -> str:  # a round nondet_tol above a relative difference
    return f"{10.0 ** math.ceil(math.log10(2.0 * rel)):g}"


def _loss_change_error(
    evaluator: Evaluator, grad: Any, first: float, second: float, bar: float, loss_eps: float
) -> NondeterministicLossError:
    """Why the loss's first two values differ, told apart by the order of further calls.

    A third loss call follows the second directly. When it repeats the second value, grad runs
    once more and a fourth loss call follows: no change means only the first call differed; a
    change that a fifth call repeats is grad's doing (:class:`StatefulGradientError`). Else the
    loss is random.
    """
    rel, seen = _relative(first, second), f"{first!r} then {second!r}"
    if callable(grad) and np.isfinite(second):
        third = _repeat(evaluator, "third")
        if _relative(second, third) <= bar:
            _repeat(evaluator, "third", grad)
            fourth = _repeat(evaluator, "fourth")
            if _relative(third, fourth) <= bar:
                return NondeterministicLossError(
                    f"loss: expected the same value for the same parameters, found {first!r} on "
                    f"the first call at the base point and {second!r} on every later one, with or "
                    "without a grad call in between: state set up by the first call changes what "
                    "the loss computes (a cache or buffer filled on first use, lazy "
                    "initialization). Fix: make the loss independent of that state, or set it up "
                    "before gradprobe.check (call the loss once)."
                )
            if _relative(fourth, _repeat(evaluator, "fifth")) <= bar:
                return StatefulGradientError(
                    f"grad: calling it changed the loss: at the base point the loss returned "
                    f"{second!r} twice in a row, then {fourth!r} right after another grad call. "
                    "grad keeps state that the loss reads: it scales or updates in place a "
                    "buffer the loss also uses (an upstream gradient, running statistics, a "
                    "cache). Fix: leave the loss's inputs alone in grad (upstream = upstream * "
                    "s, not upstream *= s) and return a fresh array each call."
                )
        seen += f" then {third!r}"
    jitter = ""
    if np.isfinite(rel):
        jitter = (
            " If the difference is run-to-run jitter of a reduction (summation order, atomics) "
            f"rather than randomness, pass nondet_tol={_suggested_tol(rel)}: differences below "
            "it are then treated as noise, which hides gradient errors of that size."
            + (" In float64 (promote=True) jitter is far smaller." if loss_eps > 1e-15 else "")
        )
    return NondeterministicLossError(
        f"loss: expected the same value for the same parameters, found {seen} at the base "
        f"point (difference {abs(first - second):.3g}, {rel:.3g} relative, above the {bar:.3g} "
        "accepted as jitter: nondet_tol); finite differences of a random loss measure the "
        f"noise, not the gradient. {_NONDETERMINISM_FIX}{jitter}"
    )


@dataclass(frozen=True)
class _GradChange:
    """Where one parameter's gradient differs most between two calls, and by what factor."""

    name: str
    index: list[int]
    first: float
    second: float
    relative: float  # the largest difference over the parameter's largest magnitude
    factor: float | None  # second / first when the same for every entry


def _grad_change(name: str, g1: np.ndarray, g2: np.ndarray, loss_eps: float) -> _GradChange | None:
    if arrays_equal(g1, g2):  # the usual case, without the temporaries
        return None
    shape, g1, g2 = g1.shape, g1.reshape(-1), g2.reshape(-1)
    with np.errstate(invalid="ignore"):
        same = (g1 == g2) | (np.isnan(g1) & np.isnan(g2))
        diff = np.nan_to_num(np.where(same, 0.0, np.abs(g1 - g2)), nan=np.inf)
        if np.all(same | (diff <= NOISE_FACTOR * loss_eps * (np.abs(g1) + np.abs(g2)))):
            return None  # rounding, within the loss's own allowance
    finite = [np.abs(g[np.isfinite(g)]) for g in (g1, g2)]
    scale = max((float(f.max()) for f in finite if f.size), default=0.0)
    j = int(np.argmax(diff))
    return _GradChange(
        name=name,
        index=[int(i) for i in np.unravel_index(j, shape)],
        first=float(g1[j]),
        second=float(g2[j]),
        relative=diff[j] / scale if scale > 0 and np.isfinite(diff[j]) else math.inf,
        factor=_constant_factor(g1, g2),
    )


def _constant_factor(g1: np.ndarray, g2: np.ndarray) -> float | None:
    """``g2 / g1`` when it is the same for every entry (zeros staying zeros), else None."""
    nonzero = g1 != 0
    if not (np.all(np.isfinite(g1)) and np.all(np.isfinite(g2)) and np.any(nonzero)):
        return None
    ratios = g2[nonzero] / g1[nonzero]
    k = float(np.median(ratios))
    if k == 0 or np.any(g2[~nonzero] != 0) or np.max(np.abs(ratios - k)) > 1e-9 * abs(k):
        return None
    return k if ratios.size > 1 or _clean(k) else None  # one entry: any two have a ratio


def _clean(k: float) -> str | None:
    """``"2x"`` for an integer factor, ``"0.5x (1/2)"`` for a reciprocal one, else None."""
    if abs(k - round(k)) <= 1e-9 * abs(k):
        return f"{round(k)}x"
    m = round(1.0 / k)
    return f"{k:.6g}x (1/{m})" if m and abs(1.0 / k - m) <= 1e-9 * abs(1.0 / k) else None


def _stateful_grad_error(changes: list[_GradChange]) -> StatefulGradientError:
    c = changes[0]
    text = (
        "grad: returned different values on two calls at the same parameters while the loss "
        f"was repeatable: {c.name}{c.index} = {c.first!r} on the first call, {c.second!r} on "
        f"the second call ({c.relative:.3g} relative to the largest entry of {c.name!r}). "
    )
    k = c.factor
    if any(ch.factor is None or abs(ch.factor - (k or 0)) > 1e-9 * abs(k or 0) for ch in changes):
        k = None  # not one factor for every changed parameter
    if k is None:
        text += (
            "The calls differ by no constant factor: grad keeps state between calls (a buffer "
            "accumulated into, an array it was given scaled or updated in place, a cache) or "
            "is random in the backward pass only"
        )
    else:
        names = [ch.name for ch in changes]
        ratio = f"the second call returned {_clean(k) or f'{k:.6g}x'} the first" + (
            f" for {names}" if len(names) > 1 else f" in every entry of {c.name!r}"
        )
        if k >= 2 and round(k) == k:
            text += (
                f"grad keeps state between calls (it accumulates into a buffer: {ratio}), or "
                "it scales a buffer it was given in place"
            )
        else:
            text += (
                f"grad scales a buffer it was given in place ({ratio}: e.g. upstream *= s on "
                "the caller's upstream gradient), or it keeps state between calls"
            )
    return StatefulGradientError(
        text + "; return a fresh array each call. Fix: zero a buffer at the start of each call "
        "or return a new array (g = np.zeros_like(w); g += ...; or buf.copy()), never scale an "
        "array the caller passed in (upstream = upstream * s, not upstream *= s), and draw "
        "random masks once, outside grad."
    )


def _jitter_warnings(rel: float, noise: float, grad: _GradChange | None, bar: float) -> list[str]:
    """Jitter accepted under the default ``nondet_tol``: its size, its effect, how to silence it."""
    silence = "To silence this, make the reduction deterministic (a fixed summation order, "
    silence += "deterministic kernels), or pass nondet_tol (e.g. nondet_tol="
    out = []
    if rel > 0:
        out.append(
            f"the loss differs between two calls at the same parameters by {rel:.2g} "
            f"relative: accepted as run-to-run jitter (summation order, atomics; up to "
            f"{bar:.2g} by default), and loss differences below "
            f"~{NOISE_SAFETY * noise:.3g} are treated as noise, not as gradient errors. "
            f"{silence}{_suggested_tol(rel)})."
        )
    if grad is not None:
        out.append(
            f"grad differs between two calls at the same parameters by up to {grad.relative:.2g}"
            f" of its largest entry (in {grad.name!r}): accepted as run-to-run jitter of the "
            f"backward pass (up to {bar:.2g} by default, far below rtol). "
            f"{silence}{_suggested_tol(grad.relative)})."
        )
    return out


def run_preflight(
    evaluator: Evaluator,
    base_loss: float,
    grad: Callable[[Any], Any] | Any,
    analytic: Sequence[np.ndarray],
    loss_eps: float,
    *,
    noise_rng: np.random.Generator | None = None,
    nondet_tol: float | None = None,
    sources: Sequence[np.ndarray | None] | None = None,
) -> PreflightResult:
    """Run the pre-flight checks after the base loss and analytic gradient are known.

    Parameters
    ----------
    evaluator : Evaluator
        Holds the loss and the private base copies; charged one loss evaluation (three more
        when the loss does not repeat, to tell why).
    base_loss : float
        The loss's first value at the base point.
    grad : callable or container
        The user's gradient function (called once more: on the base copies themselves where
        ``sources`` holds every parameter's array, else on fresh copies) or precomputed
        gradient (not called).
    analytic : list of ndarray
        The normalized analytic gradient from the first call.
    loss_eps : float
        Machine epsilon of the loss's arithmetic.
    noise_rng : numpy.random.Generator, optional
        When given, the loss's rounding noise is measured (:func:`estimate_loss_noise`,
        ``2 * NOISE_HALF_POINTS`` evaluations) along a direction drawn from it.
    nondet_tol : float, optional
        Relative difference between the two loss values (and between the two gradients, over
        each parameter's largest entry) accepted as run-to-run jitter (:func:`jitter_bar`).
        None: :data:`~gradprobe.options.DEFAULT_NONDET_TOL`, and accepted jitter is reported
        in ``warnings``. The loss's difference is folded into ``noise`` either way.
    sources : sequence of ndarray or None, optional
        The caller's arrays the base copies were made from (None for a converted leaf).

    Raises
    ------
    NondeterministicLossError
        The loss gave different values for the same parameters.
    StatefulGradientError
        grad gave different values while the loss repeated, or calling grad changed the loss.
    InvalidInputError
        The loss or grad modified the arrays it was given.
    """
    layout = evaluator.layout
    bar = jitter_bar(nondet_tol, loss_eps)
    second = _repeat(evaluator, "second")
    loss_rel = _relative(base_loss, second)
    if loss_rel > bar:
        raise _loss_change_error(evaluator, grad, base_loss, second, bar, loss_eps)
    grad_jitter = None
    if callable(grad):
        again = _repeat(evaluator, "second", grad, sources)
        changes = [
            c
            for n, g1, g2 in zip(layout.names, analytic, again, strict=True)
            if (c := _grad_change(n, g1, g2, loss_eps)) is not None
        ]
        beyond = [c for c in changes if c.relative > bar]
        if beyond:
            raise _stateful_grad_error(beyond)
        grad_jitter = max(changes, key=lambda c: c.relative, default=None)
        del again  # as large as the parameters: not held through the noise estimate
    nonfinite: dict[str, np.ndarray] = {}
    warnings: list[str] = []
    for name, g in zip(layout.names, analytic, strict=True):
        bad = np.flatnonzero(~np.isfinite(g.reshape(-1)))
        if bad.size:
            nonfinite[name] = bad
            first = [int(i) for i in np.unravel_index(int(bad[0]), g.shape)]
            warnings.append(
                f"grad returned {bad.size} non-finite entr{'y' if bad.size == 1 else 'ies'} in "
                f"{name!r} (first at {first}: {g.reshape(-1)[bad[0]]}) although the loss is "
                "finite there; they fail the check."
            )
    noise = _NOT_MEASURED
    if noise_rng is not None:
        zero = all(not np.any(g) for g in analytic)  # NaN counts as nonzero
        noise = estimate_loss_noise(evaluator, base_loss, noise_rng, zero_gradient=zero)
        if noise.status == PIECEWISE_CONSTANT:
            warnings.append(piecewise_note(noise))
    if abs(base_loss - second) > noise.sigma:  # a noise sample too: the floor covers it
        noise = replace(noise, sigma=abs(base_loss - second), status="jitter")
    if nondet_tol is None:
        warnings.extend(_jitter_warnings(loss_rel, noise.sigma, grad_jitter, bar))
    return PreflightResult(base_loss, nonfinite, tuple(warnings), noise)
