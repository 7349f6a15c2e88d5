"""Gradient checks inside test suites: :func:`assert_gradients_ok`; and
:class:`RecordingOptimizer` with :func:`recorded_gradients`, for layers whose backward applies
the optimizer's update itself.

With the pytest plugin (installed with gradprobe), ``pytest --gradprobe-seed N`` sets the seed
used when a test does not pass one, so a failure seen in CI is rerun with the same sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GradientMismatchError, InvalidInputError
from .report.text import failure_message

if TYPE_CHECKING:
    from .report.model import Report

__all__ = [
    "RecordingOptimizer",
    "assert_gradients_ok",
    "default_seed",
    "recorded_gradients",
    "set_default_seed",
]

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


class RecordingOptimizer:
    """An optimizer stand-in that records the gradient it is given and changes nothing.

    For layers whose ``backward`` applies the update itself (``self.W =
    self.W_opt.update(self.W, grad_w)``): give the layer one of these where it takes its
    optimizer, and the weights stay where the check put them while ``grad`` holds what
    backward computed. :func:`recorded_gradients` reads them for :func:`gradprobe.check_layer`.

    ``update(w, grad)`` (also callable as ``optimizer(w, grad)``) returns ``w`` unchanged;
    extra arguments are ignored.
    """

    def __init__(self) -> None:
        self.updates: list[np.ndarray] = []

    # A copy is a fresh recorder: layers copy the optimizer they are given once per parameter
    # (copy.copy(optimizer)), and check_layer deep-copies the layer for every evaluation.
    def __copy__(self) -> RecordingOptimizer:
        return type(self)()

    def __deepcopy__(self, memo: dict[int, Any]) -> RecordingOptimizer:
        return type(self)()

    def update(self, w: Any, grad: Any, *args: Any, **kwargs: Any) -> Any:
        """Record a copy of ``grad`` (in ``updates``) and return ``w`` itself, unchanged."""
        self.updates.append(np.array(grad, dtype=float, copy=True))
        return w

    __call__ = update

    @property
    def grad(self) -> np.ndarray:
        """The gradient of the last update."""
        if not self.updates:
            raise InvalidInputError(
                "RecordingOptimizer: no update recorded: backward did not call this "
                "optimizer's update(w, grad). Give the layer the recorder where it keeps the "
                "optimizer of that parameter (and a layer with trainable=True)."
            )
        return self.updates[-1]


def recorded_gradients(
    attributes: Mapping[str, str] | None = None, **by_param: str
) -> Callable[[Any], dict[str, np.ndarray]]:
    """``grads=`` for :func:`gradprobe.check_layer`: each parameter's gradient read from the
    :class:`RecordingOptimizer` in the layer attribute named for it, e.g.
    ``recorded_gradients(W="W_opt", w0="w0_opt")`` (a mapping for dotted names)."""
    where = {**dict(attributes or {}), **by_param}
    if not where:
        raise InvalidInputError(
            "recorded_gradients: expected parameter=optimizer-attribute pairs, found none; "
            'e.g. recorded_gradients(W="W_opt", w0="w0_opt").'
        )

    def read(layer: Any) -> dict[str, np.ndarray]:
        out = {}
        for param, attr in where.items():
            recorder = layer
            for part in attr.split("."):
                recorder = getattr(recorder, part, None)
            if not isinstance(recorder, RecordingOptimizer):
                raise InvalidInputError(
                    f"recorded_gradients: expected layer.{attr} to be a RecordingOptimizer "
                    f"(the optimizer of {param!r}), found {type(recorder).__name__}. Give the "
                    "layer gradprobe.testing.RecordingOptimizer() as its optimizer."
                )
            out[param] = recorder.grad
        return out

    return read
