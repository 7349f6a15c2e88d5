"""The loss's measured rounding noise near the base point (ECnoise on a few evaluations).

:func:`estimate_loss_noise` evaluates the loss at points a few ulps apart along a random
direction over every parameter and hands the values to
:func:`gradprobe.numerics.tolerances.ecnoise`. A loss that stays flat there is computed (or
rounded) more coarsely than its parameters: the step grows until the loss changes, which tells
the precision the loss is really computed in (``NoiseEstimate.step_scale``, ``resolution``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import CheckAborted, GradCheckError, LossEvaluationError
from ..evaluate import Evaluator
from ..evaluate.stacked import STACKED_BYTES
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
    vector over all entries drawn from ``rng`` (in one stacked call, the centre again among
    them, where the loss takes every parameter stacked: an adapter's vmap, and the copies
    are small; :meth:`~gradprobe.evaluate.Evaluator.point_losses`), and hands the values to
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

    A piecewise constant loss whose jumps lie closer than a few ulps of the parameters apart
    in all (float32's ulps of 20 entries near 5 cross ``round(x, 3)``'s 0.001 grid) is not
    flat there: it jumps at one or two of the points. With ``zero_gradient``, values that
    stay exactly equal at most points and change far above their rounding at the others
    (:func:`crosses_jumps`) are piecewise constant too, with no noise measured from the jumps.
    """
    estimate = NoiseEstimate(0.0, 0, "flat")
    before, scale = evaluator.n_evaluations, 1.0
    # The largest step is the same relative size in every dtype (float64's after all its
    # scalings): a float32 or float16 loss flat there is flat as in float64, and the step
    # never grows towards the dtype's range.
    coarsest = max(float(np.finfo(dt).eps) for dt in evaluator.layout.dtypes)
    largest = NOISE_SCALING**MAX_NOISE_SCALINGS * float(np.finfo(np.float64).eps)
    # A loss computed (or rounded) more coarsely than its parameters stays flat at a few of
    # their ulps: enlarge the step until it changes, and measure the noise there.
    for _ in range(MAX_NOISE_SCALINGS + 1):
        estimate, values = _noise_at(evaluator, base_loss, rng, scale)
        spent = evaluator.n_evaluations - before
        if zero_gradient and scale == 1.0 and crosses_jumps(values, coarsest):
            return Staircase(0.0, 0, PIECEWISE_CONSTANT, n_evaluations=spent)
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
    if zero_gradient and scale == 1.0 and estimate.status != "flat":
        # Changing at a few ulps though the gradient is zero everywhere: a wrong gradient, or
        # a staircase whose jumps the step crosses at most points among many entries. Along a
        # few entries the jumps are rare: flat there, or a staircase, it is piecewise constant.
        _, few = _noise_at(evaluator, base_loss, rng, scale, FEW_ENTRIES)
        spent = evaluator.n_evaluations - before
        if len(set(few)) == 1 or crosses_jumps(few, coarsest):
            return Staircase(0.0, 0, PIECEWISE_CONSTANT, n_evaluations=spent)
    return replace(estimate, n_evaluations=spent, step_scale=scale)


@dataclass(frozen=True)
class Staircase(NoiseEstimate):
    """A :data:`PIECEWISE_CONSTANT` estimate found from jumps crossed at a few ulps, or from a
    loss flat along a few entries that changes along all (not flat along all)."""


#: The entries the second direction moves when the first crossed jumps at most points.
FEW_ENTRIES = 16


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

#: The report's warning when the noise status is PIECEWISE_CONSTANT found from jumps crossed
#: at a few ulps (:func:`crosses_jumps`).
JUMPS_NOTE = (
    "the gradient is zero everywhere, and the loss, when the parameters move by a few ulps, "
    "stays exactly equal but for jumps far above its rounding (or stays equal when a few of "
    "them move): piecewise constant, with jumps closer together than the check's step (round, "
    "floor, sign, a step function). No noise was measured from the jumps, and an entry whose "
    "step spans several of them was judged by the loss at steps finer than their grid, where "
    "a flat loss is listed as a jump, not failed."
)


