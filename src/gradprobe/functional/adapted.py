"""A framework function checked through the one reduction: what the PyTorch and JAX adapters
hand over, and the choice between a vectorized (vmap) and a per-entry loss.

An adapter (:mod:`gradprobe.frameworks`) keeps only what is the framework's: tensor conversion,
vmap and the framework's derivative call. It builds an :class:`Adapted` (numpy copies of the
checked inputs, the differentiable outputs at them, a forward and a backward over numpy
arrays) and calls :func:`check_adapted`, which runs :mod:`.reduction`'s setup and run, as
:func:`gradprobe.check_vjp` does: the same cotangent, settings, refusals and partial reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import GradCheckError, InvalidInputError
from ..report.model import Report
from .contraction import Backward, Contraction, Roles
from .reduction import Setup, prepare, run

#: Values of the adapters' ``vectorize=`` option.
VECTORIZE_CHOICES: tuple[Any, ...] = (True, False, "auto")

Arrays = Mapping[str, np.ndarray]


@dataclass
class Adapted:
    """A framework function of its checked inputs, over numpy arrays.

    ``base`` holds numpy copies of the checked inputs by name; ``value`` the differentiable
    outputs at ``base`` (the adapter evaluated them once; they are handed on, not evaluated
    again); ``forward(p)`` returns those outputs at ``p``; ``make_batched()`` returns the
    vmapped forward (inputs with one extra leading axis, outputs with it) or raises;
    ``backward(p, G)`` is the framework's VJP ``G^T J`` by name (zeros where the outputs do not
    depend on an input). ``settings`` (framework, device) and ``warnings`` go into the report;
    ``not_checked`` lists the inputs and outputs left out of the reduction, and why.
    ``stacks_points``: the vmapped forward also takes every input with the same leading axis
    at no extra cost (torch's vmap; jax would compile it once more), so points that move every
    input at once are evaluated in one call.
    """

    base: dict[str, np.ndarray]
    value: list[np.ndarray]
    forward: Callable[[Arrays], list[np.ndarray]]
    backward: Callable[[Arrays, list[np.ndarray]], dict[str, np.ndarray]]
    make_batched: Callable[[], Callable[[Arrays], list[np.ndarray]]]
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    #: Advice the report's warnings give, mapped to the form that works in the framework.
    advice: dict[str, str] = field(default_factory=dict)
    stacks_points: bool = False


@dataclass(frozen=True)
class Vectorization:
    """The forward a check runs and how: ``batched`` (vmap) or per entry, with the reason."""

    forward: Callable[[Any], Any]
    batched: bool
    setting: str
    warning: str | None = None


def framework_roles(api: str, backward: str, grad: str) -> Roles:
    """What the messages call the pieces of a framework check (``fn``, ``G``, its backward)."""
    return Roles(f="fn", vjp=backward, cotangent="G", api=api, grad=grad)


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


def short_error(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    if len(first) > 200:
        first = first[:197] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@contextmanager
def ours(doing: str) -> Iterator[None]:
    """Code of gradprobe's own (a conversion, never the user's function): an exception in it
    is reported as an internal error, not blamed on the function being checked."""
    try:
        yield
    except (GradCheckError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise GradCheckError(
            f"internal error in gradprobe while {doing} ({short_error(exc)}); this is not an "
            "error in the function being checked. Please report it to gradprobe's issue "
            "tracker with this traceback, the shapes and dtypes of the inputs, and the "
            "versions of gradprobe, numpy and the framework."
        ) from exc


def mapped_inputs(arrays: Sequence[np.ndarray]) -> list[bool]:
    """Which inputs of a batched call vmap maps over (leading axis 0); the others are passed
    without their size-1 leading axis. gradprobe's batched calls give the perturbed input B
    copies and the others one: map over the B copies, or over the first input when B is 1."""
    b = max(a.shape[0] for a in arrays)
    if b > 1:
        return [a.shape[0] == b for a in arrays]
    return [p == 0 for p in range(len(arrays))]


def _vectorization_problem(loss: Contraction, base: Arrays, setup: Setup) -> str | None:
    """Why the vmapped loss cannot stand in for the direct one at the base point, or None.

    One call per input, with two copies of it: both values must equal the direct loss (from
    the value handed on) within round-off (``sqrt(eps) * sum|G * fn(x)|``, far above a
    reordered sum and far below a function that vmap changes)."""
    direct = setup.value_loss
    allowed = float(np.sqrt(setup.eps)) * max(setup.magnitude, np.finfo(np.float64).tiny)
    for name in base:
        trial = {n: np.stack([a, a]) if n == name else a[np.newaxis] for n, a in base.items()}
        values = np.asarray(loss(trial), dtype=np.float64)
        if values.shape != (2,) or not np.all(np.abs(values - direct) <= allowed):
            return (
                f"vmap over {name!r} gave {values.tolist()} where the direct call gives "
                f"{direct!r} (allowed difference {allowed:.3g})"
            )
    return None


def choose(
    fn: Adapted, setup: Setup, vectorize: bool | str, vmap_name: str, roles: Roles
) -> Vectorization:
    """The vmapped forward when ``vectorize`` allows and it works at the base point, else the
    per-entry one (``vectorize="auto"``: with a warning that says why; ``True``: an error)."""
    if vectorize is False:
        return Vectorization(fn.forward, False, "off (vectorize=False): one call per entry")
    try:
        batched = fn.make_batched()
        loss = Contraction(batched, {}, setup.out, setup.cotangent, True, roles, private=True)
        problem = _vectorization_problem(loss, fn.base, setup)
    except Exception as exc:  # KeyboardInterrupt is not caught
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
        fn.forward,
        False,
        f"per entry ({vmap_name} failed)",
        f"vectorize: {vmap_name} could not be used ({problem}); the check ran one call per "
        "perturbed entry instead, which is slower but checks the same. Pass vectorize=False "
        "to skip the attempt.",
    )


def check_adapted(
    fn: Adapted,
    vectorize: bool | str,
    vmap_name: str,
    options: Mapping[str, Any],
    roles: Roles,
) -> Report:
    """Check ``fn``'s backward through the one reduction. The report's settings add
    ``vectorize`` (as asked) to the cotangent; its measurements the framework's facts
    (``fn.settings``: framework, device), the ``vectorization`` that ran and what was
    ``not_checked``."""
    if "batched" in options:
        raise InvalidInputError(
            f"batched: the adapter sets it; found batched={options['batched']!r}. Pass "
            "vectorize=True, False or 'auto' (vmap over the perturbed copies) instead."
        )
    setup = prepare(fn.forward, fn.base, None, None, options, roles, value=fn.value)
    vec = choose(fn, setup, vectorize, vmap_name, roles)
    loss = Contraction(
        vec.forward, {}, setup.out, setup.cotangent, vec.batched, roles, private=True
    )
    loss.stacks_points = vec.batched and fn.stacks_points
    grad = Backward(fn.backward, {}, setup.out, setup.cotangent, roles)
    notes = [*fn.warnings, *([] if vec.warning is None else [vec.warning])]
    if fn.not_checked:
        notes.append(f"not checked: {'; '.join(fn.not_checked)}.")
    report = run(
        loss,
        grad,
        fn.base,
        setup,
        roles,
        {**options, "batched": vec.batched},
        settings={
            **fn.settings,
            "vectorize": vectorize,
            "vectorization": vec.setting,
            "not_checked": list(fn.not_checked),
        },
        warnings=notes,
    )
    for said, works in fn.advice.items():  # e.g. JAX: the x64 switch before promote=True
        report = replace(report, warnings=tuple(w.replace(said, works) for w in report.warnings))
    return report
