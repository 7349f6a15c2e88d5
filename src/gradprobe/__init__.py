"""gradprobe: fast, trustworthy checks of hand-written gradients.

>>> import gradprobe
>>> report = gradprobe.check(loss, grad, params)   # doctest: +SKIP
>>> print(report)                                   # doctest: +SKIP

``check``, ``sweep`` and ``keep_workers`` load their modules (and numba) on first use, so that
importing the package, or its pytest plugin at every pytest start, stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    CheckAborted,
    GradCheckError,
    GradientMismatchError,
    InvalidInputError,
    LossEvaluationError,
    NondeterministicLossError,
    StatefulGradientError,
)
from .report import Coverage, Diagnosis, EntryCheck, ParamReport, Report
from .suites.problem import Problem

if TYPE_CHECKING:
    from .api import check
    from .evaluate import keep_workers
    from .sweep import SweepResult, sweep

_LAZY = {
    "check": "api",
    "keep_workers": "evaluate",
    "sweep": "sweep",
    "SweepResult": "sweep",
}

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
    "StatefulGradientError",
    "SweepResult",
    "__version__",
    "check",
    "keep_workers",
    "sweep",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradprobe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