def piecewise_note(estimate: NoiseEstimate) -> str:
    """The warning for a PIECEWISE_CONSTANT estimate: flat at a few ulps (the step grew before
    the loss changed) or jumps crossed there (found at the first step)."""
    return JUMPS_NOTE if isinstance(estimate, Staircase) else PIECEWISE_NOTE


#: A change of the loss between neighbouring points of the noise estimate at least this many
#: times its rounding (one epsilon of its largest value) is a jump, not rounding.
JUMP_UNITS = 16.0


def crosses_jumps(values: Sequence[float], eps: float) -> bool:
    """The values are a staircase: at least half of the differences between neighbours are
    exactly zero and one exceeds :data:`JUMP_UNITS` times the values' rounding.

    A smooth loss changes by about the same amount between any two neighbouring points (its
    curvature is negligible at a few ulps): differences of exactly zero beside one many
    roundings high are a jump (two entries crossing jumps of opposite sides at once leave a
    rounding-sized difference beside it). The rounding is ``eps`` (the parameters' coarsest) relative, or
    the grid of the values themselves when they carry fewer significant bits (a loss computed
    in float32 or float16 and returned as float64 changes in steps of its own ulp: rounding,
    not jumps).
    """
    d = np.diff(np.asarray(values, dtype=np.float64))
    zero = d == 0.0
    if not np.all(np.isfinite(d)) or np.all(zero) or 2 * np.count_nonzero(zero) < d.size:
        return False
    unit = resolution(values, eps) * float(np.max(np.abs(values)))
    return bool(np.max(np.abs(d)) > JUMP_UNITS * unit)


#: Values whose grid is this many times coarser than the parameters' epsilon are computed in
#: a coarser precision (8 trailing zero bits in every value are rare by chance).
COARSE_GRID = 256.0


def resolution(values: Sequence[float] | np.ndarray, eps: float) -> float:
    """The relative rounding of the loss's values: ``eps``, or the grid they lie on where that
    is :data:`COARSE_GRID` times coarser (a loss computed in float32 or float16 and returned
    as float64 changes in steps of its own ulp)."""
    grid = value_grid(values)
    return grid if grid >= COARSE_GRID * eps else eps


