"""Check a JAX function against its VJP (a ``jax.custom_vjp`` or ``custom_jvp`` rule, or
autodiff's): :func:`check`.

The checked scalar is ``loss(x) = sum(G * fn(x))`` with ``G`` a seeded standard-normal
cotangent; its analytic gradient is ``jax.vjp(fn, *x)[1](G)`` and its numeric one comes from
:func:`gradprobe.check`'s finite differences of the jitted ``fn``, evaluated in the inputs'
dtype on their device (the weighted sum is taken in float64 on the host). With ``vectorize``
(default ``"auto"``) the perturbed copies go through ``jax.jit(jax.vmap(fn))``, B per call
(B padded to a power of two, so few shapes are compiled).

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
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "gradprobe.jax needs JAX: pip install 'gradprobe[jax]' (or jax[cpu] itself).",
        name="jax",
    ) from exc

from .adapter import (
    adapter_options,
    cotangents,
    mapped_inputs,
    run_check,
    short_error,
    validate_vectorize,
)
from .api import PROMOTE_ADVICE
from .errors import InvalidInputError, LossEvaluationError, raised_at_the_call
from .layout import argument_names, validate_callable
from .report.model import Report

__all__ = ["check"]

#: What the report's settings call the vectorized path.
VMAP_NAME = "jax.vmap"


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
        ``fn(*inputs)`` returning an array or a pytree of arrays (non-float leaves are ignored).
    *inputs : arrays and other arguments
        Passed to ``fn`` in order; jax or numpy floating-point arrays are checked, reported as
        ``input0``, ``input1``... by position; other arguments are passed as they are.
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
        One entry per checked input; ``report.settings`` records the framework, x64, device,
        cotangent and vectorization.

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
    options = adapter_options({"seed": seed, **check_options})
    checked = _checked_positions(inputs, argnums)
    x64 = bool(jax.config.read("jax_enable_x64"))
    if options.get("promote") and not x64:
        raise InvalidInputError(
            "promote: True needs float64 in JAX, which is off; call "
            'jax.config.update("jax_enable_x64", True) at startup, or leave promote off to '
            "check in float32."
        )
    args = list(inputs)

    def call(*xs: Any) -> Any:
        full = list(args)
        for i, x in zip(checked, xs, strict=True):
            full[i] = x
        return fn(*full)

    every = argument_names(fn, len(inputs), "input")  # def f(x, w): "x", "w"
    names = [every[i] for i in checked]
    adapted = _JaxFunction(call, names, [inputs[i] for i in checked], seed, jit=bool(jit), x64=x64)
    return run_check(adapted, vectorize, VMAP_NAME, options, adapted.settings(seed))


def _is_float_array(value: Any) -> bool:
    if isinstance(value, jax.Array) or isinstance(value, np.ndarray):
        return bool(np.issubdtype(value.dtype, np.floating)) or _is_bfloat16(value.dtype)
    return False


def _is_bfloat16(dtype: Any) -> bool:
    return str(dtype) == "bfloat16"


def _checked_positions(inputs: Sequence[Any], argnums: int | Sequence[int] | None) -> list[int]:
    """The positions to check: ``argnums``, or every floating-point array."""
    if argnums is None:
        found = [i for i, a in enumerate(inputs) if _is_float_array(a)]
        if not found:
            raise InvalidInputError(
                f"inputs: expected at least one floating-point jax or numpy array to check, "
                f"found {[type(a).__name__ for a in inputs]}. Pass the arrays fn differentiates."
            )
        return found
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
    return positions


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


class _JaxFunction:
    """``fn`` of the checked arrays as gradprobe sees it: a loss over numpy copies, its vmapped
    form, and ``jax.vjp`` (see :class:`gradprobe.adapter.AdaptedFunction`)."""

    def __init__(
        self,
        call: Callable[..., Any],
        names: Sequence[str],
        values: Sequence[Any],
        seed: int,
        *,
        jit: bool,
        x64: bool,
    ) -> None:
        self.call, self.names, self.x64 = call, list(names), x64
        self.warnings: list[str] = []
        # promote=True is refused without x64 (see check): the float32 warning says what works.
        switch = 'jax.config.update("jax_enable_x64", True) at startup'
        self.promote_advice = (
            {}
            if x64
            else {
                PROMOTE_ADVICE: f"call {switch}, then promote=True checks them in float64",
                "(promote=True)": f"({switch}, then promote=True)",
            }
        )
        self.devices = [_device(v) for v in values]
        self.base = {n: _as_numpy(n, v, x64) for n, v in zip(self.names, values, strict=True)}
        self.jit = jit
        self.forward = self._traced(jax.jit(call)) if jit else call
        try:
            out = self.forward(*self._arrays(self.base))
        except (InvalidInputError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise LossEvaluationError(
                f"fn raised {short_error(exc)} at the inputs given (before any perturbation)."
            ) from exc
        leaves, self.treedef = jax.tree_util.tree_flatten(out)
        self.is_float = [_float_leaf(leaf) for leaf in leaves]
        floats = [np.asarray(leaf) for leaf, f in zip(leaves, self.is_float, strict=True) if f]
        if not floats:
            raise InvalidInputError(
                "fn's output: expected a floating-point array (or a pytree of them), found "
                "none; nothing to check."
            )
        # G rounded to each output's dtype, so jax.vjp and the loss use the same values.
        drawn = cotangents(seed, [leaf.shape for leaf in floats])
        self.cot_cast = [g.astype(leaf.dtype) for g, leaf in zip(drawn, floats, strict=True)]
        self.cotangent = [g.astype(np.float64) for g in self.cot_cast]
        self.magnitude = float(
            sum(
                np.abs(g * leaf.astype(np.float64)).sum()
                for g, leaf in zip(self.cotangent, floats, strict=True)
            )
        )
        self.eps = max(float(jnp.finfo(leaf.dtype).eps) for leaf in floats)
        self.vjp = self._make_vjp([np.asarray(leaf) for leaf in leaves])
        self._vmapped: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def _traced(self, jitted: Callable[..., Any]) -> Callable[..., Any]:
        """``jitted`` when ``fn`` traces at the base point, else ``fn`` itself (a warning)."""
        try:
            jitted(*self._arrays(self.base))
        except Exception as exc:
            try:
                self.call(*self._arrays(self.base))
            except Exception:
                return jitted  # fails eagerly too: the caller reports it
            self.jit = False
            self.warnings.append(
                f"jit: jax.jit could not trace fn ({short_error(exc)}); it was evaluated "
                "eagerly, which is slower, and not vectorized. Pass jit=False to skip the "
                "attempt."
            )
            return self.call
        return jitted

    def settings(self, seed: int) -> dict[str, Any]:
        devices = sorted({str(d) for d in self.devices if d is not None}) or [str(jax.devices()[0])]
        return {
            "framework": f"jax {jax.__version__}",
            "device": devices[0] if len(devices) == 1 else devices,
            "x64": self.x64,
            "jit": self.jit,
            "cotangent": f"standard normal, seed {seed}: loss = sum(G * fn(x))",
        }

    def _array(self, p: int, array: np.ndarray) -> Any:
        return jax.device_put(array, self.devices[p])  # None: the default device

    def _arrays(self, params: Mapping[str, np.ndarray]) -> list[Any]:
        return [self._array(p, params[n]) for p, n in enumerate(self.names)]

    def _float_leaves(self, out: Any) -> list[np.ndarray]:
        leaves, treedef = jax.tree_util.tree_flatten(out)
        if treedef != self.treedef:
            raise InvalidInputError(
                f"fn's output: expected the structure {self.treedef} (as at the inputs given), "
                f"found {treedef}; it must not depend on the input values."
            )
        return [np.asarray(leaf) for leaf, f in zip(leaves, self.is_float, strict=True) if f]

    def loss(self, params: Mapping[str, np.ndarray]) -> float:
        total = 0.0
        for g, leaf in zip(
            self.cotangent, self._float_leaves(self.forward(*self._arrays(params))), strict=True
        ):
            if leaf.shape != g.shape:
                raise InvalidInputError(
                    f"fn's output: expected shape {g.shape} (as at the inputs given), found "
                    f"{leaf.shape}."
                )
            total += float(np.sum(g * leaf.astype(np.float64)))
        return total

    def make_batched_loss(self) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
        if not self.jit:
            raise RuntimeError("fn cannot be traced by jax.jit, so neither by jax.vmap")

        def batched(params: Mapping[str, np.ndarray]) -> np.ndarray:
            arrays = [params[n] for n in self.names]
            b = max(a.shape[0] for a in arrays)
            mapped = mapped_inputs(arrays)
            padded = _padded(b)
            xs = []
            for p, (a, m) in enumerate(zip(arrays, mapped, strict=True)):
                if m and padded > b:  # extra rows repeat the first; their losses are dropped
                    a = np.concatenate([a, np.repeat(a[:1], padded - b, axis=0)])
                xs.append(self._array(p, a if m else a[0]))
            in_axes = tuple(0 if m else None for m in mapped)
            fun = self._vmapped.get(in_axes)
            if fun is None:
                fun = self._vmapped[in_axes] = jax.jit(jax.vmap(self.call, in_axes=in_axes))
            total = np.zeros(b)
            for g, leaf in zip(self.cotangent, self._float_leaves(fun(*xs)), strict=True):
                if leaf.shape[1:] != g.shape:
                    raise InvalidInputError(
                        f"fn's output: expected shape {g.shape} (as at the inputs given), found "
                        f"{leaf.shape[1:]} under vmap."
                    )
                total += (g * leaf[:b].astype(np.float64)).reshape(b, -1).sum(axis=1)
            return total

        return batched

    def _make_vjp(self, leaves: Sequence[np.ndarray]) -> Callable[..., Any]:
        casts = iter(self.cot_cast)
        cot_leaves = [
            next(casts) if f else np.zeros(leaf.shape, dtype=jax.dtypes.float0)
            for leaf, f in zip(leaves, self.is_float, strict=True)
        ]
        cot = jax.tree_util.tree_unflatten(self.treedef, cot_leaves)

        def vjp(*xs: Any) -> Any:
            return jax.vjp(self.call, *xs)[1](cot)

        return jax.jit(vjp) if self.jit else vjp

    def grad(self, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        grads = self.vjp(*self._arrays(params))
        return {n: np.asarray(g) for n, g in zip(self.names, grads, strict=True)}


def _float_leaf(leaf: Any) -> bool:
    dtype = np.asarray(leaf).dtype if not hasattr(leaf, "dtype") else leaf.dtype
    if np.issubdtype(dtype, np.complexfloating):
        raise InvalidInputError(
            f"fn's output: expected real arrays, found dtype {dtype}. Return the real and "
            "imaginary parts to check a complex function."
        )
    return bool(np.issubdtype(dtype, np.floating)) or _is_bfloat16(dtype)
