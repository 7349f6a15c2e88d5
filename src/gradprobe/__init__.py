"""gradprobe: fast, trustworthy checks of hand-written gradients.

>>> import gradprobe
>>> report = gradprobe.check(loss, grad, params)   # doctest: +SKIP
>>> print(report)                                   # doctest: +SKIP
"""

from ._version import __version__
from .api import check
from .errors import (
    CheckAborted,
    GradCheckError,
    GradientMismatchError,
    InvalidInputError,
    LossEvaluationError,
    NondeterministicLossError,
)
from .execution import keep_workers
from .problem import Problem
from .report import Coverage, Diagnosis, EntryCheck, ParamReport, Report
from .sweep import SweepResult, sweep

__all__ = [
    "CheckAborted",
    "Coverage",
    "Diagnosis",
    "EntryCheck",
    "GradCheckError",
    "GradientMismatchError",
    "InvalidInputError",
    "LossEvaluationError",
    "NondeterministicLossError",
    "ParamReport",
    "Problem",
    "Report",
    "SweepResult",
    "__version__",
    "check",
    "keep_workers",
    "sweep",
]
