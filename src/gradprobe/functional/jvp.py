"""Forward mode: :func:`check_jvp`, reduced to :func:`gradprobe.check` through the same loss.

With the random cotangent ``G`` of :func:`gradprobe.check_vjp`, the gradient of
``loss(x) = sum vdot(G, f(x))`` has entry ``i`` equal to ``sum vdot(G, jvp(x, e_i))``:
:func:`jvp_gradient` calls ``jvp`` once per input entry on unit tangents (one buffer per
input, one entry set at a time), refuses a ``jvp`` that writes into its arguments and checks
on its first entry that it repeats. The gradient is then handed to ``check`` as a value, so
``jvp`` is not called again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..checking.preflight import jitter_bar
from ..errors import (
    CheckAborted,
    GradCheckError,
    InvalidInputError,
    LossEvaluationError,
    StatefulGradientError,
    raised_at_the_call,
)
from ..layout import ParamLayout, promote_to_float64, unravel, validate_callable
from ..report.model import Report
from .contraction import Contraction, Flat, call_user, contract, flatten, same_structure
from .reduction import Setup, prepare, run
from .vjp import JVP


@raised_at_the_call
def check_jvp(
    f: Callable[..., Any],
    jvp: Callable[..., Any],
    inputs: Any,
    *,
    static: Mapping[str, Any] | None = None,
    cotangent_seed: int | None = None,
    **check_options: Any,
) -> Report:
    """Check a hand-written Jacobian-vector product (forward mode).

    With a random cotangent ``G``, the gradient of ``loss(x) = sum vdot(G, f(x))`` has entry
    ``i`` equal to ``sum vdot(G, jvp(x, e_i))``: ``jvp`` is called once per input entry (``n``
    calls for ``n`` entries in all, plus one repeat that checks it is deterministic), then
    :func:`gradprobe.check` compares that gradient with differences of the loss. Keep the
    inputs small (thousands of entries), or check the matching VJP with :func:`check_vjp`.

    Parameters
    ----------
    f : callable
        ``f(inputs, **static) -> array`` or a tuple, list or dict of float arrays.
    jvp : callable
        ``jvp(inputs, tangent, **static) -> output tangent`` (the structure of f's output;
        ``tangent`` has the structure of ``inputs``).
    inputs, static, cotangent_seed, **check_options
        As for :func:`check_vjp` (``batched=True`` applies to ``f`` only).

    Returns
    -------
    Report
        One row per input; ``report.timings["jvp"]`` and ``report.measured["jvp_calls"]``
        give the cost of building the gradient.
    """
    roles = JVP
    validate_callable(roles.vjp, jvp)
    setup = prepare(f, inputs, static, cotangent_seed, check_options, roles)
    start = time.perf_counter()
    timeout = setup.options.timeout  # the time limit covers building the gradient too
    gradient, calls = jvp_gradient(
        jvp, setup, deadline=time.monotonic() + timeout if timeout else None
    )
    seconds = time.perf_counter() - start
    if timeout:
        check_options = {**check_options, "timeout": max(1e-3, timeout - seconds)}
    loss = Contraction(f, setup.static, setup.out, setup.cotangent, setup.batched, roles)
    return run(
        loss,
        setup.layout.pack(gradient),
        inputs,
        setup,
        roles,
        check_options,
        settings={"jvp_calls": calls},
        timings={"jvp": seconds},
    )


def jvp_gradient(
    jvp: Callable[..., Any], setup: Setup, deadline: float | None = None
) -> tuple[list[np.ndarray], int]:
    """Entry ``i`` of the gradient: ``vdot(G, jvp(x, e_i))``, for every input entry (at the
    inputs cast to float64 with ``promote``, as the check's loss sees them). Past
    ``deadline`` (``time.monotonic()``) it stops with :class:`CheckAborted`."""
    layout, base = setup.layout, setup.base
    if setup.options.promote is True:
        layout, base, _ = promote_to_float64(layout, base)
    # The jitter accepted between two calls: the check's own rule (nondet_tol, ulp floor).
    tol = jitter_bar(setup.options.nondet_tol, setup.eps)
    given = [a.copy() for a in base]
    tangents = [np.zeros_like(a) for a in base]
    cotangent = [np.asarray(g, np.float64).reshape(-1) for g in setup.cotangent]
    gradient = [np.empty(a.shape) for a in base]

    def call(p: int, j: int) -> Flat:
        where = f"at tangent e_i, i = {layout.names[p]!r} {list(unravel(j, base[p].shape))}"
        try:
            value = call_user(jvp, (layout.pack(given), layout.pack(tangents)), setup.static, "jvp")
        except GradCheckError:
            raise
        except Exception as exc:
            raise LossEvaluationError(
                f"jvp raised {type(exc).__name__} {where}: {exc}",
                param=layout.names[p],
                index=unravel(j, base[p].shape),
            ) from exc
        _unchanged(layout, given, base, tangents, p, j)
        flat = flatten(value, "jvp's output tangent", where, False)
        same_structure(flat, setup.out, "jvp's output tangent", where, False)
        return flat

    calls = 0
    for p, t in enumerate(tangents):
        flat_t = t.reshape(-1)
        for j in range(flat_t.size):
            if deadline is not None and time.monotonic() > deadline:
                raise CheckAborted(
                    f"time limit reached while building the gradient from jvp ({calls} of "
                    f"{sum(a.size for a in base) + 1} jvp calls made); raise `timeout` or "
                    "check fewer input entries.",
                    reason="timeout",
                )
            flat_t[j] = 1
            try:
                out = call(p, j)
                calls += 1
                if calls == 1:  # once: the same tangent twice must give the same result
                    _same_twice(out, call(p, j), tol)
                    calls += 1
            finally:
                flat_t[j] = 0
            gradient[p].reshape(-1)[j] = contract(out, cotangent, False, 1)
    return gradient, calls


def _unchanged(
    layout: ParamLayout,
    given: list[np.ndarray],
    base: list[np.ndarray],
    tangents: list[np.ndarray],
    p: int,
    j: int,
) -> None:
    changed = [
        n for n, a, b in zip(layout.names, given, base, strict=True) if not np.array_equal(a, b)
    ]
    nonzero = sum(int(np.count_nonzero(t)) for t in tangents)
    if changed or nonzero != 1 or tangents[p].reshape(-1)[j] != 1:
        what = f"the inputs {changed}" if changed else "the tangent"
        raise InvalidInputError(
            f"jvp: expected it to leave its arguments unchanged, found {what} modified after "
            "one call (an in-place update). gradprobe reuses them for every entry. Fix: work "
            "on copies or use out-of-place operations."
        )


def _same_twice(first: Flat, second: Flat, tol: float) -> None:
    for name, a, b in zip(first.layout.names, first.arrays, second.arrays, strict=True):
        scale = float(np.max(np.abs(a), initial=0.0))
        if not np.allclose(a, b, rtol=0.0, atol=tol * scale, equal_nan=True):
            raise StatefulGradientError(
                f"jvp: returned different output tangents ({name!r}) on two calls with the same "
                "inputs and tangent: it keeps state between calls (a buffer accumulated into) "
                "or is random. Fix: return a fresh array each call and fix random draws."
            )
