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

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..numerics.sampling import Sample, extend_sample, stratified_sample
from ..numerics.steps import EVALUATIONS_PER_ENTRY
from .context import ParamCheck
from .entries import evaluate_entries, first_rows
from .probes import ProbeOutcome, run_probes
from .results import EntryResults, merge_entry_results
from .ties import check_ties


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
    finished : bool
        False for the entries finished before the check stopped (time limit, budget,
        Ctrl-C) while this parameter was being checked: they are reported, with no verdict.
    """

    sample: Sample
    entries: EntryResults
    n_failed_sampled: int
    outcome: ProbeOutcome | None
    nonfinite: np.ndarray
    n_evaluations: int = 0
    seconds: float = 0.0
    finished: bool = True


class EvidenceSink:
    """Where one parameter's finished blocks go as they finish: owned by the run, which reads
    :meth:`partial` when the check stops part-way (time limit, budget, Ctrl-C), so nothing is
    carried on the exception."""

    def __init__(self, ctx: ParamCheck, nonfinite: np.ndarray | None = None) -> None:
        self.ctx = ctx
        self.nonfinite = np.empty(0, dtype=np.int64) if nonfinite is None else nonfinite
        self.blocks: list[EntryResults] = []
        self.outcome: ProbeOutcome | None = None  # the probes' outcome, once they finished
        self.start, self.n0 = time.perf_counter(), ctx.evaluator.n_evaluations

    def keep(self, results: EntryResults) -> EntryResults:
        """Record a finished block of per-entry results (and return it)."""
        self.blocks.append(results)
        return results

    def evidence(self, sample: Sample, entries: EntryResults, **more: Any) -> Evidence:
        """The :class:`Evidence` of ``entries`` checked for ``sample`` so far."""
        failed = entries.failed
        n_failed_sampled = 0
        if failed.any():
            n_failed_sampled = int(
                np.count_nonzero(failed & np.isin(entries.flat_index, sample.flat_index))
            )
        return Evidence(
            sample=sample,
            entries=entries,
            n_failed_sampled=n_failed_sampled,
            outcome=self.outcome,
            nonfinite=self.nonfinite,
            n_evaluations=self.ctx.evaluator.n_evaluations - self.n0,
            seconds=time.perf_counter() - self.start,
            **more,
        )

    def partial(self) -> Evidence | None:
        """The entries finished so far, as unfinished evidence (None when no block finished)."""
        if not self.blocks:
            return None
        finished = functools.reduce(merge_entry_results, self.blocks)
        return self.evidence(
            Sample(finished.flat_index, {}, self.ctx.size), finished, finished=False
        )


def draw_sample(ctx: ParamCheck, n_sample: int, rng: np.random.Generator) -> Sample:
    """The first sample of ``ctx``'s parameter: ``n_sample`` stratified entries (see
    :func:`~gradprobe.numerics.sampling.stratified_sample`), drawn from ``rng``."""
    return stratified_sample(rng, ctx.analytic_flat.reshape(ctx.shape), n_sample)


def first_samples(
    contexts: Sequence[ParamCheck], sizes: Sequence[int], seeds: Sequence[np.random.SeedSequence]
) -> tuple[list[np.random.Generator], list[Sample]]:
    """Every parameter's first sample (``sizes[p]`` entries), drawn before any is evaluated,
    and each parameter's generator after the draw; the evaluator gets the first blocks at
    once (:func:`send_first_blocks`)."""
    rngs = [np.random.default_rng(seed) for seed in seeds[: len(contexts)]]
    samples = [draw_sample(ctx, n, rng) for ctx, n, rng in zip(contexts, sizes, rngs, strict=True)]
    send_first_blocks(contexts, samples)
    return rngs, samples


def send_first_blocks(contexts: Sequence[ParamCheck], samples: Sequence[Sample]) -> None:
    """The blocks the check will first ask for, all parameters' at once, to the evaluator
    (:meth:`~gradprobe.evaluate.Evaluator.prefetch`), so a placement with workers streams them
    all through the same workers. Sent again with other contexts (other steps), the blocks
    that no longer match are dropped."""
    if contexts and contexts[0].evaluator.sends_ahead:
        requests = [first_request(c, s) for c, s in zip(contexts, samples, strict=True)]
        contexts[0].evaluator.prefetch([r for r in requests if r is not None])


def first_request(ctx: ParamCheck, sample: Sample) -> tuple[int, np.ndarray, np.ndarray] | None:
    """The first block :func:`gather_evidence` evaluates for ``sample``, as
    :meth:`~gradprobe.evaluate.Evaluator.prefetch` takes it; None where it is not one block
    (a budget or time limit splits it) or not sent to workers (the complex step)."""
    ev = ctx.evaluator
    if ev.budget is not None or ev.deadline is not None:
        return None
    rows = first_rows(ctx, sample.flat_index)
    return None if rows is None else (ctx.param, sample.flat_index, rows)


def gather_evidence(
    ctx: ParamCheck,
    n_sample: int,
    rng: np.random.Generator,
    *,
    probes: int,
    slice_probes: bool,
    nonfinite: np.ndarray | None = None,
    grow_to: int | None = None,
    sink: EvidenceSink | None = None,
    sample: Sample | None = None,
) -> Evidence:
    """Check ``n_sample`` stratified entries of ``ctx``'s parameter, then probe every entry
    along ``probes`` random directions (when the sample is not complete) and bisect failures;
    when anything disagreed, extend the sample to ``grow_to`` entries.

    Each finished block of entries goes into ``sink`` as it finishes (a new one when None):
    a check stopped on the way (time limit, budget, Ctrl-C) reads the finished entries there
    (:meth:`EvidenceSink.partial`).

    ``sample``: the first sample, already drawn by :func:`draw_sample` with ``rng`` (the
    check draws every parameter's before evaluating any, so workers can take them all at once).
    """
    sink = EvidenceSink(ctx, nonfinite) if sink is None else sink
    analytic = ctx.analytic_flat.reshape(ctx.shape)
    if sample is None:
        sample = draw_sample(ctx, n_sample, rng)
    entries = _evaluate_in_blocks(ctx, sample.flat_index, sink)
    # Probes add nothing where every entry was checked one by one.
    if probes and not sample.complete:
        probed = run_probes(
            ctx, rng, n_directions=probes, slice_probes=slice_probes, checked=entries
        )
        sink.outcome = probed
        if probed.leaves is not None:
            entries = merge_entry_results(entries, sink.keep(probed.leaves))  # bisection's
    if (
        grow_to is not None
        and grow_to > sample.size
        and _disagrees(entries, sink.outcome, sink.nonfinite)
    ):
        extra, sample_grown = extend_sample(
            rng, analytic, sample, grow_to - sample.size, checked=entries.flat_index
        )
        entries = merge_entry_results(entries, _evaluate_in_blocks(ctx, extra.flat_index, sink))
        sample = sample_grown
    entries = check_ties(ctx, entries)  # kinks moved together (issue 22)
    if entries.size == ctx.size and not sample.complete:
        # The sample and bisection's entries together are every entry: checked in full.
        sample = stratified_sample(rng, analytic, ctx.size)
    return sink.evidence(sample, entries)


#: Entries per block of a sample under a time limit or budget: a check stopped by it keeps the
#: blocks it finished (workers still share each block).
MIN_BLOCK_ENTRIES = 256
#: ... and at most this many blocks per sample, so dispatching them stays cheap.
MAX_BLOCKS = 64
#: Under a time limit a block takes at most this fraction of the time left (estimated) ...
TIME_SLICES = 16
#: ... but holds at least this many entries.
MIN_TIMED_BLOCK = 16


def _evaluate_in_blocks(
    ctx: ParamCheck, flat_index: np.ndarray, sink: EvidenceSink
) -> EntryResults:
    """:func:`evaluate_entries` block by block, each finished block kept in ``sink``.

    Under a budget or time limit the entries run in blocks, in a fixed pseudo-random order
    (so the entries finished before a stop are spread over the parameter, not its first
    rows); otherwise in one call.
    """
    ev = ctx.evaluator
    if ev.budget is None and ev.deadline is None:
        # Nothing will stop the check part-way (but Ctrl-C): one call, which workers share
        # best (a dispatch decision weighs one call's work against starting them).
        return sink.keep(evaluate_entries(ctx, flat_index))
    block = max(MIN_BLOCK_ENTRIES, -(-flat_index.size // MAX_BLOCKS))
    order = np.random.default_rng(flat_index.size).permutation(flat_index)
    # Evaluations per entry, twice over: room for the retries of disagreeing entries.
    per_entry = 2 * EVALUATIONS_PER_ENTRY[ctx.method]
    results = []
    a = 0
    while True:
        size = block
        left = ev.evaluations_left()
        if left is not None:
            # Under a budget, a block that fits in what is left runs before the budget stops
            # the check, so the report keeps it.
            size = max(1, min(size, left // per_entry))
        if ev.deadline is not None and ev.base_seconds:
            # Under a time limit, blocks of a slice of the time left (by the measured cost of
            # one evaluation), so a stopped check keeps most of what it evaluated.
            seconds = (ev.deadline - time.monotonic()) / TIME_SLICES
            size = min(size, max(MIN_TIMED_BLOCK, int(seconds / (per_entry * ev.base_seconds))))
        results.append(sink.keep(evaluate_entries(ctx, np.sort(order[a : a + size]))))
        a += size
        if a >= order.size:
            return functools.reduce(merge_entry_results, results)


def _disagrees(entries: EntryResults, outcome: ProbeOutcome | None, nonfinite: np.ndarray) -> bool:
    """Anything the diagnosis would want more entries for: a failed entry, a probe that
    disagreed (even one explained away later), a non-finite analytic entry."""
    return (
        bool(np.any(entries.failed))
        or (outcome is not None and not outcome.passed)
        or nonfinite.size > 0
    )
