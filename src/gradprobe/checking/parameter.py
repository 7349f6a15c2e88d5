"""One parameter's evidence: a stratified sample checked entry by entry, then probes.

:func:`gather_evidence` runs the numeric steps of the check for one parameter and returns what
they found; it decides nothing (the verdict is :mod:`gradprobe.checking.verdict`'s job).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..numerics.sampling import Sample, stratified_sample
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
    """

    sample: Sample
    entries: EntryResults
    n_failed_sampled: int
    outcome: ProbeOutcome | None
    nonfinite: np.ndarray
    n_evaluations: int = 0
    seconds: float = 0.0


def gather_evidence(
    ctx: ParamCheck,
    n_sample: int,
    rng: np.random.Generator,
    *,
    probes: int,
    slice_probes: bool,
    nonfinite: np.ndarray | None = None,
) -> Evidence:
    """Check ``n_sample`` stratified entries of ``ctx``'s parameter, then probe every entry
    along ``probes`` random directions (when the sample is not complete) and bisect failures.
    """
    start, n0 = time.perf_counter(), ctx.evaluator.n_evaluations
    sample = stratified_sample(rng, ctx.analytic_flat.reshape(ctx.shape), n_sample)
    entries = evaluate_entries(ctx, sample.flat_index)
    n_failed_sampled = int(np.count_nonzero(entries.failed))
    outcome = None
    # Probes add nothing where every entry was checked one by one.
    if probes and not sample.complete:
        outcome = run_probes(
            ctx, rng, n_directions=probes, slice_probes=slice_probes, checked=entries
        )
        if outcome.leaves is not None:
            entries = merge_entry_results(entries, outcome.leaves)
    return Evidence(
        sample=sample,
        entries=entries,
        n_failed_sampled=n_failed_sampled,
        outcome=outcome,
        nonfinite=np.empty(0, dtype=np.int64) if nonfinite is None else nonfinite,
        n_evaluations=ctx.evaluator.n_evaluations - n0,
        seconds=time.perf_counter() - start,
    )
