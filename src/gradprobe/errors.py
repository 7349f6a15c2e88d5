"""Exceptions raised by gradprobe.

The tree::

    GradCheckError                    base of everything gradprobe raises; .partial_report
    ├── InvalidInputError             (also ValueError) a bad argument, input or option
    │   └── SuiteConfigError          a suite file (gradprobe.toml, [tool.gradprobe]) is unusable
    ├── GradientMismatchError         (also AssertionError) Report.raise_for_failures,
    │                                 testing.assert_gradients_ok; .report
    ├── NondeterministicLossError     the loss or grad returned different values for the same input
    │   └── StatefulGradientError     grad changed between calls while the loss repeated (a buffer
    │                                 accumulated into or scaled in place), or calling grad
    │                                 changed the loss
    ├── LossEvaluationError           the loss or grad raised, or returned something unusable;
    │                                 .param, .index
    └── CheckAborted                  a time limit or evaluation budget ran out; .reason

Errors raised after some work was done carry it as ``partial_report`` (a
:class:`gradprobe.Report` marked incomplete), so a nightly job keeps the evidence gathered
before the failure.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class GradCheckError(Exception):
    """Base class of every error gradprobe raises.

    Attributes
    ----------
    partial_report : Report or None
        The work completed before the error, marked incomplete, when there was any.
    """

    def __init__(self, message: str, *, partial_report: Any = None) -> None:
        super().__init__(message)
        self.partial_report = partial_report


class InvalidInputError(GradCheckError, ValueError):
    """An argument of a public function is not usable; the message names it and the fix."""


class SuiteConfigError(InvalidInputError):
    """The suite file is not usable; the message names the file, line, key and the fix."""


class GradientMismatchError(GradCheckError, AssertionError):
    """Raised by :meth:`Report.raise_for_failures` when analytic and numeric gradients disagree.

    Attributes
    ----------
    report : Report
        The complete report whose failures the message lists.
    """

    def __init__(self, message: str, *, report: Any) -> None:
        super().__init__(message, partial_report=None)
        self.report = report


class NondeterministicLossError(GradCheckError):
    """The loss returned different values for the same parameters (beyond ``nondet_tol``)."""


class StatefulGradientError(NondeterministicLossError):
    """``grad`` keeps state between calls: told apart from a random loss by the call order.

    Raised when the loss repeats at the base point but two ``grad`` calls there differ (it
    accumulates into a buffer, scales an array it was given in place, or is random in the
    backward pass only), or when the loss repeats back to back but changes after ``grad`` runs.
    """


class LossEvaluationError(GradCheckError):
    """The user's loss (or gradient) raised, or returned an unusable value, during the check.

    Attributes
    ----------
    param : str or None
        Name of the parameter being perturbed when it happened (None at the base point).
    index : tuple of int or None
        Index of the perturbed entry, when one entry was being perturbed.
    """

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        index: tuple[int, ...] | None = None,
        partial_report: Any = None,
    ) -> None:
        super().__init__(message, partial_report=partial_report)
        self.param = param
        self.index = index


class CheckAborted(GradCheckError):
    """The check stopped early: its time limit or its evaluation budget ran out.

    ``partial_report`` holds what was finished. ``reason`` is ``"timeout"`` or ``"budget"``.
    (Ctrl-C is not turned into this error: ``KeyboardInterrupt`` propagates, with the partial
    report attached as its ``partial_report`` attribute.)
    """

    def __init__(self, message: str, *, reason: str, partial_report: Any = None) -> None:
        super().__init__(message, partial_report=partial_report)
        self.reason = reason

    def __reduce__(self) -> Any:
        # ``reason`` is keyword-only: without this, a pickled CheckAborted (an evaluator
        # sends errors back as pickles) fails to load and came back as a RuntimeError.
        return (functools.partial(type(self), reason=self.reason), self.args, self.__dict__)


def raised_at_the_call(fn: F) -> F:
    """Make a public function raise gradprobe's errors from the caller's line.

    The traceback of an error gradprobe raises then shows the user's call and the message,
    not the frames of gradprobe's pipeline that found the problem (an error's cause, such as
    the exception a loss raised, keeps its own traceback). ``GRADPROBE_TRACEBACK=full`` in the
    environment keeps every frame, for debugging gradprobe itself.
    """

    @functools.wraps(fn)
    def public(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GradCheckError as error:
            if os.environ.get("GRADPROBE_TRACEBACK") == "full":
                raise
            error.__traceback__ = None
            raise error  # gradprobe's frames are left out; GRADPROBE_TRACEBACK=full shows them

    return public  # type: ignore[return-value]
