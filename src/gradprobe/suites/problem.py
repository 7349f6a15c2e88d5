"""A gradient check as a value: :class:`Problem` holds what :func:`gradprobe.check` needs.

Suites and the command line load checks from files as module-level functions returning a
``Problem``; ``problem.run(**overrides)`` runs it with the suite's options merged over its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ..errors import InvalidInputError, raised_at_the_call
from ..report.model import Report

__all__ = ["Problem"]


def _validate_option_names(options: Mapping[str, Any], where: str) -> None:
    from ..options import OPTION_NAMES  # loaded on first use: `import gradprobe` stays cheap

    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise InvalidInputError(
            f"{where}: unknown option(s) {unknown}; gradprobe.check accepts "
            f"{list(OPTION_NAMES)}. Fix the spelling or remove them."
        )


class Problem:
    """A loss, its hand-written gradient, the parameters, and the options of the check.

    ``Problem(loss=..., grad=..., params=..., **options)`` where ``options`` are any keyword
    options of :func:`gradprobe.check` (``seed``, ``samples``, ``eps``, ``rtol``, ``atol``,
    ``method``, ``n_jobs``, ``timeout``, ``budget``, ...). Option names are checked here; their
    values are validated by ``check`` when the problem runs. Immutable.

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

    Examples
    --------
    >>> def make_quadratic():                       # doctest: +SKIP
    ...     x = np.ones(3)
    ...     return gradprobe.Problem(loss=lambda v: v @ v, grad=lambda v: 2 * v, params=x)
    """

    __slots__ = ("grad", "loss", "name", "options", "params")

    loss: Callable[[Any], Any]
    grad: Any
    params: Any
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
        if name is not None and not isinstance(name, str):
            raise InvalidInputError(f"Problem name: expected a str or None, found {name!r}.")
        _validate_option_names(options, "Problem")
        object.__setattr__(self, "loss", loss)
        object.__setattr__(self, "grad", grad)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "options", MappingProxyType(dict(options)))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"Problem is immutable; use problem.with_options({key}=...)")

    def __delattr__(self, key: str) -> None:
        raise AttributeError("Problem is immutable")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        label = f"name={self.name!r}, " if self.name else ""
        return f"Problem({label}loss={getattr(self.loss, '__name__', self.loss)!r}, {opts})"

    def with_options(self, **options: Any) -> Problem:
        """A copy with ``options`` merged over this problem's options."""
        _validate_option_names(options, "Problem.with_options")
        return Problem(
            loss=self.loss,
            grad=self.grad,
            params=self.params,
            name=self.name,
            **{**self.options, **options},
        )

    @raised_at_the_call
    def run(self, **overrides: Any) -> Report:
        """Run :func:`gradprobe.check` with ``overrides`` merged over the problem's options.

        Returns the :class:`Report`; raises what ``check`` raises (``CheckAborted`` on a
        timeout or budget, ``InvalidInputError`` on bad options or inputs).
        """
        from ..api import check

        _validate_option_names(overrides, "Problem.run")
        return check(self.loss, self.grad, self.params, **{**self.options, **overrides})
