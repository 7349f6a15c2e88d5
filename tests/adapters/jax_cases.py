"""jax.numpy and jax.lax functions with sample inputs, for the jax peer suite (test_peer_jax.py).

Each :class:`Case` is a function and a builder of its arguments (numpy float64 arrays inside
the function's domain, seeded by the case's name, plus fixed non-float arguments). Inputs are
small (at most a few dozen entries) and away from the points where the function is not
differentiable, as op_db's samples are; the kinds of input and output real code holds are
among them: 0-d arrays, an empty array among others, lists of arrays, integer indices and
boolean masks, a masked ``-inf``, tuple and dict outputs, integer outputs and outputs behind
``stop_gradient``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
from jax import lax


@dataclass(frozen=True)
class Case:
    """``fn(*args)``; ``args(rng)`` builds the arguments (float64 numpy arrays are the checked
    ones); ``fixed``: positions the reference (check_grads) closes over instead of
    differentiating (a mask holding -inf, which its finite differences would turn to NaN);
    ``reference``: what check_grads checks instead of ``fn`` (the outputs autodiff
    differentiates, where ``fn`` also returns one behind ``stop_gradient``)."""

    name: str
    fn: Callable[..., Any]
    args: Callable[[np.random.Generator], tuple]
    fixed: tuple[int, ...] = field(default=())
    reference: Callable[..., Any] | None = None

    def build(self, dtype: Any) -> tuple:
        """The arguments, float arrays as jax arrays of ``dtype`` (make them under the x64
        setting they will be checked in)."""
        rng = np.random.default_rng(zlib.crc32(self.name.encode()))
        return tuple(_cast(a, dtype) for a in self.args(rng))


def _cast(a: Any, dtype: Any) -> Any:
    if isinstance(a, np.ndarray) and a.dtype == np.float64:
        return jnp.asarray(a.astype(dtype))
    if isinstance(a, list):
        return [_cast(x, dtype) for x in a]
    return a


def n(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    """Standard normal entries."""
    return lambda rng: rng.standard_normal(shape)


def u(low: float, high: float, *shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    """Uniform entries in ``[low, high)``."""
    return lambda rng: rng.uniform(low, high, shape)


def away(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    """Entries of either sign, at least 0.2 from zero (abs, sign-dependent kinks)."""
    return lambda rng: rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def well_conditioned(k: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.standard_normal((k, k)) + 3.0 * np.eye(k)


def args(*makers: Any) -> Callable[[np.random.Generator], tuple]:
    """The arguments from ``makers``: callables of the rng, or fixed values as they are."""
    return lambda rng: tuple(m(rng) if callable(m) else m for m in makers)


def _unary(name: str, fn: Callable[..., Any], maker: Any) -> Case:
    return Case(name, fn, args(maker))


MASK = np.array([0.0, -np.inf, 0.0, 0.0, -np.inf, 0.0])
IDX = np.array([3, 0, 2, 2])
SEGMENTS = np.array([0, 0, 1, 2, 2, 2])
BOOL = np.array([True, False, True, True, False, False])


def _scan(w, xs):
    def step(c, x):
        c = jnp.tanh(c * w + x)
        return c, c

    return lax.scan(step, jnp.zeros_like(w), xs)


def _max_pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2), (1, 2, 2), "VALID")


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME")


CASES: tuple[Case, ...] = (
    # elementwise, one input
    _unary("sin", jnp.sin, n(3, 4)),
    _unary("cos", jnp.cos, n(3, 4)),
    _unary("tan", jnp.tan, u(-1.2, 1.2, 6)),
    _unary("arcsin", jnp.arcsin, u(-0.8, 0.8, 6)),
    _unary("arccos", jnp.arccos, u(-0.8, 0.8, 6)),
    _unary("arctan", jnp.arctan, n(6)),
    _unary("sinh", jnp.sinh, n(6)),
    _unary("cosh", jnp.cosh, n(6)),
    _unary("tanh", jnp.tanh, n(3, 4)),
    _unary("arcsinh", jnp.arcsinh, n(6)),
    _unary("arccosh", jnp.arccosh, u(1.5, 3.0, 6)),
    _unary("arctanh", jnp.arctanh, u(-0.8, 0.8, 6)),
    _unary("exp", jnp.exp, n(3, 4)),
    _unary("exp2", jnp.exp2, n(6)),
    _unary("expm1", jnp.expm1, n(6)),
    _unary("log", jnp.log, u(0.5, 2.0, 3, 4)),
    _unary("log1p", jnp.log1p, u(-0.5, 2.0, 6)),
    _unary("log2", jnp.log2, u(0.5, 2.0, 6)),
    _unary("log10", jnp.log10, u(0.5, 2.0, 6)),
    _unary("sqrt", jnp.sqrt, u(0.5, 2.0, 6)),
    _unary("cbrt", jnp.cbrt, u(0.5, 2.0, 6)),
    _unary("reciprocal", jnp.reciprocal, u(0.5, 2.0, 6)),
    _unary("square", jnp.square, n(6)),
    _unary("abs", jnp.abs, away(6)),
    _unary("negative", jnp.negative, n(2, 3)),
    _unary("deg2rad", jnp.deg2rad, n(6)),
    _unary("sinc", jnp.sinc, away(6)),
    _unary("lax.rsqrt", lax.rsqrt, u(0.5, 2.0, 6)),
    _unary("lax.logistic", lax.logistic, n(6)),
    _unary("lax.erf", lax.erf, n(6)),
    _unary("lax.erfc", lax.erfc, n(6)),
    _unary("lax.erf_inv", lax.erf_inv, u(-0.8, 0.8, 6)),
    _unary("lax.lgamma", lax.lgamma, u(0.5, 3.0, 6)),
    _unary("lax.digamma", lax.digamma, u(0.5, 3.0, 6)),
    _unary("lax.integer_pow", lambda x: lax.integer_pow(x, 3), n(6)),
    _unary("nn.relu", jax.nn.relu, away(6)),
    _unary("nn.gelu", jax.nn.gelu, n(6)),
    _unary("nn.silu", jax.nn.silu, n(6)),
    _unary("nn.softplus", jax.nn.softplus, n(6)),
    _unary("nn.softmax", jax.nn.softmax, n(3, 4)),
    _unary("nn.log_softmax", jax.nn.log_softmax, n(3, 4)),
    _unary("nn.logsumexp", jax.nn.logsumexp, n(3, 4)),
    _unary("clip", lambda x: jnp.clip(x, -0.5, 0.5), away(6)),
    # elementwise, two inputs (broadcasting, 0-d)
    Case("add", jnp.add, args(n(3, 4), n(4))),
    Case("subtract", jnp.subtract, args(n(3, 4), n(3, 4))),
    Case("multiply 0-d", jnp.multiply, args(n(), n(5))),
    Case("divide", jnp.divide, args(n(6), u(0.5, 2.0, 6))),
    Case("power", jnp.power, args(u(0.5, 2.0, 6), n(6))),
    Case("arctan2", jnp.arctan2, args(n(6), n(6))),
    Case("hypot", jnp.hypot, args(away(6), away(6))),
    Case("maximum", jnp.maximum, args(n(6), n(6))),
    Case("minimum", jnp.minimum, args(n(6), n(6))),
    Case("logaddexp", jnp.logaddexp, args(n(6), n(6))),
    Case("remainder", jnp.remainder, args(u(0.1, 1.6, 6), 1.7)),
    Case("where", jnp.where, args(BOOL, n(6), n(6))),
    Case("lax.select", lax.select, args(BOOL, n(6), n(6))),
    # reductions and scans
    _unary("sum", lambda x: jnp.sum(x, axis=0), n(3, 4)),
    _unary("mean", jnp.mean, n(3, 4)),
    _unary("prod", lambda x: jnp.prod(x, axis=1), n(3, 4)),
    _unary("std", lambda x: jnp.std(x, axis=1), n(3, 4)),
    _unary("var", jnp.var, n(3, 4)),
    _unary("max", lambda x: jnp.max(x, axis=1), n(3, 4)),
    _unary("median", jnp.median, n(7)),
    _unary("cumsum", lambda x: jnp.cumsum(x, axis=1), n(3, 4)),
    _unary("cumprod", jnp.cumprod, n(6)),
    _unary("lax.cummax", lambda x: lax.cummax(x, axis=0), n(6)),
    _unary("lax.associative_scan", lambda x: lax.associative_scan(jnp.multiply, x), n(6)),
    _unary("diff", jnp.diff, n(6)),
    _unary("linalg.norm", jnp.linalg.norm, n(3, 4)),
    _unary("sort", jnp.sort, n(6)),
    # linear algebra
    Case("dot", jnp.dot, args(n(5), n(5))),
    Case("matmul", jnp.matmul, args(n(3, 4), n(4, 2))),
    Case("outer", jnp.outer, args(n(3), n(4))),
    Case("kron", jnp.kron, args(n(2, 2), n(2, 3))),
    Case("tensordot", lambda a, b: jnp.tensordot(a, b, 1), args(n(2, 3), n(3, 2))),
    Case("einsum", lambda a, b: jnp.einsum("ij,jk->ik", a, b), args(n(2, 3), n(3, 4))),
    Case("cross", jnp.cross, args(n(2, 3), n(2, 3))),
    Case("lax.dot_general", lambda a, b: lax.dot_general(a, b, (((1,), (0,)), ((), ()))),
         args(n(3, 4), n(4, 2))),
    _unary("trace", jnp.trace, n(4, 4)),
    _unary("triu", jnp.triu, n(4, 4)),
    _unary("diagonal", jnp.diagonal, n(3, 4)),
    _unary("linalg.det", jnp.linalg.det, well_conditioned(3)),
    _unary("linalg.slogdet", jnp.linalg.slogdet, well_conditioned(3)),
    _unary("linalg.inv", jnp.linalg.inv, well_conditioned(3)),
    Case("linalg.solve", jnp.linalg.solve, args(well_conditioned(3), n(3, 2))),
    _unary("linalg.pinv", jnp.linalg.pinv, well_conditioned(3)),
    _unary("linalg.matrix_power", lambda a: jnp.linalg.matrix_power(a, 3), n(3, 3)),
    _unary("linalg.cholesky", lambda a: jnp.linalg.cholesky(a @ a.T + 3.0 * jnp.eye(3)), n(3, 3)),
    _unary("linalg.eigvalsh", lambda a: jnp.linalg.eigvalsh(a + a.T), n(3, 3)),
    _unary("linalg.svd values", lambda a: jnp.linalg.svd(a, compute_uv=False), n(3, 4)),
    _unary("linalg.qr", jnp.linalg.qr, well_conditioned(3)),
    _unary("scipy.linalg.expm", jax.scipy.linalg.expm, lambda r: 0.3 * r.standard_normal((3, 3))),
    Case("polyval", jnp.polyval, args(n(4), n(5))),
    Case("convolve", jnp.convolve, args(n(6), n(3))),
    Case("lax.conv", _conv, args(n(1, 2, 5, 5), n(3, 2, 3, 3))),
    _unary("lax.reduce_window max", _max_pool, n(2, 4, 4)),
    # indexing, shapes, lists of arrays, control flow
    Case("take", lambda x, i: jnp.take(x, i), args(n(5), IDX)),
    Case("at add", lambda x, y, i: jnp.asarray(x).at[i].add(y), args(n(5), n(4), IDX)),
    Case("segment_sum", lambda x, s: jax.ops.segment_sum(x, s, num_segments=3),
         args(n(6), SEGMENTS)),
    Case("lax.dynamic_slice", lambda x: lax.dynamic_slice(x, (1, 0), (2, 3)), args(n(4, 3))),
    _unary("reshape transpose", lambda x: jnp.reshape(x, (4, 3)).T, n(3, 4)),
    _unary("flip roll", lambda x: jnp.roll(jnp.flip(x, 0), 2, 1), n(3, 4)),
    _unary("pad tile", lambda x: jnp.tile(jnp.pad(x, 1), 2), n(3)),
    Case("concatenate list", lambda xs: jnp.concatenate(xs), args(lambda r: [n(3)(r), n(2)(r)])),
    Case("stack list", lambda xs, w: jnp.stack(xs) * w, args(lambda r: [n(3)(r), n(3)(r)], n(3))),
    Case("empty among others", lambda x, e: jnp.concatenate([x, e]) * 2.0, args(n(4), np.zeros(0))),
    Case("masked -inf softmax", lambda x, m: jax.nn.softmax(x + m), args(n(6), MASK), fixed=(1,)),
    Case("lax.scan", _scan, args(n(3), n(4, 3))),
    Case("lax.fori_loop", lambda x, w: lax.fori_loop(0, 3, lambda i, c: jnp.sin(c) * w, x),
         args(n(4), n(4))),
    Case("lax.cond", lambda x: lax.cond(True, jnp.sin, jnp.cos, x), args(n(4))),
    _unary("lax.map", lambda x: lax.map(jnp.tanh, x), n(3, 2)),
    _unary("lax.top_k", lambda x: lax.top_k(x, 3), n(6)),
    # outputs of several kinds
    _unary("dict output", lambda x: {"s": jnp.sin(x), "c": jnp.cos(x)}, n(4)),
    _unary("integer output", lambda x: (jnp.tanh(x), jnp.argmax(x)), n(5)),
    Case("stop_gradient output", lambda x: (jnp.sin(x), lax.stop_gradient(x) * 2.0), args(n(4)),
         reference=jnp.sin),
)
