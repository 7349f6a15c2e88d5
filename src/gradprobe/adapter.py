"""What the PyTorch and JAX adapters share: options, the seeded cotangent, the choice between a
vectorized (vmap) and a per-entry loss, and the notes they add to the report.

An adapter turns ``fn(*inputs)`` into the scalar ``loss(x) = sum(G * fn(x))`` over numpy copies
of the checked inputs, ``G`` a seeded standard-normal cotangent (never ones: a cotangent of
ones sums the outputs, and a backward pass wrong in a way that cancels over a sum would pass),
and its analytic gradient into the framework's vector-Jacobian product ``G^T J``.
:func:`run_check` hands both to :func:`gradprobe.check`: the same probes, bisection,
localization, diagnosis and :class:`~gradprobe.Report` as for a numpy loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .api import check
from .errors import GradCheckError, InvalidInputError
from .report.model import Report

__all__ = [
    "VECTORIZE_CHOICES",
    "AdaptedFunction",
    "Vectorization",
    "adapter_options",
    "choose_loss",
    "cotangents",
    "mapped_inputs",
    "run_check",
    "short_error",
    "validate_vectorize",
]

#: Values of the adapters' ``vectorize=`` option.
VECTORIZE_CHOICES: tuple[Any, ...] = (True, False, "auto")
#: Mixed into the seed so the cotangent's stream differs from the sample's and the probes'.
_COTANGENT_STREAM = 0xC07A


class AdaptedFunction(Protocol):
    """A framework function seen as a gradprobe problem (built by the torch and jax adapters).

    ``base`` holds numpy copies of the checked inputs by name; ``loss(p)`` is
    ``sum(G * fn(p))`` as a float; ``make_batched_loss()`` returns the vmapped loss (B losses
    for inputs with one extra leading axis) or raises; ``grad(p)`` is the framework's VJP
    ``G^T J`` by name. ``magnitude`` is ``sum(|G * fn(x)|)`` at the base point and ``eps`` the
    machine epsilon of the outputs (together: how far a vectorized loss may differ from the
    direct one by round-off). ``warnings`` are the adapter's own notes for the report (a
    function that could not be jitted). An optional ``promote_advice`` maps advice the
    report's warnings give (``promote=True``) to the form that works in the framework, where
    it needs another step first.
    """

    base: Mapping[str, np.ndarray]
    magnitude: float
    eps: float
    warnings: Sequence[str]

    def loss(self, params: Mapping[str, np.ndarray]) -> float: ...

    def make_batched_loss(self) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]: ...

    def grad(self, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Vectorization:
    """The loss a check runs and how: ``batched`` (vmap) or per entry, with the reason."""

    loss: Callable[[Any], Any]
    batched: bool
    setting: str
    warning: str | None = None


def validate_vectorize(value: Any) -> bool | str:
    """``vectorize=`` must be True, False or "auto"."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if value == "auto":
        return "auto"
    raise InvalidInputError(
        f"vectorize: expected True, False or 'auto', found {value!r}. 'auto' (the default) uses "
        "vmap when the function allows it and falls back to one call per perturbed entry."
    )


def adapter_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of :func:`gradprobe.check` an adapter passes on (each is validated there).

    ``batched`` is the adapter's to set (``vectorize=``), and the complex step needs complex
    inputs that framework functions and their custom backward passes rarely support.
    """
    if "batched" in options:
        raise InvalidInputError(
            f"batched: the adapter sets it; found batched={options['batched']!r}. Pass "
            "vectorize=True, False or 'auto' (vmap over the perturbed copies) instead."
        )
    if options.get("method") == "complex-step":
        raise InvalidInputError(
            "method: expected 'central' or 'richardson' for a framework function, found "
            "'complex-step' (it needs complex inputs, which custom autograd functions rarely "
            "support). Use method='richardson' for higher accuracy."
        )
    return dict(options)


def cotangents(seed: int, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Standard-normal float64 cotangents, one per output shape, from ``seed`` (reproducible)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(
            f"seed: expected a non-negative integer, found {seed!r}. Pass e.g. seed=0."
        )
    rng = np.random.default_rng([_COTANGENT_STREAM, int(seed)])
    return [rng.standard_normal(shape) for shape in shapes]


def short_error(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    if len(first) > 200:
        first = first[:197] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def mapped_inputs(arrays: Sequence[np.ndarray]) -> list[bool]:
    """Which inputs of a batched call vmap maps over (leading axis 0); the others are passed
    without their size-1 leading axis. gradprobe's batched calls give the perturbed input B
    copies and the others one: map over the B copies, or over the first input when B is 1."""
    b = max(a.shape[0] for a in arrays)
    if b > 1:
        return [a.shape[0] == b for a in arrays]
    return [p == 0 for p in range(len(arrays))]


def _trial_inputs(base: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """Two copies of ``name``'s base value along a new leading axis, one of every other input."""
    return {n: np.stack([a, a]) if n == name else a[np.newaxis] for n, a in base.items()}