def value_grid(values: Sequence[float] | np.ndarray) -> float:
    """The relative spacing of the grid the values lie on: ``2**(1 - b)`` for the most
    significant bits ``b`` any of them carries (float64's epsilon for full mantissas, float32's
    for float32 values; 0 when every value is 0)."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[(v > 0) & np.isfinite(v)]
    if v.size == 0:
        return 0.0
    m, _ = np.frexp(v)  # in [0.5, 1): m * 2**53 is an integer
    bits = 0
    while bits < 53 and np.any(m != np.floor(m)):  # exact: scaling by 2 never rounds
        m, bits = m * 2.0, bits + 1
    return float(2.0 ** (1 - bits))


#: When the loss is flat at a few ulps, the noise estimate's step grows by this factor...
NOISE_SCALING = 256.0
#: ... at most this many times (steps up to ~1e-5 relative in float64; 8 evaluations each, or
#: one stacked call of 9).
MAX_NOISE_SCALINGS = 5


def _noise_at(
    evaluator: Evaluator,
    base_loss: float,
    rng: np.random.Generator,
    scale: float,
    few: int | None = None,
) -> tuple[NoiseEstimate, list[float]]:
    """ECnoise on ``L(x + i * delta * v)`` with ``delta`` ``scale`` times the ulp-sized step;
    ``few``: ``v`` moves that many entries drawn at random (each by as much as when all move)."""
    layout = evaluator.layout
    base = evaluator.base
    n = sum(b.size for b in base)
    # The direction is drawn again piece by piece at each point rather than stored: as large
    # as the parameters, it would add their size to the check's peak memory.
    v: Normals | _Held = Normals(rng, [b.size for b in base])
    if few is not None and few < n:
        keep = np.zeros(n, dtype=bool)
        keep[rng.choice(n, size=few, replace=False)] = True
        parts = np.split(keep, np.cumsum([b.size for b in base])[:-1])
        v = _Held([v.row(p) * k for p, k in enumerate(parts)])  # rare: kept whole
        n = few
    norm = float(np.sqrt(sum(float(q) for q in v.squares)))
    steps = [
        scale * NOISE_ULPS * float(np.finfo(dt).eps) * np.sqrt(n) * max(1.0, _rms(b)) / norm
        for b, dt in zip(base, layout.dtypes, strict=True)
    ]
    k = NOISE_HALF_POINTS
    # Small parameters: every point's arrays in one pass per parameter, the centre's too (for
    # one stacked call, or the calls one by one); large ones a point at a time, each freed
    # before the next is made.
    rows = None
    if (2 * k + 1) * sum(b.nbytes for b in base) <= STACKED_BYTES:
        rows = [
            _shifted(b, np.array([i * h for i in range(-k, k + 1)]), v, p, dt)
            for p, (b, h, dt) in enumerate(zip(base, steps, layout.dtypes, strict=True))
        ]
        if evaluator.stacks_points(2 * k + 1):
            stacked = _stacked_values(evaluator, base_loss, rows)
            if stacked is not None:
                return ecnoise(stacked), stacked
    values = []
    for i in range(-k, k + 1):
        if i == 0:
            values.append(base_loss)
            continue
        arrays = None  # the previous point's, freed before this one's are made
        if rows is not None:
            arrays = [r[i + k] for r in rows]
        else:
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


def _stacked_values(
    evaluator: Evaluator, base_loss: float, points: list[np.ndarray]
) -> list[float] | None:
    """The losses at ``points`` (every parameter's rows stacked along a leading axis, the
    centre in the middle) from one stacked call; None where that call raised or disagrees
    with the direct one at the centre by more than round-off (``sqrt(eps)`` relative): then
    the points are evaluated one by one, as for any loss, and no stacked call is made again.

    The centre is evaluated again in the same call so that every value the estimate reads
    comes from one computation (vmap may sum in another order than the direct call)."""
    try:
        values = evaluator.point_losses(points, "at every parameter (noise estimate)")
    except CheckAborted:
        raise
    except Exception:  # the point-by-point calls raise it again, with where it happened
        evaluator.refuse_stacking()
        return None
    centre = float(values[len(values) // 2])
    eps = max(float(np.finfo(dt).eps) for dt in evaluator.layout.dtypes)
    allowed = np.sqrt(eps) * max(abs(base_loss), np.finfo(np.float64).tiny)
    if not np.all(np.isfinite(values)) or not abs(centre - base_loss) <= allowed:
        evaluator.refuse_stacking()
        return None
    evaluator.stacking = True
    return [float(x) for x in values]


class _Held:
    """A direction held whole (the few-entries one, drawn only for a zero gradient), read as
    :class:`Normals` is."""

    def __init__(self, rows: list[np.ndarray]) -> None:
        self.rows = rows
        self.squares = [np.sum(x * x) for x in rows]

    def spans(self, s: int, lo: int, hi: int) -> list[tuple[int, int]]:
        return [(lo, hi)]

    def values(self, s: int, lo: int, hi: int) -> np.ndarray:
        return self.rows[s][lo:hi]


def _rms(b: np.ndarray) -> float:
    """The root mean square of ``b``'s entries (in float64)."""
    b = b.astype(np.float64, copy=False).reshape(-1)
    # einsum's own loop, not BLAS: the sum must not depend on the BLAS thread count.
    return float(np.sqrt(np.einsum("i,i->", b, b) / b.size))


def _shifted(
    base: np.ndarray,
    scale: float | np.ndarray,
    normals: Normals | _Held,
    p: int,
    dtype: np.dtype,
) -> np.ndarray:
    """``(base + scale * direction).astype(dtype)`` (the direction: segment ``p`` of
    ``normals``) piece by piece, kept inside the dtype's range (never an inf from finite
    parameters); one row per scale, stacked along a leading axis, for an array ``scale``."""
    rows = np.shape(scale)
    out = np.empty((*rows, *base.shape), dtype=dtype)
    flat, x = out.reshape(*rows, -1), base.reshape(-1)
    with np.errstate(over="ignore"):
        for a, b in normals.spans(p, 0, base.size):
            piece = np.multiply.outer(scale, normals.values(p, a, b))
            piece += x[a:b]  # in float64, as the sum of float64 arrays
            flat[..., a:b] = in_dtype(piece, dtype, overwrite=True)
    return out
