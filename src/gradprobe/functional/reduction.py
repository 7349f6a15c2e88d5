"""The one reduction of a function with a backward to the scalar :func:`gradprobe.check`.

A function ``f(x) -> outputs`` with a backward ``vjp(x, G)`` becomes the scalar loss
``L(x) = sum over output leaves of vdot(G, f(x))`` with the gradient ``vjp(x, G)``, for one
seeded random cotangent ``G``. Every vector-valued check goes through here: ``check_vjp``,
``check_hvp``, ``check_jvp`` and ``check_layer`` (numpy functions), and the PyTorch and JAX
adapters (:mod:`.adapted`). So there is one of each rule:

- the cotangent: standard normal from ``default_rng([COTANGENT_STREAM, seed])`` (a stream of
  its own, apart from the sample's and the probes'), in each output's dtype, never ones (a
  cotangent of ones sums the outputs, and a backward wrong in a way that cancels over a sum
  would pass); its seed is the check's ``seed`` unless ``cotangent_seed`` is given;
- the complex step is refused (the outputs are contracted with a real cotangent);
- the options are validated once, here, into the :class:`~gradprobe.options.CheckOptions`
  that :class:`Setup` carries (``check_jvp`` reads its time limit and jitter from it);
- the report is amended the same way for every way a check ends (a result, an error with a
  partial report, a time limit or budget, Ctrl-C): :func:`amend`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..api import check
from ..checking.run import check_normalized, passed_to_recheck
from ..errors import CheckAborted, GradCheckError, InvalidInputError, LossEvaluationError
from ..layout import ParamLayout, normalize_params, validate_callable
from ..options import CheckOptions, validate_options
from ..report.model import Report
from ..validators import _seed
from .contraction import IN_CALLER_TERMS, Roles, call_user, contract, flatten, freeze_static

#: Mixed into the seed so the cotangent's stream differs from the sample's and the probes'.
COTANGENT_STREAM = 0xC07A


def cotangent_setting(seed: int, f: str = "f") -> str:
    """What ``report.settings["cotangent"]`` says: the one wording of the cotangent drawn."""
    return f"standard normal, seed {seed}: loss = sum(G * {f}(x))"


def draw_cotangent(seed: int, outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Standard-normal cotangents shaped like ``outputs``, each rounded to its output's dtype
    (so the backward and the loss use the same values); reproducible from ``seed``."""
    rng = np.random.default_rng(_cotangent_sequence(int(seed)))
    return [rng.standard_normal(a.shape).astype(a.dtype) for a in outputs]


@functools.lru_cache(maxsize=64)
def _cotangent_sequence(seed: int) -> np.random.SeedSequence:
    """The cotangent stream's ``SeedSequence([COTANGENT_STREAM, seed])``, kept for the next
    check with the same seed (its entropy pool costs ~5 us); never spawned from."""
    return np.random.SeedSequence([COTANGENT_STREAM, seed])


def cotangent_seed(value: Any, seed: int) -> int:
    """The cotangent's seed: ``value`` (the same rule as ``seed``), or the check's ``seed``."""
    if value is None:
        return seed
    try:
        return _seed(value, None)
    except InvalidInputError:
        raise InvalidInputError(
            f"cotangent_seed: expected an int >= 0 or None (the check's seed), found {value!r}."
        ) from None


def refuse_complex_step(method: str, api: str) -> None:
    """The one complex-step refusal of every vector-valued check."""
    if method == "complex-step":
        raise InvalidInputError(
            f"method: {api} supports 'central' and 'richardson', found 'complex-step' (the "
            "outputs are contracted with a real cotangent, and custom backward passes rarely "
            "accept complex inputs). Pass method='central', or 'richardson' for higher accuracy."
        )


@dataclass(frozen=True)
class Setup:
    """Validated inputs and options, the output's layout at the inputs, and the cotangent.

    ``value_loss`` is ``sum vdot(G, f(x))`` at the inputs, ``magnitude`` is
    ``sum |G * f(x)|`` there and ``eps`` the machine epsilon of the outputs (together: how far
    a vectorized loss may differ from the direct one by round-off)."""

    layout: ParamLayout
    base: list[np.ndarray]
    static: dict[str, Any]
    out: ParamLayout
    cotangent: list[np.ndarray]
    seed: int
    options: CheckOptions
    value_loss: float = 0.0
    magnitude: float = 0.0
    eps: float = float(np.finfo(np.float64).eps)
    #: What the report's settings gain (the cotangent; a framework, device, vectorization).
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: The caller's arrays ``base`` was copied from (None where converted).
    sources: Sequence[np.ndarray | None] = ()

    @property
    def batched(self) -> bool:
        return self.options.batched


_UNSET = object()


