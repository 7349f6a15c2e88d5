"""The loss's measured rounding noise near the base point (ECnoise on a few evaluations).

:func:`estimate_loss_noise` evaluates the loss at points a few ulps apart along a random
direction over every parameter and hands the values to
:func:`gradprobe.numerics.tolerances.ecnoise`. A loss that stays flat there is computed (or
rounded) more coarsely than its parameters: the step grows until the loss changes, which tells
the precision the loss is really computed in (``NoiseEstimate.step_scale``, ``resolution``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import GradCheckError, LossEvaluationError
from ..evaluate import Evaluator
from ..evaluate.threads import one_blas_thread
from ..numerics.directions import Normals
from ..numerics.steps import in_dtype
from ..numerics.tolerances import NOISE_HALF_POINTS, NOISE_ULPS, NoiseEstimate, ecnoise


def estimate_loss_noise(
    evaluator: Evaluator,
    base_loss: float,
    rng: np.random.Generator,
    zero_gradient: bool = False,
) -> NoiseEstimate:
    """Measure the loss's rounding noise along a random direction over every parameter.

    Evaluates ``L(x + i * delta * v)`` for ``i = -k..k``, ``i != 0`` (``k =``
    :data:`~gradprobe.numerics.tolerances.NOISE_HALF_POINTS`; the centre is ``base_loss``), ``v`` a unit
    vector over all entries drawn from ``rng``, and hands the values to
    :func:`~gradprobe.numerics.tolerances.ecnoise`. Parameter ``p``'s part of the step is
    ``NOISE_ULPS * EPS_p * sqrt(n) * max(1, rms(x_p))`` (``n`` entries in all): an entry of
    typical size moves by about ``NOISE_ULPS`` ulps, so the points differ in their last bits
    while the smooth part (and any kink crossed) changes the differences far less than the
    noise does. When the loss does not change at all there (computed or rounded more coarsely
    than its parameters: a float32 loss of float64 parameters), the step grows by
    :data:`NOISE_SCALING` until it does, at most :data:`MAX_NOISE_SCALINGS` times and never
    past the relative size float64's largest step has (``NoiseEstimate.step_scale`` says how
    far): float32 parameters get one scaling, float16 none.

    With ``zero_gradient`` (the analytic gradient is zero in every entry) a loss flat at a few
    ulps that changes at a larger step agrees with it: the loss is piecewise constant there
    (round, floor, a step function), not computed coarsely, and the step is not enlarged
    (status :data:`PIECEWISE_CONSTANT`, ``step_scale`` 1, no noise measured). Enlarged, it
    would cross many of the loss's jumps, whose staircase reads as a slope that the zero
    gradient misses; at the parameters' own step an entry's difference is zero, or a jump
    that does not shrink with the step (classified as such, never as a wrong gradient). A
    loss computed coarsely whose gradient is wrongly zero still changes at that step
    (float32's or 1e-9's rounding is far finer than it) and fails; one computed in float16
    does not (its zero gradient passes unverified, and the report's warning says so).
    """
    estimate = NoiseEstimate(0.0, 0, "flat")
    spent, scale = 0, 1.0
    # The largest step is the same relative size in every dtype (float64's after all its
    # scalings): a float32 or float16 loss flat there is flat as in float64, and the step
    # never grows towards the dtype's range.
    coarsest = max(float(np.finfo(dt).eps) for dt in evaluator.layout.dtypes)
    largest = NOISE_SCALING**MAX_NOISE_SCALINGS * float(np.finfo(np.float64).eps)
    # A loss computed (or rounded) more coarsely than its parameters stays flat at a few of
    # their ulps: enlarge the step until it changes, and measure the noise there.
    for _ in range(MAX_NOISE_SCALINGS + 1):
        estimate, values = _noise_at(evaluator, base_loss, rng, scale)
        spent += 2 * NOISE_HALF_POINTS
        # Quantized: equal to the last bit, or mostly so with no consistent noise order (a
        # coarse rounding grid crossed at one or two of the points).
        unchanged = int(np.count_nonzero(np.diff(values) == 0.0))
        quantized = estimate.status == "inconclusive" and 2 * unchanged >= len(values) - 1
        if estimate.status != "flat" and not quantized:
            break
        if scale * NOISE_SCALING * coarsest > largest:
            break
        scale *= NOISE_SCALING
    if zero_gradient and scale > 1.0 and estimate.status != "flat":
        # Flat at a few ulps, changing at a larger step: piecewise constant (a loss flat at
        # every step is constant there, "flat" as before).
        return NoiseEstimate(0.0, 0, PIECEWISE_CONSTANT, n_evaluations=spent)
    return replace(estimate, n_evaluations=spent, step_scale=scale)


#: The noise status of a loss flat at a few ulps whose analytic gradient is zero everywhere.
PIECEWISE_CONSTANT = "piecewise constant"
#: The report's warning when the noise status is PIECEWISE_CONSTANT.
PIECEWISE_NOTE = (
    "the loss does not change when every parameter moves by a few ulps, and the gradient is "
    "zero everywhere, as for a piecewise constant loss (round, floor, sign, a step function): "
    "it was checked at the parameters' own step (not at one widened for a loss computed in "
    "low precision), where a difference of zero agrees with the zero gradient and a jump of "
    "the loss is listed, not failed. A smooth loss computed in float16 looks the same: its "
    "zero gradient would pass unverified."
)

#: When the loss is flat at a few ulps, the noise estimate's step grows by this factor...
NOISE_SCALING = 256.0
#: ... at most this many times (steps up to ~1e-5 relative in float64; 8 evaluations each).
MAX_NOISE_SCALINGS = 5


def _noise_at(
    evaluator: Evaluator, base_loss: float, rng: np.random.Generator, scale: float
) -> tuple[NoiseEstimate, list[float]]:
    """ECnoise on ``L(x + i * delta * v)`` with ``delta`` ``scale`` times the ulp-sized step."""
    layout = evaluator.layout
    base = evaluator.base
    n = sum(b.size for b in base)
    # The direction is drawn again piece by piece at each point rather than stored: as large
    # as the parameters, it would add their size to the check's peak memory.
    v = Normals(rng, [b.size for b in base])
    norm = float(np.sqrt(sum(float(q) for q in v.squares)))
    steps = [
        scale * NOISE_ULPS * float(np.finfo(dt).eps) * np.sqrt(n) * max(1.0, _rms(b)) / norm
        for b, dt in zip(base, layout.dtypes, strict=True)
    ]
    k = NOISE_HALF_POINTS
    values = []
    for i in range(-k, k + 1):
        if i == 0:
            values.append(base_loss)
            continue
        arrays = None  # the previous point's, freed before this one's are made
        arrays = [
            _shifted(b, i * h, v, p, dt)
            for p, (b, h, dt) in enumerate(zip(base, steps, layout.dtypes, strict=True))
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
    return ecnoise(values), values


def _rms(b: np.ndarray) -> float:
    """The root mean square of ``b``'s entries (in float64)."""
    b = b.astype(np.float64, copy=False).reshape(-1)
    # einsum's own loop, not BLAS: the sum must not depend on the BLAS thread count.
    return float(np.sqrt(np.einsum("i,i->", b, b) / b.size))


def _shifted(
    base: np.ndarray, scale: float, normals: Normals, p: int, dtype: np.dtype
) -> np.ndarray:
    """``(base + scale * direction).astype(dtype)`` (the direction: segment ``p`` of
    ``normals``) piece by piece, kept inside the dtype's range (never an inf from finite
    parameters)."""
    out = np.empty(base.shape, dtype=dtype)
    flat, x = out.reshape(-1), base.reshape(-1)
    with np.errstate(over="ignore"):
        for a, b in normals.spans(p, 0, base.size):
            piece = np.multiply(normals.values(p, a, b), scale)
            piece += x[a:b]  # in float64, as the sum of float64 arrays
            flat[a:b] = in_dtype(piece, dtype, overwrite=True)
    return out
