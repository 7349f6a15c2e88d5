"""Pre-flight checks: cheap tests at the base point before any expensive work.

A check of thousands of perturbed losses is worthless when the loss is not a function of the
parameters alone (dropout left on, unseeded sampling, data shuffled between calls) or when the
loss or gradient writes into the arrays it is given. :func:`run_preflight` spends one extra
loss evaluation and one extra gradient call to rule both out, and lists the entries where the
analytic gradient is not finite.

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

from .errors import (
    GradCheckError,
    InvalidInputError,
    LossEvaluationError,
    NondeterministicLossError,
)
from .execution import Evaluator
from .tolerances import NOISE_FACTOR
from .validation import ParamLayout, normalize_gradient

__all__ = ["PreflightResult", "promote_params", "run_preflight"]

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
    """

    base_loss: float
    nonfinite: Mapping[str, np.ndarray] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def promote_params(
    layout: ParamLayout, base: Sequence[np.ndarray]
) -> tuple[ParamLayout, list[np.ndarray], list[str]]:
    """Cast parameters below float64 precision to float64 (``check(promote=True)``).

    Returns the new layout, the float64 copies and the names that were promoted.
    """
    promoted = [n for n, dt in zip(layout.names, layout.dtypes, strict=True) if dt.itemsize < 8]
    if not promoted:
        return layout, list(base), []
    arrays = [
        np.ascontiguousarray(a, dtype=np.float64) if a.dtype.itemsize < 8 else a for a in base
    ]
    new_layout = replace(layout, dtypes=tuple(a.dtype for a in arrays))
    return new_layout, arrays, promoted


def _mutated(
    layout: ParamLayout, given: Sequence[np.ndarray], base: Sequence[np.ndarray]
) -> list[str]:
    return [
        name
        for name, g, b in zip(layout.names, given, base, strict=True)
        if not np.array_equal(g, b, equal_nan=True)
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
    evaluator._charge(1)
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


def run_preflight(
    evaluator: Evaluator,
    base_loss: float,
    grad: Callable[[Any], Any] | Any,
    analytic: Sequence[np.ndarray],
    loss_eps: float,
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
    return PreflightResult(base_loss=base_loss, nonfinite=nonfinite, warnings=tuple(warnings))