def prepare(
    f: Callable[..., Any],
    inputs: Any,
    static: Any,
    seed_of_cotangent: Any,
    options: Mapping[str, Any],
    roles: Roles,
    value: Any = _UNSET,
) -> Setup:
    """Validate the inputs and options, read the output's layout from ``value`` (``f`` at the
    inputs, without the batch axis; called once here when not handed on) and draw the
    cotangent from its seed."""
    validate_callable(roles.f, f)
    layout, base, sources = normalize_params(inputs)
    checked = validate_options(layout.names, **options)
    refuse_complex_step(checked.method, roles.api)
    frozen = freeze_static(static)
    seed = cotangent_seed(seed_of_cotangent, checked.seed)
    batched = checked.batched and value is _UNSET
    if value is _UNSET:
        at = layout.pack([a[np.newaxis] if batched else a.copy() for a in base])
        try:
            value = call_user(f, (at,), frozen, roles.f)
        except GradCheckError:
            raise
        except Exception as exc:
            raise LossEvaluationError(
                f"{roles.f} raised {type(exc).__name__} at the inputs: {exc}"
            ) from exc
    flat = flatten(value, f"{roles.f}'s output", "at the inputs", batched)
    if flat.bad.any():
        raise InvalidInputError(
            f"{roles.f}'s output at the inputs: expected finite values, found NaN or inf. Check "
            "the function at these inputs (log of zero, overflow in exp)."
        )
    arrays = flat.arrays
    if batched:
        if any(a.ndim == 0 or a.shape[0] != 1 for a in arrays):
            raise InvalidInputError(
                f"{roles.f} with batched=True: expected outputs with a leading axis of size 1 "
                f"when every input has one, found shapes {[a.shape for a in arrays]}."
            )
        arrays = [a[0] for a in arrays]
    out = replace(
        flat.layout,
        shapes=tuple(a.shape for a in arrays),
        dtypes=tuple(a.dtype for a in arrays),
    )
    cotangent = draw_cotangent(seed, arrays)
    wide = [np.asarray(g, np.float64).reshape(-1) for g in cotangent]
    flat_at = replace(flat, arrays=arrays)
    return Setup(
        layout,
        base,
        frozen,
        out,
        cotangent,
        seed,
        checked,
        value_loss=float(contract(flat_at, wide, False, 1)),
        magnitude=float(
            sum(
                np.abs(a.reshape(-1).astype(np.float64)) @ np.abs(g)
                for a, g in zip(arrays, wide, strict=True)
            )
        ),
        eps=max(
            (float(np.finfo(a.dtype).eps) for a in arrays if a.dtype.kind == "f"),
            default=float(np.finfo(np.float64).eps),
        ),
        settings={"cotangent": cotangent_setting(seed, roles.f)},
        sources=sources,
    )


def amend(
    report: Report,
    setup: Setup,
    settings: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    warnings: Sequence[str] = (),
) -> Report:
    """``report`` with the reduction's settings (the cotangent, and ``settings``), ``timings``
    and ``warnings`` (first): the same for a finished report and for every partial one."""
    return replace(
        report,
        settings={**report.settings, **setup.settings, **(settings or {})},
        timings={**report.timings, **(timings or {})},
        warnings=(*warnings, *report.warnings),
    )


def run(
    loss: Any,
    grad: Any,
    inputs: Any,
    setup: Setup,
    roles: Roles,
    options: Mapping[str, Any],
    *,
    settings: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    warnings: Sequence[str] = (),
    found: Callable[[Report], Report] | None = None,
) -> Report:
    """``check(loss, grad, inputs, **options)``, amended by :func:`amend` whichever way it
    ends, then by ``found`` (what the run itself found out, e.g. an input vmap could not
    map); errors get a line saying what loss and grad stand for."""

    def finish(report: Report) -> Report:
        report = amend(report, setup, settings, timings, warnings)
        return report if found is None else found(report)

    # As check(loss, grad, inputs, **options), without normalizing the inputs again.
    kept = passed_to_recheck(options)
    try:
        report = check_normalized(
            loss,
            grad,
            setup.layout,
            [b.copy() for b in setup.base],
            setup.sources,
            validate_options(setup.layout.names, **options),
            lambda **more: check(loss, grad, inputs, **kept, **more),
        )
    except GradCheckError as exc:
        if isinstance(exc.partial_report, Report):
            exc.partial_report = finish(exc.partial_report)
        own = getattr(exc, IN_CALLER_TERMS, False)  # already names f, vjp, the cotangent
        if not isinstance(exc, CheckAborted) and exc.args and not own:
            exc.args = (f"{exc.args[0]} {roles.context}", *exc.args[1:])
        raise
    except KeyboardInterrupt as exc:
        partial = getattr(exc, "partial_report", None)
        if isinstance(partial, Report):
            exc.partial_report = finish(partial)  # type: ignore[attr-defined]
        raise
    return finish(report)
