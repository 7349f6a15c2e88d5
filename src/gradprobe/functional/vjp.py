"""Reverse mode: :func:`check_vjp` and :func:`check_hvp`, reduced to :func:`gradprobe.check`.

A function ``f(inputs) -> outputs`` with a hand-written backward ``vjp(inputs, cotangent)`` is
checked as the scalar loss ``L(x) = sum over output leaves of vdot(G, f(x))`` with the gradient
``vjp(x, G)``, for one seeded random cotangent ``G`` (standard normal, in each output's dtype;
never ones, which puts most entries of a layer's gradient at the noise floor). Everything else
(samples, probes, bisection, diagnosis, the report per input) is :func:`gradprobe.check`'s.
A Hessian-vector product is grad's VJP (the Hessian is symmetric): :func:`check_hvp`.

:func:`prepare` (validation, the output's layout, the cotangent) and :func:`run` (the check,
its errors told in the caller's terms) serve :mod:`.jvp` and :mod:`.layer` too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..api import check
from ..errors import (
    CheckAborted,
    GradCheckError,
    InvalidInputError,
    LossEvaluationError,
    raised_at_the_call,
)
from ..layout import ParamLayout, normalize_params, validate_callable
from ..options import validate_options
from ..report.model import Report
from .outputs import (
    IN_CALLER_TERMS,
    Backward,
    Contraction,
    Roles,
    call_user,
    flatten,
    freeze_static,
)

__all__ = [
    "HVP",
    "JVP",
    "VJP",
    "Setup",
    "check_hvp",
    "check_vjp",
    "prepare",
    "run",
    "run_vjp_check",
]

VJP = Roles()
HVP = Roles(f="grad", vjp="hvp", cotangent="vector v", api="check_hvp")
JVP = Roles(
    f="f",
    vjp="jvp",
    api="check_jvp",
    grad="sum(cotangent * jvp(inputs, e_i)) for each input entry i",
)


def _cotangent_seed(value: Any, seed: int) -> int:
    if value is None:
        return seed
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidInputError(
            f"cotangent_seed: expected an int >= 0 or None (the check's seed), found {value!r}."
        )
    return int(value)


@dataclass(frozen=True)
class Setup:
    """Validated inputs, the output's layout at the inputs, and the random cotangent."""

    layout: ParamLayout
    base: list[np.ndarray]
    static: dict[str, Any]
    out: ParamLayout
    cotangent: list[np.ndarray]
    seed: int
    batched: bool


def prepare(f, inputs, static, cotangent_seed, options: Mapping[str, Any], roles: Roles) -> Setup:
    """Validate the inputs and options, call ``f`` once at the inputs for the output's layout
    (without the batch axis), and draw the cotangent from its seed."""
    validate_callable(roles.f, f)
    layout, base = normalize_params(inputs)
    checked = validate_options(layout.names, **options)
    if checked.method == "complex-step":
        raise InvalidInputError(
            f"method: {roles.api} supports 'central' and 'richardson', found 'complex-step' "
            "(its outputs are contracted as real arrays). Pass method='central'."
        )
    frozen = freeze_static(static)
    seed = _cotangent_seed(cotangent_seed, checked.seed)
    at = layout.pack([a[np.newaxis] if checked.batched else a.copy() for a in base])
    try:
        value = call_user(f, (at,), frozen, roles.f)
    except GradCheckError:
        raise
    except Exception as exc:
        raise LossEvaluationError(
            f"{roles.f} raised {type(exc).__name__} at the inputs: {exc}"
        ) from exc
    flat = flatten(value, f"{roles.f}'s output", "at the inputs", checked.batched)
    if flat.bad.any():
        raise InvalidInputError(
            f"{roles.f}'s output at the inputs: expected finite values, found NaN or inf. Check "
            "the function at these inputs (log of zero, overflow in exp)."
        )
    arrays = flat.arrays
    if checked.batched:
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
    rng = np.random.default_rng(seed)
    cotangent = [rng.standard_normal(a.shape).astype(a.dtype) for a in arrays]
    return Setup(layout, base, frozen, out, cotangent, seed, checked.batched)


def _finish(
    report: Report, setup: Setup, extra: Mapping[str, Any], timings: Mapping[str, float]
) -> Report:
    """The report with the cotangent (and ``extra``) in its settings."""
    return replace(
        report,
        settings={**report.settings, "cotangent": f"normal(seed={setup.seed})", **extra},
        timings={**report.timings, **timings},
    )


