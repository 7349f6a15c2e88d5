"""A gradient check as a value: :class:`Problem` holds what one of gradprobe's checks needs.

Suites and the command line load checks from files as module-level functions returning a
``Problem``; ``problem.run(**overrides)`` runs it with the suite's options merged over its own.
Every kind of check has one (:data:`KINDS`): ``Problem(loss=, grad=, params=)`` for
:func:`gradprobe.check`, and ``Problem.vjp``, ``.jvp``, ``.hvp``, ``.layer``, ``.torch`` and
``.jax`` for :func:`gradprobe.check_vjp`, ``check_jvp``, ``check_hvp``, ``check_layer``,
``gradprobe.torch.check`` and ``gradprobe.jax.check``. All run the same way in a suite: same
outcomes, outputs, baselines and reproduce lines. The framework adapters are imported by their
public names (``gradprobe.torch``, ``gradprobe.jax``) only when such a problem runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import InvalidInputError, raised_at_the_call
from ..report.model import Report


@dataclass(frozen=True)
class Kind:
    """One kind of check: the function that runs it and what it takes besides the options.

    Attributes
    ----------
    name : str
        The kind (``problem.kind``).
    module, function : str
        Where the check function lives (imported when the problem runs).
    positional : tuple of str
        Its leading positional arguments, by name (for messages).
    keywords : tuple of str
        Its own keyword arguments that are not options of :func:`gradprobe.check`.
    varargs : bool
        It takes ``*inputs`` after the positional arguments (the framework adapters).
    """

    name: str
    module: str
    function: str
    positional: tuple[str, ...]
    keywords: tuple[str, ...] = ()
    varargs: bool = False

    @property
    def label(self) -> str:
        """The public name of the check function (``gradprobe.check_vjp``)."""
        if self.module == "gradprobe":
            return f"gradprobe.{self.function}"
        return f"{self.module}.{self.function}"

    def runner(self) -> Callable[..., Report]:
        return getattr(importlib.import_module(self.module), self.function)  # type: ignore[no-any-return]


_VJP_KEYS = ("static", "cotangent_seed")

#: Every kind of check a Problem can hold, by ``problem.kind``.
KINDS: Mapping[str, Kind] = MappingProxyType(
    {
        k.name: k
        for k in (
            Kind("check", "gradprobe", "check", ("loss", "grad", "params")),
            Kind("vjp", "gradprobe", "check_vjp", ("f", "vjp", "inputs"), _VJP_KEYS),
            Kind("jvp", "gradprobe", "check_jvp", ("f", "jvp", "inputs"), _VJP_KEYS),
            Kind("hvp", "gradprobe", "check_hvp", ("grad", "hvp", "params"), _VJP_KEYS),
            Kind(
                "layer",
                "gradprobe",
                "check_layer",
                ("layer", "x"),
                ("params", "grads", "forward", "backward", "check_input", *_VJP_KEYS),
            ),
            Kind("torch", "gradprobe.torch", "check", ("fn",), ("vectorize",), varargs=True),
            Kind(
                "jax",
                "gradprobe.jax",
                "check",
                ("fn",),
                ("argnums", "vectorize", "jit"),
                varargs=True,
            ),
        )
    }
)


def _validate_option_names(options: Mapping[str, Any], where: str) -> None:
    from ..options import OPTION_NAMES  # loaded on first use: `import gradprobe` stays cheap

    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise InvalidInputError(
            f"{where}: unknown option(s) {unknown}; gradprobe.check accepts "
            f"{list(OPTION_NAMES)}. Fix the spelling or remove them."
        )


class Problem:
    """One check of any kind, with its options: what a suite's target function returns.

    ``Problem(loss=..., grad=..., params=..., **options)`` is a :func:`gradprobe.check`;
    ``Problem.vjp(f, vjp, inputs, ...)``, ``Problem.jvp``, ``Problem.hvp``, ``Problem.layer``,
    ``Problem.torch(fn, *inputs, ...)`` and ``Problem.jax(fn, *inputs, ...)`` hold the other
    kinds (``Problem.of(kind, ...)`` is the same by name). ``options`` are keyword options of
    :func:`gradprobe.check` (``seed``, ``samples``, ``eps``, ``rtol``, ``atol``, ``method``,
    ``n_jobs``, ``timeout``, ``budget``, ``backend``...); option names and each kind's own
    keywords are checked here, values when the problem runs. Immutable.

    Parameters
    ----------
    loss : callable
        ``loss(params) -> float``.
    grad : callable or container
        The hand-written gradient function, or the gradient at ``params``.
    params : mapping, sequence or ndarray
        The point at which to check (never modified).
    name : str, optional
        A label for reports (the suite uses the check's name instead).
    **options
        Options of :func:`gradprobe.check`.

    Attributes
    ----------
    kind : str
        A key of :data:`KINDS`: ``"check"``, ``"vjp"``, ``"jvp"``, ``"hvp"``, ``"layer"``,
        ``"torch"`` or ``"jax"``.
    args : tuple
        The check function's positional arguments (``(loss, grad, params)`` for ``"check"``).
    keywords : mapping
        Its own keyword arguments (``static``, ``cotangent_seed``, ``vectorize``...).
    options : mapping
        The options of :func:`gradprobe.check`.

    Examples
    --------
    >>> def make_quadratic():                       # doctest: +SKIP
    ...     x = np.ones(3)
    ...     return gradprobe.Problem(loss=lambda v: v @ v, grad=lambda v: 2 * v, params=x)
    >>> def make_dense():                           # doctest: +SKIP
    ...     return gradprobe.Problem.layer(Dense(), x, params=["W", "b"], samples=32)
    """

    __slots__ = ("args", "keywords", "kind", "name", "options")

    kind: str
    args: tuple[Any, ...]
    keywords: Mapping[str, Any]
    name: str | None
    options: Mapping[str, Any]

    def __init__(
        self,
        *,
        loss: Callable[[Any], Any],
        grad: Any,
        params: Any,
        name: str | None = None,
        **options: Any,
    ) -> None:
        if not callable(loss):
            raise InvalidInputError(
                f"Problem loss: expected a callable loss(params) -> float, found "
                f"{type(loss).__name__}."
            )
        self._set("check", (loss, grad, params), {}, name, options)

    def _set(
        self,
        kind: str,
        args: tuple[Any, ...],
        keywords: Mapping[str, Any],
        name: str | None,
        options: Mapping[str, Any],
    ) -> None:
        if name is not None and not isinstance(name, str):
            raise InvalidInputError(f"Problem name: expected a str or None, found {name!r}.")
        _validate_option_names(options, f"Problem.{kind}" if kind != "check" else "Problem")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "args", tuple(args))
        object.__setattr__(self, "keywords", MappingProxyType(dict(keywords)))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "options", MappingProxyType(dict(options)))

    # -- the kinds --------------------------------------------------------------------------
    @classmethod
    def of(cls, kind: str, *args: Any, name: str | None = None, **kwargs: Any) -> Problem:
        """A problem of ``kind`` (a key of :data:`KINDS`): ``args`` and ``kwargs`` as the
        kind's check function takes them (its own keywords and gradprobe.check's options)."""
        spec = KINDS.get(kind) if isinstance(kind, str) else None
        if spec is None:
            raise InvalidInputError(f"Problem kind: expected one of {list(KINDS)}, found {kind!r}.")
        need = len(spec.positional)
        if len(args) < need or (len(args) > need and not spec.varargs):
            count = f"{need}{' or more' if spec.varargs else ''}"
            raise InvalidInputError(
                f"Problem.{kind}: expected {count} positional argument(s) "
                f"({', '.join(spec.positional)}{', *inputs' if spec.varargs else ''}) as for "
                f"{spec.label}, found {len(args)}."
            )
        if kind == "check":
            loss, grad, params = args
            return cls(loss=loss, grad=grad, params=params, name=name, **kwargs)
        from ..options import OPTION_NAMES

        own = {k: v for k, v in kwargs.items() if k in spec.keywords}
        options = {k: v for k, v in kwargs.items() if k not in spec.keywords}
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise InvalidInputError(
                f"Problem.{kind}: unknown keyword(s) {unknown}; {spec.label} takes "
                f"{list(spec.keywords)} and the options of gradprobe.check "
                f"{list(OPTION_NAMES)}. Fix the spelling or remove them."
            )
        if not callable(args[0]) and kind != "layer":
            raise InvalidInputError(
                f"Problem.{kind} {spec.positional[0]}: expected a callable, found "
                f"{type(args[0]).__name__}."
            )
        problem = object.__new__(cls)
        problem._set(kind, args, own, name, options)
        return problem

    @classmethod
    def vjp(cls, f: Any, vjp: Any, inputs: Any, **kwargs: Any) -> Problem:
        """A :func:`gradprobe.check_vjp` (``static=``, ``cotangent_seed=``, options)."""
        return cls.of("vjp", f, vjp, inputs, **kwargs)

    @classmethod
    def jvp(cls, f: Any, jvp: Any, inputs: Any, **kwargs: Any) -> Problem:
        """A :func:`gradprobe.check_jvp` (``static=``, ``cotangent_seed=``, options)."""
        return cls.of("jvp", f, jvp, inputs, **kwargs)

    @classmethod
    def hvp(cls, grad: Any, hvp: Any, params: Any, **kwargs: Any) -> Problem:
        """A :func:`gradprobe.check_hvp` (``static=``, ``cotangent_seed=``, options)."""
        return cls.of("hvp", grad, hvp, params, **kwargs)

    @classmethod
    def layer(cls, layer: Any, x: Any, **kwargs: Any) -> Problem:
        """A :func:`gradprobe.check_layer` (``params=``, ``grads=``, ``forward=``...)."""
        return cls.of("layer", layer, x, **kwargs)

    @classmethod
    def torch(cls, fn: Any, *inputs: Any, **kwargs: Any) -> Problem:
        """A ``gradprobe.torch.check(fn, *inputs)`` (``vectorize=``, options)."""
        return cls.of("torch", fn, *inputs, **kwargs)

    @classmethod
    def jax(cls, fn: Any, *inputs: Any, **kwargs: Any) -> Problem:
        """A ``gradprobe.jax.check(fn, *inputs)`` (``argnums=``, ``vectorize=``, ``jit=``)."""
        return cls.of("jax", fn, *inputs, **kwargs)

    # -- the scalar-loss kind's parts -------------------------------------------------------
    @property
    def loss(self) -> Any:
        """The loss of a ``"check"`` problem (None for the other kinds)."""
        return self.args[0] if self.kind == "check" else None

    @property
    def grad(self) -> Any:
        """The gradient of a ``"check"`` problem (None for the other kinds)."""
        return self.args[1] if self.kind == "check" else None

    @property
    def params(self) -> Any:
        """The parameters of a ``"check"`` problem (None for the other kinds)."""
        return self.args[2] if self.kind == "check" else None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"Problem is immutable; use problem.with_options({key}=...)")

    def __delattr__(self, key: str) -> None:
        raise AttributeError("Problem is immutable")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in {**self.keywords, **self.options}.items())
        label = f"name={self.name!r}, " if self.name else ""
        first = self.args[0]
        what = getattr(first, "__name__", None) or type(first).__name__
        if self.kind == "check":
            return f"Problem({label}loss={what!r}, {opts})"
        return f"Problem.{self.kind}({label}{what!r}, {opts})"

    def with_options(self, **options: Any) -> Problem:
        """A copy with ``options`` merged over this problem's options."""
        _validate_option_names(options, "Problem.with_options")
        copy = object.__new__(Problem)
        copy._set(self.kind, self.args, self.keywords, self.name, {**self.options, **options})
        return copy

    @raised_at_the_call
    def run(self, **overrides: Any) -> Report:
        """Run the check with ``overrides`` merged over the problem's options.

        Returns the :class:`Report`; raises what the check raises (``CheckAborted`` on a
        timeout or budget, ``InvalidInputError`` on bad options or inputs).
        """
        _validate_option_names(overrides, "Problem.run")
        run = KINDS[self.kind].runner()
        return run(*self.args, **self.keywords, **{**self.options, **overrides})
