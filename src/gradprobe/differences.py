"""Finite-difference schemes: which perturbed points to evaluate and how to combine them.

Given the entries to check, this module asks the evaluator for the losses at the perturbed
points, turns them into numeric derivatives (through the shared jitted kernels) and compares them
with the analytic values under a :class:`~gradprobe.tolerances.Tolerance`. It knows nothing of
reports or of how the losses are computed (serial, parallel, batched, jitted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels
from .execution import Evaluator
from .steps import central_steps
from .tolerances import NOISE_FACTOR, Tolerance

__all__ = ["EntryResults", "evaluate_entries"]


@dataclass(frozen=True)
class EntryResults:
    """Per-entry outcome of a finite-difference check, aligned with ``flat_index``."""

    flat_index: np.ndarray
    analytic: np.ndarray
    numeric: np.ndarray
    abs_error: np.ndarray
    rel_error: np.ndarray
    allowed: np.ndarray
    passed: np.ndarray
    kink: np.ndarray
    step: np.ndarray  # half the step actually taken

    @property
    def size(self) -> int:
        return int(self.flat_index.size)

    @property
    def failed(self) -> np.ndarray:
        """Entries that fail and are not explained by a kink."""
        return ~self.passed & ~self.kink

    def worst_order(self) -> np.ndarray:
        """Positions, worst first: failures by how far past tolerance, then kinks, then the
        rest by relative error."""
        excess = np.nan_to_num(self.abs_error / self.allowed, nan=np.inf)
        failing = np.flatnonzero(self.failed)
        failing = failing[np.argsort(-excess[failing], kind="stable")]
        kinks = np.flatnonzero(self.kink)
        rest = np.flatnonzero(self.passed & ~self.kink)
        rest = rest[np.argsort(-self.rel_error[rest], kind="stable")]
        return np.concatenate([failing, kinks, rest])


def evaluate_entries(
    evaluator: Evaluator,
    param: int,
    flat_index: np.ndarray,
    analytic_flat: np.ndarray,
    relative_step: float,
    tolerance: Tolerance,
    method: str = "central",
) -> EntryResults:
    """Check entries ``flat_index`` of parameter ``param`` against ``analytic_flat``."""
    if method != "central":
        raise ValueError(f"unknown finite-difference method {method!r}")
    values = evaluator.base[param].reshape(-1)[flat_index]
    steps = central_steps(values, relative_step)
    losses = evaluator.entry_losses(param, flat_index, np.stack([steps.plus, steps.minus], axis=1))
    a = np.ascontiguousarray(analytic_flat[flat_index], dtype=np.float64)
    numeric, abs_error, rel_error, allowed, passed = kernels.compare_central(
        a,
        np.ascontiguousarray(losses[:, 0]),
        np.ascontiguousarray(losses[:, 1]),
        steps.taken,
        tolerance.rtol,
        tolerance.atol,
        NOISE_FACTOR * tolerance.loss_eps,
    )
    return EntryResults(
        flat_index=flat_index,
        analytic=a,
        numeric=numeric,
        abs_error=abs_error,
        rel_error=rel_error,
        allowed=allowed,
        passed=passed,
        kink=np.zeros(flat_index.size, dtype=bool),
        step=0.5 * steps.taken,
    )
