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
from ..evaluate.backends import workers_for
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


class CheckedVmap:
    """The vmapped forward of an adapter whose vmap takes any inputs stacked, each pattern of
    mapped inputs verified at its first call, in that call: one more row, at the base point,
    whose loss must equal the direct one within round-off (as :func:`_vectorization_problem`
    requires), at no extra call. Where vmap fails (raises or disagrees) for a pattern, its
    rows run one direct call each from then on (``failed``: why, by the inputs mapped, for
    the report's warning)."""

    def __init__(self, batched: Callable, forward: Callable, setup: Setup, base: Arrays) -> None:
        self.batched, self.forward, self.setup, self.base = batched, forward, setup, base
        self.cotangent = [np.asarray(g, np.float64).reshape(-1) for g in setup.cotangent]
        self.verified: set[frozenset[str]] = set()
        self.failed: dict[frozenset[str], str] = {}

    def report_failures(self, report: Report, vmap_name: str, at: int) -> Report:
        """``report`` saying where vmap failed (its vectorization setting, and a warning
        inserted at ``at``, after the adapter's own); unchanged where it never did."""
        if not self.failed:
            return report
        if len(self.failed) == len(self.verified):
            setting = f"per entry ({vmap_name} failed)"
            instead = "the check ran one call per perturbed entry"
        else:
            over = " and ".join(self._inputs(k) for k in self.failed)
            setting = f"{report.measured['vectorization']}; one call per copy over {over}"
            instead = f"over {over} the check ran one call per perturbed copy"
        problem = next(iter(self.failed.values()))
        warnings = list(report.warnings)
        warnings.insert(at, _fallback_warning(vmap_name, problem, instead))
        return replace(
            report,
            settings={**report.settings, "vectorization": setting},
            warnings=tuple(warnings),
        )

    def _inputs(self, mapped: frozenset[str]) -> str:
        if len(mapped) == len(self.base) > 1:
            return "every input at once"
        return ", ".join(repr(n) for n in self.base if n in mapped)

    def __call__(self, params: Arrays) -> list[np.ndarray]:
        b = max(a.shape[0] for a in params.values())
        if b == 1:
            return self.batched(params)
        mapped = tuple(n for n, a in params.items() if a.shape[0] == b)
        key = frozenset(mapped)
        if key not in self.verified:
            self.verified.add(key)
            extended = {
                n: np.concatenate([a, self.base[n][np.newaxis]]) if n in mapped else a
                for n, a in params.items()
            }
            try:
                outs = self.batched(extended)
                problem = self._problem(outs, self._inputs(key))
            except GradCheckError:  # a time limit, gradprobe's own refusal: not vmap's doing
                self.verified.discard(key)
                raise
            except Exception as exc:  # KeyboardInterrupt is not caught
                problem = f"it raised {short_error(exc)}"
            if problem is None:
                return [o[:-1] for o in outs]
            self.failed[key] = problem
        if key in self.failed:
            rows = [
                self.forward({n: a[r] if a.shape[0] == b else a[0] for n, a in params.items()})
                for r in range(b)
            ]
            return [np.stack(outs) for outs in zip(*rows, strict=True)]
        return self.batched(params)

    def _problem(self, outs: Sequence[np.ndarray], over: str) -> str | None:
        setup = self.setup
        value = sum(
            float(np.asarray(o[-1], np.float64).reshape(-1) @ g)
            for o, g in zip(outs, self.cotangent, strict=True)
        )
        allowed = float(np.sqrt(setup.eps)) * max(setup.magnitude, np.finfo(np.float64).tiny)
        if abs(value - setup.value_loss) <= allowed:
            return None
        return (
            f"vmap over {over} gave {value!r} at the inputs where the direct call gives "
            f"{setup.value_loss!r} (allowed difference {allowed:.3g})"
        )


def choose(
    fn: Adapted, setup: Setup, vectorize: bool | str, vmap_name: str, roles: Roles
) -> Vectorization:
    """The vmapped forward when ``vectorize`` allows and it works at the base point, else the
    per-entry one (``vectorize="auto"``: with a warning that says why; ``True``: an error).

    An adapter whose vmap takes any inputs stacked (``stacks_points``), under
    ``vectorize="auto"`` in this process, is verified in its calls, each pattern of mapped
    inputs at its first (:class:`CheckedVmap`: no call of its own); otherwise every input
    alone is verified now, one call each (``vectorize=True`` fails here, not mid-check)."""
    if vectorize is False:
        return Vectorization(fn.forward, False, "off (vectorize=False): one call per entry")
    if fn.stacks_points and vectorize == "auto" and _in_process(setup):
        try:
            checked = CheckedVmap(fn.make_batched(), fn.forward, setup, fn.base)
        except Exception:  # KeyboardInterrupt is not caught
            pass  # verified below, which says why
        else:
            return Vectorization(checked, True, f"{vmap_name}: B perturbed copies per call")
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
        _fallback_warning(vmap_name, problem, "the check ran one call per perturbed entry"),
    )


def _fallback_warning(vmap_name: str, problem: str, instead: str) -> str:
    return (
        f"vectorize: {vmap_name} could not be used ({problem}); {instead} instead, which is "
        "slower but checks the same. Pass vectorize=False to skip the attempt."
    )


def _in_process(setup: Setup) -> bool:
    """Whether the check's batched calls all run in this process (workers would verify a
    pattern each, out of the report's sight)."""
    n_jobs = setup.options.n_jobs
    return n_jobs == "auto" or workers_for(n_jobs) < 2


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
    # Stacked calls (the noise estimate's points, every input's first blocks) in every
    # placement alike, so that the report is the same whatever n_jobs.
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
        found=None if not isinstance(vec.forward, CheckedVmap) else (
            lambda report: vec.forward.report_failures(report, vmap_name, len(fn.warnings))
        ),
    )
    for said, works in fn.advice.items():  # e.g. JAX: the x64 switch before promote=True
        report = replace(report, warnings=tuple(w.replace(said, works) for w in report.warnings))
    return report
