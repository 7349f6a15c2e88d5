"""Pre-flight checks: cheap tests at the base point before any expensive work.

A check of thousands of perturbed losses is worthless when the loss is not a function of the
parameters alone (dropout left on, unseeded sampling, data shuffled between calls) or when the
loss or gradient writes into the arrays it is given. :func:`run_preflight` spends one extra
loss evaluation and one extra gradient call to rule both out, and lists the entries where the
analytic gradient is not finite.

:func:`estimate_loss_noise` measures the loss's rounding noise (ECnoise, see
:mod:`gradprobe.tolerances`) with ``2 * NOISE_HALF_POINTS`` more evaluations, for losses whose
value cancels (its round-off is then far above ``EPS * |L|``).

Non-finite analytic entries are reported, not raised: the loss is finite at the base point, so
a NaN or inf in the gradient is a bug of the backward pass. The check fails those parameters
(diagnosis ``"nonfinite"``, the entries in ``bad_indices``) whether or not the sample reached
them, and the other parameters are still checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import (
    GradCheckError,
    InvalidInputError,
    LossEvaluationError,
    NondeterministicLossError,
)
from ..evaluate import Evaluator, one_blas_thread
from ..layout import ParamLayout, normalize_gradient
from ..numerics.tolerances import (
    NOISE_FACTOR,
    NOISE_HALF_POINTS,
    NOISE_ULPS,
    NoiseEstimate,
    ecnoise,
)

__all__ = [
    "PreflightResult",
    "analytic_gradient",
    "base_loss",
    "estimate_loss_noise",
    "run_preflight",
]

_NOT_MEASURED = NoiseEstimate(0.0, 0, "not measured")

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
        The loss's measured rounding noise (sigma 0 when not measured).
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


def _mutated(
    layout: ParamLayout, given: Sequence[np.ndarray], base: Sequence[np.ndarray]
) -> list[str]:
    return [
        name
        for name, g, b in zip(layout.names, given, base, strict=True)
        if not np.array_equal(g, b)  # parameters are finite (validated): no NaN to equate
    ]


def _mutation_error(who: str, names: list[str]) -> InvalidInputError:
    return InvalidInputError(
        f"{who}: expected it to leave the parameters it is given unchanged, found {names} "
        f"modified after one call (an in-place update such as p[name] -= ..., p[name] *= ..., "
        f"np.clip(..., out=...) or a normalization in place). gradprobe calls the {who} many "
        "times on the same arrays, so every later result would be wrong. Fix: work on a copy "
        "(p[name].copy()) or use out-of-place operations."
    )


def _second_loss(evaluator: Evaluator) -> tuple[float, list[np.ndarray]]:
    given = [a.copy() for a in evaluator.base]
    evaluator.charge(1)
    try:
        value = evaluator.call_loss(given, "at the base point (second pre-flight call)")
    except GradCheckError:
        raise
    except Exception as exc:
        raise LossEvaluationError(
            f"loss raised {type(exc).__name__} at the base point on its second call (the first "
            f"succeeded): {exc}"
        ) from exc
    return value, given


def _close(x: float, y: float, eps: float) -> bool:
    return abs(x - y) <= NOISE_FACTOR * eps * max(abs(x), abs(y))


def estimate_loss_noise(
    evaluator: Evaluator, base_loss: float, rng: np.random.Generator
) -> NoiseEstimate:
    """Measure the loss's rounding noise along a random direction over every parameter.

    Evaluates ``L(x + i * delta * v)`` for ``i = -k..k``, ``i != 0`` (``k =``
    :data:`~gradprobe.tolerances.NOISE_HALF_POINTS`; the centre is ``base_loss``), ``v`` a unit
    vector over all entries drawn from ``rng``, and hands the values to
    :func:`~gradprobe.tolerances.ecnoise`. Parameter ``p``'s part of the step is
    ``NOISE_ULPS * EPS_p * sqrt(n) * max(1, rms(x_p))`` (``n`` entries in all): an entry of
    typical size moves by about ``NOISE_ULPS`` ulps, so the points differ in their last bits
    while the smooth part (and any kink crossed) changes the differences far less than the
    noise does. When the loss does not change at all there (computed or rounded more coarsely
    than its parameters: a float32 loss of float64 parameters), the step grows by
    :data:`NOISE_SCALING` until it does, at most :data:`MAX_NOISE_SCALINGS` times
    (``NoiseEstimate.step_scale`` says how far).
    """
    estimate = NoiseEstimate(0.0, 0, "flat")
    spent, scale = 0, 1.0
    # A loss computed (or rounded) more coarsely than its parameters stays flat at a few of
    # their ulps: enlarge the step until it changes, and measure the noise there.
    for _ in range(MAX_NOISE_SCALINGS + 1):
        estimate = _noise_at(evaluator, base_loss, rng, scale)
        spent += 2 * NOISE_HALF_POINTS
        if estimate.status != "flat":
            break
        scale *= NOISE_SCALING
    return replace(estimate, n_evaluations=spent, step_scale=scale)


#: When the loss is flat at a few ulps, the noise estimate's step grows by this factor...
NOISE_SCALING = 256.0
#: ... at most this many times (steps up to ~1e-5 relative in float64; 8 evaluations each).
MAX_NOISE_SCALINGS = 5


def _noise_at(
    evaluator: Evaluator, base_loss: float, rng: np.random.Generator, scale: float
) -> NoiseEstimate:
    """ECnoise on ``L(x + i * delta * v)`` with ``delta`` ``scale`` times the ulp-sized step."""
    layout = evaluator.layout
    base = [b.astype(np.float64, copy=False) for b in evaluator.base]
    n = sum(b.size for b in base)
    v = [rng.standard_normal(b.shape) for b in base]
    norm = float(np.sqrt(sum(float(np.sum(x * x)) for x in v)))
    steps = [
        scale
        * NOISE_ULPS
        * float(np.finfo(dt).eps)
        * np.sqrt(n)
        # einsum's own loop, not BLAS: the sum must not depend on the BLAS thread count.
        * max(1.0, float(np.sqrt(np.einsum("i,i->", b.reshape(-1), b.reshape(-1)) / b.size)))
        / norm
        for b, dt in zip(base, layout.dtypes, strict=True)
    ]
    k = NOISE_HALF_POINTS
    values = []
    for i in range(-k, k + 1):
        if i == 0:
            values.append(base_loss)
            continue
        arrays = [
            _shifted(b, i * h, x, dt)
            for b, h, x, dt in zip(base, steps, v, layout.dtypes, strict=True)
        ]
        evaluator.charge(1)
        try:
            with one_blas_thread():
                values.append(evaluator.call_loss(arrays, "near the base point (noise estimate)"))
        except GradCheckError:
            raise
        except Exception as exc:
            raise LossEvaluationError(
                f"loss raised {type(exc).__name__} within a few ulps of the base point (noise "
                f"estimate; the base point itself succeeded): {exc}"
            ) from exc
    return ecnoise(values)


def _shifted(base: np.ndarray, scale: float, direction: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``(base + scale * direction).astype(dtype)`` with one temporary instead of three."""
    out = np.multiply(direction, scale)
    out += base
    return out.astype(dtype, copy=False)


