"""One parameter's evidence: a stratified sample checked entry by entry, probes, and more
entries where the evidence disagrees.

:func:`gather_evidence` runs the numeric steps of the check for one parameter and returns what
they found; it decides nothing (the verdict is :mod:`gradprobe.checking.verdict`'s job).

The budget rule (the default ``samples=``): probes cover every entry, so a small first sample
suffices where everything agrees; where a sampled entry fails, a probe disagrees or the analytic
gradient is not finite, the sample grows (to :data:`~gradprobe.samples.DEFAULT_SAMPLES`) so the
diagnosis reads as much per-entry evidence as a large sample would have given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..numerics.sampling import Sample, extend_sample, stratified_sample
from .context import ParamCheck
from .entries import EntryResults, evaluate_entries, merge_entry_results
from .probes import ProbeOutcome, run_probes

__all__ = ["Evidence", "gather_evidence"]


@dataclass(frozen=True)
class Evidence:
    """What the check of one parameter found.

    Attributes
    ----------
    sample : Sample
        The entries chosen for the per-entry check.
    entries : EntryResults
        Per-entry results: the sample and the single entries that probe bisection reached.
    n_failed_sampled : int
        Failures among the sampled entries alone (for the coverage bound).
    outcome : ProbeOutcome or None
        What the probes found (None when every entry was checked one by one or probes are off).
    nonfinite : ndarray of int64
        Flat indices where the analytic gradient is NaN/inf.
    n_evaluations, seconds : int, float
        Loss evaluations and wall time spent gathering it.
    grown : bool
        The first sample was extended because the evidence disagreed.
    """

    sample: Sample
    entries: EntryResults
    n_failed_sampled: int
    outcome: ProbeOutcome | None
    nonfinite: np.ndarray
    n_evaluations: int = 0
    seconds: float = 0.0
    grown: bool = False


def gather_evidence(
    ctx: ParamCheck,
    n_sample: int,
    rng: np.random.Generator,
    *,
    probes: int,
    slice_probes: bool,
    nonfinite: np.ndarray | None = None,
    grow_to: int | None = None,
) -> Evidence:
    """Check ``n_sample`` stratified entries of ``ctx``'s parameter, then probe every entry
    along ``probes`` random directions (when the sample is not complete) and bisect failures;
    when anything disagreed, extend the sample to ``grow_to`` entries.
    """
    start, n0 = time.perf_counter(), ctx.evaluator.n_evaluations
    analytic = ctx.analytic_flat.reshape(ctx.shape)
    nonfinite = np.empty(0, dtype=np.int64) if nonfinite is None else nonfinite
    sample = stratified_sample(rng, analytic, n_sample)
    entries = evaluate_entries(ctx, sample.flat_index)
    outcome = None
    # Probes add nothing where every entry was checked one by one.
    if probes and not sample.complete:
        outcome = run_probes(
            ctx, rng, n_directions=probes, slice_probes=slice_probes, checked=entries
        )
        if outcome.leaves is not None:
            entries = merge_entry_results(entries, outcome.leaves)
    grown = False
    if grow_to is not None and grow_to > sample.size and _disagrees(entries, outcome, nonfinite):
        extra, sample = extend_sample(
            rng, analytic, sample, grow_to - sample.size, checked=entries.flat_index
        )
        entries = merge_entry_results(entries, evaluate_entries(ctx, extra.flat_index))
        grown = True
    in_sample = np.isin(entries.flat_index, sample.flat_index)
    return Evidence(
        sample=sample,
        entries=entries,
        n_failed_sampled=int(np.count_nonzero(entries.failed & in_sample)),
        outcome=outcome,
        nonfinite=nonfinite,
        n_evaluations=ctx.evaluator.n_evaluations - n0,
        seconds=time.perf_counter() - start,
        grown=grown,
    )


def _disagrees(entries: EntryResults, outcome: ProbeOutcome | None, nonfinite: np.ndarray) -> bool:
    """Anything the diagnosis would want more entries for: a failed entry, a probe that
    disagreed (even one explained away later), a non-finite analytic entry."""
    return (
        bool(np.any(entries.failed))
        or (outcome is not None and not outcome.passed)
        or nonfinite.size > 0
    )
