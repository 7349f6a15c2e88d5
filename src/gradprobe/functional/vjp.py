"""Reverse mode: :func:`check_vjp` and :func:`check_hvp`, reduced to :func:`gradprobe.check`.

A function ``f(inputs) -> outputs`` with a hand-written backward ``vjp(inputs, cotangent)`` is
checked as the scalar loss ``L(x) = sum over output leaves of vdot(G, f(x))`` with the gradient
``vjp(x, G)``, for one seeded random cotangent ``G`` (standard normal, in each output's dtype;
never ones, which puts most entries of a layer's gradient at the noise floor). Everything else
(samples, probes, bisection, diagnosis, the report per input) is :func:`gradprobe.check`'s.
A Hessian-vector product is grad's VJP (the Hessian is symmetric): :func:`check_hvp`. The
setup and the run are :mod:`.reduction`'s, shared with :mod:`.jvp`, :mod:`.layer` and the
framework adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import raised_at_the_call
from ..layout import validate_callable
from ..report.model import Report
from .contraction import Backward, Contraction, Roles
from .reduction import prepare, run

VJP = Roles()
HVP = Roles(f="grad", vjp="hvp", cotangent="vector v", api="check_hvp")
JVP = Roles(
    f="f",
    vjp="jvp",
    api="check_jvp",
    grad="sum(cotangent * jvp(inputs, e_i)) for each input entry i",
)


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
        the check's ``seed``. Recorded in ``report.settings["cotangent"]``.
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