def _vectorization_problem(fn: AdaptedFunction, batched: Callable[..., Any]) -> str | None:
    """Why the vmapped loss cannot stand in for the direct one at the base point, or None.

    One call per input, with two copies of it: both values must equal the direct loss within
    round-off (``sqrt(eps) * sum|G * fn(x)|``, far above a reordered sum and far below a
    function that vmap changes)."""
    try:
        direct = float(fn.loss(fn.base))
    except Exception:
        return None  # the check itself reports the base point's error, with its context
    allowed = float(np.sqrt(fn.eps)) * max(fn.magnitude, np.finfo(np.float64).tiny)
    for name in fn.base:
        values = np.asarray(batched(_trial_inputs(fn.base, name)), dtype=np.float64)
        if values.shape != (2,) or not np.all(np.abs(values - direct) <= allowed):
            return (
                f"vmap over {name!r} gave {values.tolist()} where the direct call gives "
                f"{direct!r} (allowed difference {allowed:.3g})"
            )
    return None


def choose_loss(fn: AdaptedFunction, vectorize: bool | str, vmap_name: str) -> Vectorization:
    """The vmapped loss when ``vectorize`` allows and it works at the base point, else the
    per-entry loss (``vectorize="auto"``: with a warning that says why; ``True``: an error)."""
    if vectorize is False:
        return Vectorization(fn.loss, False, "off (vectorize=False): one call per entry")
    try:
        batched = fn.make_batched_loss()
        problem = _vectorization_problem(fn, batched)
    except (KeyboardInterrupt, GradCheckError):
        raise
    except Exception as exc:
        problem = f"it raised {short_error(exc)}"
    if problem is None:
        return Vectorization(batched, True, f"{vmap_name}: B perturbed copies per call")
    if vectorize is True:
        raise InvalidInputError(
            f"vectorize=True: {vmap_name} cannot evaluate the function ({problem}). Pass "
            "vectorize='auto' to fall back to one call per perturbed entry, or make the "
            "function vmap-compatible (no .item() or Python branching on values; a custom "
            "autograd.Function needs setup_context and generate_vmap_rule = True)."
        )
    return Vectorization(
        fn.loss,
        False,
        f"per entry ({vmap_name} failed)",
        f"vectorize: {vmap_name} could not be used ({problem}); the check ran one call per "
        "perturbed entry instead, which is slower but checks the same. Pass vectorize=False "
        "to skip the attempt.",
    )


def _amend(
    report: Report, fn: AdaptedFunction, vec: Vectorization, settings: Mapping[str, Any]
) -> Report:
    ours = [*fn.warnings, *([] if vec.warning is None else [vec.warning])]
    # Advice to check in float64 in the form that works in this framework (JAX: x64 first).
    theirs = list(report.warnings)
    for said, works in getattr(fn, "promote_advice", {}).items():
        theirs = [w.replace(said, works) for w in theirs]
    warnings = (*ours, *theirs)
    merged = {**report.settings, **settings, "vectorize": vec.setting}
    return dataclasses.replace(report, warnings=warnings, settings=merged)


def run_check(
    fn: AdaptedFunction,
    vectorize: bool | str,
    vmap_name: str,
    options: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> Report:
    """Check ``fn``'s VJP with :func:`gradprobe.check`; the report notes the vectorization and
    the adapter's ``settings`` (framework, device, cotangent)."""
    vec = choose_loss(fn, vectorize, vmap_name)
    try:
        report = check(vec.loss, fn.grad, dict(fn.base), batched=vec.batched, **options)
    except GradCheckError as exc:
        if isinstance(exc.partial_report, Report):
            exc.partial_report = _amend(exc.partial_report, fn, vec, settings)
        raise
    return _amend(report, fn, vec, settings)