def run_preflight(
    evaluator: Evaluator,
    base_loss: float,
    grad: Callable[[Any], Any] | Any,
    analytic: Sequence[np.ndarray],
    loss_eps: float,
    *,
    noise_rng: np.random.Generator | None = None,
) -> PreflightResult:
    """Run the pre-flight checks after the base loss and analytic gradient are known.

    Parameters
    ----------
    evaluator : Evaluator
        Holds the loss and the private base copies; charged one loss evaluation.
    base_loss : float
        The loss's first value at the base point.
    grad : callable or container
        The user's gradient function (called once more with fresh copies) or precomputed
        gradient (not called).
    analytic : list of ndarray
        The normalized analytic gradient from the first call.
    loss_eps : float
        Machine epsilon of the loss's arithmetic (values within ``16 * eps * |L|`` are equal).
    noise_rng : numpy.random.Generator, optional
        When given, the loss's rounding noise is measured (:func:`estimate_loss_noise`,
        ``2 * NOISE_HALF_POINTS`` evaluations) along a direction drawn from it.

    Raises
    ------
    NondeterministicLossError
        The loss (or grad) gave different values for the same parameters.
    InvalidInputError
        The loss or grad modified the arrays it was given.
    """
    layout = evaluator.layout
    second, given = _second_loss(evaluator)
    mutated = _mutated(layout, given, evaluator.base)
    if mutated:
        raise _mutation_error("loss", mutated)
    if not (np.isfinite(second) and _close(base_loss, second, loss_eps)):
        raise NondeterministicLossError(
            f"loss: expected the same value for the same parameters, found {base_loss!r} then "
            f"{second!r} at the base point (difference {abs(base_loss - second):.3g}); finite "
            "differences of a random loss measure the noise, not the gradient. "
            + _NONDETERMINISM_FIX
        )
    if callable(grad):
        given = [a.copy() for a in evaluator.base]
        try:
            again = normalize_gradient(layout, grad(layout.pack(given)))
        except GradCheckError:
            raise
        except Exception as exc:
            raise LossEvaluationError(
                f"grad raised {type(exc).__name__} at the base point on its second call (the "
                f"first succeeded): {exc}"
            ) from exc
        mutated = _mutated(layout, given, evaluator.base)
        if mutated:
            raise _mutation_error("grad", mutated)
        for name, g1, g2 in zip(layout.names, analytic, again, strict=True):
            if np.array_equal(g1, g2):  # the usual case, without the tolerance's temporaries
                continue
            tol = NOISE_FACTOR * loss_eps * (np.abs(g1) + np.abs(g2))
            with np.errstate(invalid="ignore"):
                differs = ~((np.abs(g1 - g2) <= tol) | (np.isnan(g1) & np.isnan(g2)) | (g1 == g2))
            if np.any(differs):
                j = int(np.flatnonzero(differs.reshape(-1))[0])
                index = [int(i) for i in np.unravel_index(j, g1.shape)]
                raise NondeterministicLossError(
                    f"grad: expected the same gradient for the same parameters, found "
                    f"{name}{index} = {g1.reshape(-1)[j]!r} then {g2.reshape(-1)[j]!r} on a "
                    "second call. " + _NONDETERMINISM_FIX
                )
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
        noise = estimate_loss_noise(evaluator, base_loss, noise_rng)
    return PreflightResult(
        base_loss=base_loss, nonfinite=nonfinite, warnings=tuple(warnings), noise=noise
    )
