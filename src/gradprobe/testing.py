"""Gradient checks inside test suites: :func:`assert_gradients_ok`.

With the pytest plugin (installed with gradprobe), ``pytest --gradprobe-seed N`` sets the seed
used when a test does not pass one, so a failure seen in CI is rerun with the same sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import GradientMismatchError
from .report.text import failure_message

if TYPE_CHECKING:
    from .report.model import Report

__all__ = ["assert_gradients_ok", "default_seed", "set_default_seed"]

_default_seed: int | None = None


def set_default_seed(seed: int | None) -> None:
    """Set the seed :func:`assert_gradients_ok` uses when none is given (None: 0)."""
    global _default_seed
    _default_seed = seed


def default_seed() -> int:
    """The seed :func:`assert_gradients_ok` uses when none is given."""
    return 0 if _default_seed is None else _default_seed


def assert_gradients_ok(
    loss: Callable[[Any], Any], grad: Any, params: Any, **options: Any
) -> Report:
    """Check the gradient and raise ``AssertionError`` on a mismatch, like ``numpy.testing``.

    Parameters
    ----------
    loss, grad, params
        As for :func:`gradprobe.check`.
    **options
        Options of :func:`gradprobe.check`. ``seed`` defaults to ``pytest --gradprobe-seed``
        (or 0).

    Returns
    -------
    Report
        The passing report.

    Raises
    ------
    GradientMismatchError
        A subclass of ``AssertionError``: the message lists the failing parameters, their
        worst entries (analytic and numeric), the likely cause, and the seed to reproduce.
    InvalidInputError, LossEvaluationError, CheckAborted
        As :func:`gradprobe.check` (a bad input or a crash is an error, not a failed assertion).
    """
    __tracebackhide__ = True  # pytest shows the message, not this helper's source
    options.setdefault("seed", default_seed())
    from .api import check  # numba and the engine load on first use, not with the plugin

    report = check(loss, grad, params, **options)
    if report.passed:
        return report
    message = failure_message(
        report,
        title="Gradients not equal to finite differences",
        table=True,
        footer=f"Reproduce with seed={report.seed} (pytest --gradprobe-seed {report.seed}).",
    )
    raise GradientMismatchError(message, report=report)
