"""The per-parameter context of one check: what every step of the check needs to know.

A :class:`ParamCheck` carries the evaluator, which parameter, its analytic gradient, the pass
rule, the relative step and the method, so that the entry estimates, the probes and the
diagnosis take one object instead of a positional list of options.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluate import Evaluator
from ..numerics.steps import default_relative_step
from ..numerics.tolerances import Tolerance, loss_epsilon, tolerance_for
from ..options import CheckOptions


@dataclass(frozen=True)
class ParamCheck:
    """One parameter under check.

    Attributes
    ----------
    evaluator : Evaluator
        Computes losses at perturbed parameters.
    param : int
        Position of the parameter in the layout.
    analytic_flat : ndarray
        The parameter's whole analytic gradient, flat.
    tolerance : Tolerance
        The pass rule.
    relative_step : float
        ``h = relative_step * max(1, |x|)`` for single entries.
    method : str
        Finite-difference scheme (:data:`gradprobe.numerics.steps.METHODS`).
    """

    evaluator: Evaluator
    param: int
    analytic_flat: np.ndarray
    tolerance: Tolerance
    relative_step: float
    method: str = "central"

    @property
    def name(self) -> str:
        return self.evaluator.layout.names[self.param]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.evaluator.layout.shapes[self.param])

    @property
    def size(self) -> int:
        return int(self.evaluator.layout.sizes[self.param])

    @property
    def base_flat(self) -> np.ndarray:
        """The parameter's values at the base point, flat (never written to)."""
        return self.evaluator.base[self.param].reshape(-1)


def param_context(
    evaluator: Evaluator,
    p: int,
    analytic: np.ndarray,
    options: CheckOptions,
    precision: float,
    loss_noise: float,
) -> ParamCheck:
    """Parameter ``p``'s context: its pass rule and step, for its dtype, or for the loss's
    precision when that was measured coarser than every parameter's."""
    dtype = evaluator.layout.dtypes[p]
    coarse = precision if precision > loss_epsilon(evaluator.layout.dtypes) else None
    return ParamCheck(
        evaluator=evaluator,
        param=p,
        analytic_flat=analytic.reshape(-1),
        tolerance=tolerance_for(dtype, precision, options.rtol, options.atol, loss_noise, coarse),
        relative_step=options.eps or default_relative_step(dtype, options.method, coarse),
        method=options.method,
    )
