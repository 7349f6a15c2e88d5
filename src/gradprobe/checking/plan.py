"""The plan of a check's loss evaluations: one function computes it, everything reads it.

After the base point a check knows most of what it will evaluate: each parameter's first sample
(per entry, the method's :data:`~gradprobe.numerics.steps.EVALUATIONS_PER_ENTRY`) and, for a
parameter not checked in full, the probes (4 for the pilot, 2 per direction, 2 per row with
``slice_probes`` on a parameter of 2 or more dimensions). :func:`plan_check` computes that once;
``report.measured["planned_evaluations"]``, the progress total, the cost line and the choice of
workers (:meth:`gradprobe.evaluate.Evaluator.plan`) all read the same :class:`CheckPlan`.

Work that depends on what the evidence shows (retries of disagreeing entries, one-sided
differences at kinks, bisection, growth of the sample to ``grow_to``) comes on top of the plan.
The report's ``n_evaluations`` is what was spent, never the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..numerics.steps import EVALUATIONS_PER_ENTRY

if TYPE_CHECKING:
    from ..layout import ParamLayout
    from ..options import CheckOptions


def slice_rows(shape: Sequence[int]) -> int:
    """Rows probed one by one under ``slice_probes=True``: the leading axis of a parameter of
    two or more dimensions with more than one row (a 1-D parameter's rows are its entries,
    which the sample and bisection already reach); 0 otherwise."""
    return int(shape[0]) if len(shape) >= 2 and shape[0] > 1 else 0


@dataclass(frozen=True)
class ParamPlan:
    """One parameter's planned work.

    Attributes
    ----------
    first : int
        Entries checked one by one at first.
    grow_to : int or None
        The size the sample grows to where the evidence disagrees (None: it never grows).
    probed : bool
        Whether probes run (a parameter not checked in full, with probes on).
    slices : int
        Rows probed one by one (``slice_probes``).
    evaluations : int
        Loss evaluations planned before any disagreement.
    """

    first: int
    grow_to: int | None
    probed: bool
    slices: int
    evaluations: int


@dataclass(frozen=True)
class CheckPlan:
    """Every parameter's :class:`ParamPlan`, in the layout's order, and their total."""

    params: tuple[ParamPlan, ...]

    @property
    def evaluations(self) -> int:
        """Loss evaluations the parameters' checks plan (pre-flight and base point apart)."""
        return sum(p.evaluations for p in self.params)


def planned_evaluations(
    first: int,
    size: int,
    probes: int,
    slice_probes: bool,
    shape: tuple[int, ...],
    method: str = "central",
) -> int:
    """Loss evaluations one parameter's check plans before any disagreement (see the module)."""
    total = EVALUATIONS_PER_ENTRY[method] * first
    if probes and first < size:
        total += 4 + 2 * probes + (2 * slice_rows(shape) if slice_probes else 0)
    return total


def plan_check(
    sizes: Sequence[int],
    shapes: Sequence[tuple[int, ...]],
    samples: Sequence[tuple[int, int | None]],
    *,
    probes: int,
    slice_probes: bool,
    method: str,
) -> CheckPlan:
    """The plan of a check: per parameter its ``(first, grow_to)`` sample plan (from
    :meth:`gradprobe.samples.SampleSpec.plan`), its probes and its planned evaluations."""
    out = []
    for size, shape, (first, grow_to) in zip(sizes, shapes, samples, strict=True):
        probed = bool(probes) and first < size
        out.append(
            ParamPlan(
                first=first,
                grow_to=grow_to,
                probed=probed,
                slices=slice_rows(shape) if probed and slice_probes else 0,
                evaluations=planned_evaluations(first, size, probes, slice_probes, shape, method),
            )
        )
    return CheckPlan(tuple(out))


def plan_for(layout: ParamLayout, options: CheckOptions) -> CheckPlan:
    """The plan of a check of ``layout``'s parameters under validated ``options``."""
    samples = [
        options.samples[name].plan(size, bool(options.probes))
        for name, size in zip(layout.names, layout.sizes, strict=True)
    ]
    return plan_check(
        layout.sizes,
        layout.shapes,
        samples,
        probes=options.probes,
        slice_probes=options.slice_probes,
        method=options.method,
    )
