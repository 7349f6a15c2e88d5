"""gradprobe: fast, trustworthy checks of hand-written gradients.

>>> import gradprobe
>>> report = gradprobe.check(loss, grad, params)   # doctest: +SKIP
>>> print(report)                                   # doctest: +SKIP

``check``, ``check_vjp``, ``check_jvp``, ``check_hvp``, ``check_layer``,
``check_forward_backward``, ``sweep``, ``keep_workers`` and ``shutdown_workers`` load their
modules (and numba) on first use, so that
importing the package, or its pytest plugin at every pytest start, stays cheap.

The public API is the names in ``__all__`` (and ``gradprobe.torch``, ``gradprobe.jax``,
``gradprobe.testing``, ``gradprobe.examples``, the ``gradprobe`` command); only these modules
define ``__all__``. Every other submodule (``numerics``, ``evaluate``, ``checking``,
``report``, ``suites``, ``options``, ``layout``...) is internal and may change without notice.
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
from .report.model import Coverage, Diagnosis, EntryCheck, ParamReport, Report
from .suites.problem import Problem

if TYPE_CHECKING:
    from .api import check
    from .evaluate.pool import shutdown_workers
    from .evaluate.workers import keep_workers
    from .functional.jvp import check_jvp
    from .functional.layer import check_layer
    from .functional.pair import check_forward_backward
    from .functional.vjp import check_hvp, check_vjp
    from .step_sweep import SweepResult, sweep

_LAZY = {
    "check": "api",
    "check_forward_backward": "functional.pair",
    "check_hvp": "functional.vjp",
    "check_jvp": "functional.jvp",
    "check_layer": "functional.layer",
    "check_vjp": "functional.vjp",
    "keep_workers": "evaluate.workers",
    "shutdown_workers": "evaluate.pool",
    "sweep": "step_sweep",
    "SweepResult": "step_sweep",
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
    "check_forward_backward",
    "check_hvp",
    "check_jvp",
    "check_layer",
    "check_vjp",
    "keep_workers",
    "shutdown_workers",
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