def run(
    loss, grad, inputs, setup: Setup, roles: Roles, options, extra=None, timings=None
) -> Report:
    """``check(loss, grad, inputs)``; errors get a line saying what loss and grad stand for."""
    extra, timings = dict(extra or {}), dict(timings or {})
    try:
        report = check(loss, grad, inputs, **options)
    except GradCheckError as exc:
        if exc.partial_report is not None:
            exc.partial_report = _finish(exc.partial_report, setup, extra, timings)
        own = getattr(exc, IN_CALLER_TERMS, False)  # already names f, vjp, the cotangent
        if not isinstance(exc, CheckAborted) and exc.args and not own:
            exc.args = (f"{exc.args[0]} {roles.context}", *exc.args[1:])
        raise
    except KeyboardInterrupt as exc:
        partial = getattr(exc, "partial_report", None)
        if partial is not None:
            exc.partial_report = _finish(partial, setup, extra, timings)  # type: ignore[attr-defined]
        raise
    return _finish(report, setup, extra, timings)


# -- the public functions ------------------------------------------------------------------------
def run_vjp_check(
    f: Callable[..., Any],
    vjp: Callable[..., Any],
    inputs: Any,
    static: Any,
    cotangent_seed: int | None,
    options: Mapping[str, Any],
    roles: Roles = VJP,
) -> Report:
    """:func:`check_vjp` with the names of ``roles`` in its messages (the layer adapter's)."""
    validate_callable(roles.vjp, vjp)
    setup = prepare(f, inputs, static, cotangent_seed, options, roles)
    loss = Contraction(f, setup.static, setup.out, setup.cotangent, setup.batched, roles)
    grad = Backward(vjp, setup.static, setup.out, setup.cotangent, roles)
    return run(loss, grad, inputs, setup, roles, options)


@raised_at_the_call
def check_vjp(
    f: Callable[..., Any],
    vjp: Callable[..., Any],
    inputs: Any,
    *,
    static: Mapping[str, Any] | None = None,
    cotangent_seed: int | None = None,
    **check_options: Any,
) -> Report:
    """Check a hand-written vector-Jacobian product (a layer's backward pass).

    Parameters
    ----------
    f : callable
        ``f(inputs, **static) -> array`` or a tuple, list or dict of float arrays.
    vjp : callable
        ``vjp(inputs, cotangent, **static) -> gradient`` with the structure of ``inputs``;
        ``cotangent`` has the structure of f's output. It must not write into ``cotangent``.
    inputs : mapping, sequence or ndarray
        The point, as for :func:`gradprobe.check`'s ``params``; reported per input.
    static : mapping, optional
        Keyword arguments passed unchanged to ``f`` and ``vjp`` and never perturbed (data,
        labels, masks); arrays among them are passed as read-only copies.
    cotangent_seed : int, optional
        Seed of the random cotangent ``G`` (standard normal, in each output's dtype). Default:
        the check's ``seed``. Recorded as ``report.settings["cotangent"]``.
    **check_options
        Any option of :func:`gradprobe.check`. With ``batched=True``, ``f`` receives the
        inputs with a leading batch axis (B copies of the one being perturbed, 1 of the
        others) and returns outputs with a leading axis of B (or 1); ``vjp`` is always called
        without one.

    Returns
    -------
    Report
        :func:`gradprobe.check`'s report of ``loss(x) = sum vdot(G, f(x))`` with
        ``grad(x) = vjp(x, G)``: one row per input.
    """
    return run_vjp_check(f, vjp, inputs, static, cotangent_seed, check_options, VJP)


@raised_at_the_call
def check_hvp(
    grad: Callable[..., Any],
    hvp: Callable[..., Any],
    params: Any,
    *,
    static: Mapping[str, Any] | None = None,
    cotangent_seed: int | None = None,
    **check_options: Any,
) -> Report:
    """Check a hand-written Hessian-vector product against differences of the gradient.

    The Hessian of a scalar loss is symmetric, so ``H v`` is the VJP of ``grad`` with
    cotangent ``v``: this is :func:`check_vjp` of ``(grad, hvp)`` with a random ``v``.

    Parameters
    ----------
    grad : callable
        ``grad(params, **static) -> gradient`` (the structure of ``params``), trusted here:
        check it first with :func:`gradprobe.check`.
    hvp : callable
        ``hvp(params, v, **static) -> H v``, ``v`` and the result shaped like ``params``.
    params, static, cotangent_seed, **check_options
        As for :func:`check_vjp`.
    """
    return run_vjp_check(grad, hvp, params, static, cotangent_seed, check_options, HVP)
