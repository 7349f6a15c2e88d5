"""Check a JAX function against its VJP (a ``jax.custom_vjp`` or ``custom_jvp`` rule, or
autodiff's): :func:`check`.

Only what is JAX's lives here: array conversion, ``jax.jit``/``jax.vmap`` and ``jax.vjp``. The
reduction (``loss(x) = sum(G * fn(x))`` with a seeded standard-normal cotangent ``G``, its
options, settings and partial reports) is :mod:`gradprobe.functional.reduction`'s, shared with
:func:`gradprobe.check_vjp`. ``fn`` is jitted and evaluated in the inputs' dtype on their
device; with ``vectorize`` (default ``"auto"``) the perturbed copies go through
``jax.jit(jax.vmap(fn))``, B per call (B padded to a power of two, so few shapes are compiled).

Precision: JAX computes in float32 unless ``jax.config.update("jax_enable_x64", True)`` was
called before the arrays were made. float32 inputs are checked in float32 (gradprobe's float32
step and tolerance); float64 numpy inputs without x64 are refused rather than silently checked
in float32, and so is ``promote=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

try:
    import jax
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "gradprobe.jax needs JAX: pip install 'gradprobe[jax]' (or jax[cpu] itself).",
        name="jax",
    ) from exc

from ..checking.advice import PROMOTE_ADVICE
from ..errors import InvalidInputError, LossEvaluationError, raised_at_the_call
from ..functional.adapted import (
    Adapted,
    check_adapted,
    framework_roles,
    ours,
    short_error,
    validate_vectorize,
)
from ..layout import validate_callable
from ..report.model import Report
from ..tree import argument_names
from .inputs import Checked, checked_leaves, hold_fixed, leaf_names

#: What the report's settings call the vectorized path.
_X64 = 'jax.config.update("jax_enable_x64", True) at startup'
VMAP_NAME = "jax.vmap"
ROLES = framework_roles("gradprobe.jax.check", "fn's VJP", "jax.vjp(fn, *x)[1](G)")


@raised_at_the_call
def check(
    fn: Callable[..., Any],
    *inputs: Any,
    argnums: int | Sequence[int] | None = None,
    vectorize: bool | str = "auto",
    jit: bool = True,
    seed: int = 0,
    **check_options: Any,
) -> Report:
    """Check ``fn``'s VJP against finite differences of ``sum(G * fn(*inputs))`` with a seeded
    random cotangent ``G``.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs)`` returning an array or a pytree of arrays. Only the differentiable
        outputs enter the check: integer outputs and outputs that do not depend on the inputs
        through a differentiable path (``jax.lax.stop_gradient`` only) are left out and listed.
    *inputs : arrays and other arguments
        Passed to ``fn`` in order; jax or numpy floating-point arrays are checked, at the top
        level or inside lists and tuples, reported as ``input0``, ``input1[2]``... by
        position; other arguments are passed as they are. Empty arrays and non-finite entries
        are held fixed and listed.
    argnums : int or sequence of int, optional
        Check only these positions (as in ``jax.grad``). Default: every floating-point array.
    vectorize : True, False or "auto"
        Evaluate the perturbed copies with ``jax.vmap``, B per call. ``"auto"`` tries it once
        at the inputs and falls back to one call per entry, with a warning, when vmap cannot
        run ``fn`` (a ``pure_callback`` without ``vmap_method``...); ``True`` raises instead.
    jit : bool
        Evaluate ``fn`` and its VJP under ``jax.jit`` (default). A function that cannot be
        traced runs eagerly, with a warning.
    seed : int
        Seeds the cotangent ``G`` and gradprobe's sample and probes.
    **check_options
        Any option of :func:`gradprobe.check` except ``batched``.

    Returns
    -------
    Report
        One entry per checked input; ``report.settings`` records the cotangent and
        ``vectorize`` and ``jit`` as asked, ``report.measured`` the framework, x64, device,
        the ``vectorization`` that ran, ``jitted`` and what was ``not_checked``.

    Raises
    ------
    InvalidInputError
        Nothing to check, float64 inputs or ``promote=True`` without ``jax_enable_x64``,
        bfloat16 inputs, or a bad option.
    LossEvaluationError
        ``fn`` raised (at the inputs given, or at a perturbed entry, named).
    """
    validate_callable("fn", fn)
    vectorize = validate_vectorize(vectorize)
    x64 = bool(jax.config.read("jax_enable_x64"))
    if check_options.get("promote", "auto") == "auto" and not x64:
        # A float64 recheck needs x64: without it JAX would compute in float32 again.
        check_options = {**check_options, "promote": False}
    if check_options.get("promote") is True and not x64:
        raise InvalidInputError(
            "promote: True needs float64 in JAX, which is off; call "
            'jax.config.update("jax_enable_x64", True) at startup, or leave promote off to '
            "check in float32."
        )
    leaves, spec = jax.tree_util.tree_flatten(list(inputs))
    prefixes = argument_names(fn, len(inputs), "input")  # def f(x, w): "x", "w"
    names = leaf_names(inputs, jax.tree_util.tree_flatten, prefixes)
    checked = _checked(inputs, leaves, names, argnums, prefixes)

    def call(*xs: Any) -> Any:
        full = list(leaves)
        for i, x in zip(checked.positions, xs, strict=True):
            full[i] = x
        return fn(*jax.tree_util.tree_unflatten(spec, full))

    values = [leaves[i] for i in checked.positions]
    adapted = _adapt(call, checked, values, jit=bool(jit), x64=x64)
    adapted.settings["jit"] = bool(jit)  # as asked; measured["jitted"]: whether it traced
    return check_adapted(adapted, vectorize, VMAP_NAME, {"seed": seed, **check_options}, ROLES)


def _is_float_array(value: Any) -> bool:
    if isinstance(value, (jax.Array, np.ndarray)):
        return bool(np.issubdtype(value.dtype, np.floating)) or _is_bfloat16(value.dtype)
    return False


def _is_bfloat16(dtype: Any) -> bool:
    return str(dtype) == "bfloat16"


def _checked(
    inputs: Sequence[Any],
    leaves: Sequence[Any],
    names: Sequence[str],
    argnums: Any,
    prefixes: Sequence[str],
) -> Checked:
    """The leaves to check: those of the positions ``argnums``, or every floating-point one."""
    if argnums is None:
        return checked_leaves(
            leaves, names, _is_float_array, lambda a: True, "jax or numpy array"
        )
    wanted = [argnums] if isinstance(argnums, int) else list(argnums)
    for i in wanted:
        if not isinstance(i, int) or not -len(inputs) <= i < len(inputs):
            raise InvalidInputError(
                f"argnums: expected positions among the {len(inputs)} inputs, found {i!r}."
            )
    positions = sorted({i % len(inputs) for i in wanted})
    for i in positions:
        if not _is_float_array(inputs[i]):
            raise InvalidInputError(
                f"argnums: input {i} must be a floating-point array, found "
                f"{type(inputs[i]).__name__} {getattr(inputs[i], 'dtype', '')}".rstrip()
                + "."
            )
    chosen = [k for k, n in enumerate(names) if n.split("[")[0] in {prefixes[i] for i in positions}]
    return Checked(chosen, [names[k] for k in chosen])


def _as_numpy(name: str, value: Any, x64: bool) -> np.ndarray:
    if _is_bfloat16(value.dtype):
        raise InvalidInputError(
            f"input {name!r}: expected float16, float32 or float64, found bfloat16 (the "
            "perturbed values could not be represented in numpy's float types). Check the "
            "function in float32 (x.astype(jnp.float32))."
        )
    if np.dtype(value.dtype) == np.float64 and not x64:
        raise InvalidInputError(
            f"input {name!r}: expected float32 (JAX's float64 is off), found a float64 numpy "
            "array, which JAX would silently compute in float32. Call "
            'jax.config.update("jax_enable_x64", True) at startup to check in float64, or pass '
            "x.astype(np.float32) to check in float32."
        )
    return np.array(value, copy=True)


def _device(value: Any) -> Any:
    """The one device a jax array lives on (None for numpy and sharded arrays: default)."""
    if isinstance(value, jax.Array):
        devices = list(value.devices())
        return devices[0] if len(devices) == 1 else None
    return None


def _padded(b: int) -> int:
    """The next power of two: batched calls compile one shape per power, not per size."""
    return 1 << max(0, (b - 1).bit_length())


def _float_leaf(leaf: Any) -> bool:
    dtype = np.asarray(leaf).dtype if not hasattr(leaf, "dtype") else leaf.dtype
    if np.issubdtype(dtype, np.complexfloating):
        raise InvalidInputError(
            f"fn's output: expected real arrays, found dtype {dtype}. Return the real and "
            "imaginary parts to check a complex function."
        )
    return bool(np.issubdtype(dtype, np.floating)) or _is_bfloat16(dtype)


def _tangent_free(call: Callable[..., Any], xs: Sequence[Any]) -> list[bool]:
    """Which outputs of ``call`` at ``xs`` are left out: their tangent does not depend on the
    input tangents (read from the jaxpr of the JVP), and their value reaches the inputs only
    through ``stop_gradient`` (or not at all). An output whose value does depend on them with
    a zero tangent (``round``, ``floor``, ``sign``: piecewise constant) stays in: its zero
    derivative is what gets checked."""
    tangents = [np.zeros(np.shape(x), np.asarray(x).dtype) for x in xs]
    try:
        closed = jax.make_jaxpr(lambda *t: jax.jvp(call, tuple(xs), tuple(t))[1])(*tangents)
        primal = jax.make_jaxpr(call)(*xs)
    except Exception:
        return []  # undecided: every float output enters the reduction
    reached = set(closed.jaxpr.invars)
    for eqn in closed.jaxpr.eqns:
        if any(not hasattr(v, "val") and v in reached for v in eqn.invars):
            reached.update(eqn.outvars)
    free = [hasattr(v, "val") or v not in reached for v in closed.jaxpr.outvars]
    valued = _reached(primal.jaxpr, [True] * len(primal.jaxpr.invars))
    if len(valued) != len(free):
        return free
    return [f and not v for f, v in zip(free, valued, strict=True)]


def _reached(jaxpr: Any, live: Sequence[bool]) -> list[bool]:
    """Which outputs of ``jaxpr`` depend on its ``live`` inputs other than through
    ``stop_gradient`` (nested jit calls followed; other nested bodies taken as reaching)."""
    reached = {v for v, on in zip(jaxpr.invars, live, strict=True) if on}

    def hit(v: Any) -> bool:
        return not hasattr(v, "val") and v in reached

    for eqn in jaxpr.eqns:
        ins = [hit(v) for v in eqn.invars]
        if not any(ins) or eqn.primitive.name == "stop_gradient":
            continue
        inner = eqn.params.get("jaxpr")
        inner = getattr(inner, "jaxpr", inner)
        if inner is not None and hasattr(inner, "eqns") and len(inner.invars) == len(ins):
            outs = _reached(inner, ins)
            reached.update(v for v, on in zip(eqn.outvars, outs, strict=False) if on)
        else:
            reached.update(eqn.outvars)
    return [hit(v) for v in jaxpr.outvars]


def _adapt(
    call: Callable[..., Any], checked: Checked, values: Sequence[Any], *, jit: bool, x64: bool
) -> Adapted:
    devices = [_device(v) for v in values]
    held = hold_fixed({n: _as_numpy(n, v, x64) for n, v in zip(checked.names, values, strict=True)})
    live = list(held.base)
    notes: list[str] = []

    def arrays(host: Sequence[np.ndarray]) -> list[Any]:
        with ours("moving the inputs to jax"):
            return [jax.device_put(a, d) for a, d in zip(host, devices, strict=True)]

    def live_call(*xs: Any) -> Any:  # fn of the live inputs only, the held ones at their values
        full = iter(xs)
        return call(*(next(full) if n in held.base else held.original[n] for n in checked.names))

    with ours("preparing the inputs given"):
        at = arrays(held.arrays(held.base)[0])
    forward = jax.jit(call) if jit else call
    try:
        out = forward(*at)
    except Exception as exc:
        try:
            out = call(*at)
        except (InvalidInputError, KeyboardInterrupt):
            raise
        except Exception as exc2:
            raise LossEvaluationError(
                f"fn raised {short_error(exc2)} at the inputs given (before any perturbation)."
            ) from exc2
        jit, forward = False, call
        notes.append(
            f"jit: jax.jit could not trace fn ({short_error(exc)}); it was evaluated eagerly, "
            "which is slower, and not vectorized. Pass jit=False to skip the attempt."
        )
    leaves, treedef = jax.tree_util.tree_flatten(out)
    free = _tangent_free(call, at) if jit else []
    keep, dropped = [], []
    for k, leaf in enumerate(leaves):
        if not _float_leaf(leaf):
            dropped.append(f"output {k} ({np.asarray(leaf).dtype}: not differentiable)")
        elif free and free[k]:
            dropped.append(
                f"output {k} (does not depend on the inputs, or through stop_gradient only)"
            )
        elif np.size(leaf) == 0:
            dropped.append(f"output {k} (empty, shape {np.shape(leaf)})")
        else:
            keep.append(k)
    if not keep:
        raise InvalidInputError(
            "fn's output: expected a floating-point array that depends on the inputs (or a "
            "pytree of them), found none"
            + (f" ({'; '.join(dropped)})" if dropped else "")
            + "; nothing to check."
        )

    def selected(out: Any) -> list[Any]:
        found, tree = jax.tree_util.tree_flatten(out)
        if tree != treedef:
            raise InvalidInputError(
                f"fn's output: expected the structure {treedef} (as at the inputs given), "
                f"found {tree}; it must not depend on the input values."
            )
        return [found[k] for k in keep]

    def host(leaves: Sequence[Any]) -> list[np.ndarray]:
        with ours("reading fn's outputs from jax"):
            return [np.array(leaf, copy=True) for leaf in leaves]

    def forward_np(params: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return host(selected(forward(*arrays(held.arrays(params)[0]))))

    vmapped: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def make_batched() -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
        if not jit:
            raise RuntimeError("fn cannot be traced by jax.jit, so neither by jax.vmap")

        def batched(params: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            if all(a.shape[0] == 1 for a in params.values()):
                # One copy (the pre-flight's points): the jitted direct call, compiled for the
                # value at the inputs already, instead of one more vmap compilation.
                return [o[np.newaxis] for o in forward_np({n: a[0] for n, a in params.items()})]
            full, mapped = held.arrays(params, batched=True)
            b = max(a.shape[0] for a, m in zip(full, mapped, strict=True) if m)
            padded = _padded(b)
            with ours("padding the batch"):  # extra rows repeat the first; they are dropped
                full = [
                    np.concatenate([a, np.repeat(a[:1], padded - b, axis=0)]) if m else a
                    for a, m in zip(full, mapped, strict=True)
                ]
            in_axes = tuple(0 if m else None for m in mapped)
            fun = vmapped.get(in_axes)
            if fun is None:
                fun = vmapped[in_axes] = jax.jit(
                    jax.vmap(lambda *x: selected(call(*x)), in_axes=in_axes)
                )
            return [a[:b] for a in host(fun(*arrays(full)))]

        return batched

    def vjp(xs: Sequence[Any], cot: Sequence[Any]) -> Any:
        primal, pullback = jax.vjp(live_call, *xs)
        out_leaves = jax.tree_util.tree_leaves(primal)
        full, given = [], iter(cot)
        for k, leaf in enumerate(out_leaves):
            if k in keep:
                full.append(next(given))
            elif _float_leaf(leaf):
                full.append(jax.numpy.zeros_like(leaf))
            else:
                full.append(np.zeros(np.shape(leaf), dtype=jax.dtypes.float0))
        return pullback(jax.tree_util.tree_unflatten(treedef, full))

    pull = jax.jit(vjp) if jit else vjp

    def backward(params: Mapping[str, np.ndarray], cotangent: list[np.ndarray]) -> dict:
        xs = [
            x
            for n, x in zip(checked.names, arrays(held.arrays(params)[0]), strict=True)
            if n in held.base
        ]
        grads = pull(xs, [np.array(g, copy=True) for g in cotangent])
        with ours("reading the gradients from jax"):
            return held.gradient(
                {n: np.array(g, copy=True) for n, g in zip(live, grads, strict=True)}
            )

    devs = sorted({str(d) for d in devices if d is not None}) or [str(jax.devices()[0])]
    return Adapted(
        base=held.base,
        value=host(selected(out)),
        forward=forward_np,
        backward=backward,
        make_batched=make_batched,
        settings={
            "framework": f"jax {jax.__version__}",
            "device": devs[0] if len(devs) == 1 else devs,
            "x64": x64,
            "jitted": jit,
        },
        warnings=notes,
        not_checked=[*held.notes, *dropped],
        advice={}
        if x64
        else {PROMOTE_ADVICE: f"call {_X64}, then promote=True checks them in float64"},
    )
