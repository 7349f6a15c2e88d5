"""One check's run from validated inputs: the base point, the analytic gradient and the
pre-flight, each parameter's evidence, the diagnosis and the report (:class:`_Run`), then
``promote="auto"``'s float64 recheck. :func:`gradprobe.check` validates and calls
:func:`check_normalized`; so does the reduction, which validated the inputs itself.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import CheckAborted, GradCheckError, InvalidInputError
from ..evaluate import make_evaluator
from ..evaluate.backends import joblib_backend
from ..evaluate.threads import one_blas_thread
from ..evaluate.watchdog import hard_deadline
from ..layout import ParamLayout, describe_fixed, promote_to_float64
from ..numerics.sampling import Sample
from ..numerics.tolerances import loss_epsilon
from ..options import CheckOptions, settings
from ..report.model import Diagnosis, Report
from ..report.text import cost_notice
from .advice import dtype_warnings, precision_warnings
from .context import ParamCheck, param_context
from .diagnosis import diagnose
from .parameter import Evidence, EvidenceSink, first_samples, gather_evidence, send_first_blocks
from .plan import plan_for
from .preflight import analytic_gradient, base_loss, run_preflight
from .promotion import floor_left, verify_in_float64
from .verdict import build_report, floor_warnings, passes


def check_normalized(
    loss: Callable[[Any], Any],
    grad: Any,
    layout: ParamLayout,
    base: list[np.ndarray],
    sources: Sequence[np.ndarray | None],
    options: CheckOptions,
    recheck: Callable[..., Report],
    start: float | None = None,
) -> Report:
    """:func:`gradprobe.check` of parameters already normalized (``layout``, ``base``: private copies,
    ``sources``: :func:`~gradprobe.layout.normalize_params`'s) with validated ``options``: for
    a caller that did both itself (the reduction). ``recheck(promote=True, timeout=...)``
    checks again from the caller's own arguments (``promote="auto"``'s float64 recheck)."""
    start = time.perf_counter() if start is None else start
    with joblib_backend(options.backend):  # where the workers come from (docs/scaling.md)
        report = _checked(_Run(loss, grad, layout, base, options, start, sources), options)
    if options.promote == "auto" and floor_left(report):  # recheck in float64
        timeout = options.timeout
        left = None if timeout is None else max(1e-3, timeout - (time.perf_counter() - start))
        report = verify_in_float64(report, lambda: recheck(promote=True, timeout=left))
    return report


#: Options the float64 recheck sets itself (promote, timeout) or leaves at their default
#: (thread_safe), for every caller that asks for one.
NOT_RECHECKED = ("promote", "timeout", "thread_safe")


def passed_to_recheck(options: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's raw ``options`` that its ``recheck`` passes on (all but NOT_RECHECKED)."""
    return {k: v for k, v in options.items() if k not in NOT_RECHECKED}


def _checked(run: _Run, options: CheckOptions) -> Report:
    try:
        # One BLAS thread from the base point to the diagnosis (the gradient's calls too: their
        # last bits then no more depend on the machine's BLAS threads than the loss's do), set
        # once here instead of per evaluation.
        with run.evaluator, hard_deadline(run.time_left()), one_blas_thread():
            run.preflight()
            run.gather_evidence()
            run.diagnose()
    except GradCheckError as exc:
        if isinstance(exc, CheckAborted) and exc.reason == "timeout" and options.timeout:
            # Quote the user's timeout, not the time left when the watchdog was armed.
            exc.args = (_timeout_message(options.timeout),)
        if exc.partial_report is None and not isinstance(exc, InvalidInputError):
            exc.partial_report = run.report(f"{type(exc).__name__}: {exc}")
        raise
    except KeyboardInterrupt as exc:
        exc.partial_report = run.report("interrupted (KeyboardInterrupt)")  # type: ignore[attr-defined]
        raise
    return run.report()


class _Run:
    """One check's state, step by step: plan, pre-flight, evidence, diagnosis, report."""

    def __init__(
        self,
        loss: Callable[[Any], Any],
        grad: Any,
        layout: ParamLayout,
        base: list[np.ndarray],
        options: CheckOptions,
        start: float,
        sources: Sequence[np.ndarray | None] = (),
    ) -> None:
        self.grad, self.options, self.start = grad, options, start
        #: The caller's arrays the base copies were made from (None: converted).
        self.sources = list(sources)
        promoted: list[str] = []
        if options.promote is True:
            layout, base, promoted = promote_to_float64(layout, base)
        self.layout, self.base = layout, base
        self.warnings = dtype_warnings(layout)
        if layout.fixed:
            self.warnings.append(f"held fixed (not checked): {describe_fixed(layout.fixed)}.")
        if promoted:
            self.warnings.append(
                f"parameters {promoted} were promoted to float64 for the check (promote=True): "
                "the loss and grad received float64 arrays."
            )
        self.loss_eps = loss_epsilon(layout.dtypes)
        self.deadline = None if options.timeout is None else time.monotonic() + options.timeout
        self.timings: dict[str, float] = {"compile": 0.0}  # the numba kernel path's, if used
        #: The plan of evaluations: settings, progress, the cost line and the workers read it.
        self.plan = plan_for(layout, options)
        self.planned = self.plan.evaluations
        self.evaluator = make_evaluator(
            loss,
            layout,
            base,
            n_jobs=options.n_jobs,
            batched=options.batched,
            budget=options.budget,
            deadline=self.deadline,
            progress=options.progress,
            planned_evaluations=2 + self.planned,  # base and pre-flight, then the plan
            thread_safe=options.thread_safe,
        )
        self.timings["compile"] += self.evaluator.compile_seconds
        # One seed per parameter, and one more for the noise estimate's direction.
        self.seeds = _seed_sequences(options.seed, len(layout.names) + 1)
        self.noise_info: dict[str, Any] = {}
        self.contexts: dict[str, ParamCheck] = {}
        self.evidence: dict[str, Evidence] = {}
        #: The parameter being checked and the sink its finished blocks go into: a check
        #: stopped part-way reports them (:meth:`report`).
        self.unfinished: tuple[str, EvidenceSink] | None = None
        self.diagnoses: dict[str, Diagnosis] = {}
        self.nonfinite: Mapping[str, np.ndarray] = {}
        #: Each parameter's generator and first sample (drawn in the pre-flight).
        self.first: tuple[list[np.random.Generator], list[Sample]] = ([], [])

    def time_left(self) -> float | None:
        return None if self.deadline is None else max(1e-3, self.deadline - time.monotonic())

    def preflight(self) -> None:
        """Base point, analytic gradient, pre-flight; each parameter's context."""
        evaluator, layout = self.evaluator, self.layout
        base_value = base_loss(evaluator)
        # The plan by the base point's timing: workers that will pay start in the background
        # now, while the gradient and the pre-flight run; decided again on the refined timing.
        evaluator.plan(self.planned)
        analytic = analytic_gradient(self.grad, layout, self.base)
        # The first samples, and their blocks by the parameters' own precision, go to the
        # workers now: they evaluate while the pre-flight runs here (sent again below, the
        # stale blocks dropped, where the pre-flight finds the loss's precision coarser).
        provisional = [
            param_context(evaluator, p, analytic[p], self.options, self.loss_eps, 0.0)
            for p in range(len(layout.names))
        ]
        self.first = first_samples(provisional, [p.first for p in self.plan.params], self.seeds)
        checked = run_preflight(
            evaluator,
            base_value,
            self.grad,
            analytic,
            self.loss_eps,
            noise_rng=np.random.default_rng(self.seeds[-1]),
            nondet_tol=self.options.nondet_tol,
            sources=self.sources,
        )
        self.nonfinite = checked.nonfinite
        evaluator.plan(self.planned)
        noise = checked.noise
        # The precision the loss is really computed in (coarser than the parameters' for a
        # float32 loss of float64 parameters): it sets the default step and rtol.
        precision = noise.resolution(base_value, self.loss_eps)
        self.noise_info.update(loss_noise=noise.sigma, noise=noise.status, loss_precision=precision)
        self.warnings.extend(checked.warnings)
        for p, name in enumerate(layout.names):
            self.contexts[name] = param_context(
                evaluator, p, analytic[p], self.options, precision, noise.sigma
            )
        self.warnings.extend(
            precision_warnings(self.contexts, noise.sigma, base_value, self.loss_eps)
        )
        if precision != self.loss_eps:  # else the blocks sent are the ones the check asks for
            send_first_blocks([self.contexts[name] for name in layout.names], self.first[1])
        self._announce_cost()

    def _announce_cost(self) -> None:
        """The planned evaluations (settings) and the time they will take by the measured cost
        of one (timings); a check predicted to take over a minute says so on a terminal."""
        planned = self.planned
        self.noise_info["planned_evaluations"] = planned
        seconds = self.evaluator.base_seconds
        if seconds is None:
            return
        workers = max(1, getattr(self.evaluator.placement, "n_workers", 1))
        predicted = planned * seconds / (workers if planned * seconds > 1.0 else 1)
        self.timings["predicted"] = predicted
        if predicted > ANNOUNCE_SECONDS:
            o = self.options
            notice = cost_notice(predicted, planned, seconds, o.timeout, o.budget)
            # A progress display prints it on a line of its own, never on its bar's line.
            display = getattr(o.progress, "notice", None)
            if callable(display):
                display(notice)
            elif sys.stderr.isatty():
                print(notice, file=sys.stderr)

    def gather_evidence(self) -> None:
        """Each parameter's sample, probes and bisection."""
        # A progress object with a ``parameter(name, index, count)`` method hears which
        # parameter is being checked (the command line's --verbose lines and bar use it).
        announce = getattr(self.options.progress, "parameter", None)
        names = self.layout.names
        rngs, samples = self.first
        for p, name in enumerate(names):
            if callable(announce):
                announce(name, p, len(names))
            plan = self.plan.params[p]
            sink = EvidenceSink(self.contexts[name], self.nonfinite.get(name))
            self.unfinished = (name, sink)
            self.evidence[name] = gather_evidence(
                self.contexts[name],
                plan.first,
                rngs[p],
                probes=self.options.probes,
                slice_probes=self.options.slice_probes,
                nonfinite=self.nonfinite.get(name),
                grow_to=plan.grow_to,
                sink=sink,
                sample=samples[p],
            )
            self.unfinished = None

    def diagnose(self) -> None:
        """The likely cause of each failing parameter."""
        failing = [name for name in self.layout.names if not passes(self.evidence[name])]
        entries = {name: ev.entries for name, ev in self.evidence.items()}
        self.diagnoses.update(diagnose(self.contexts, entries, failing, self.nonfinite))

    def report(self, incomplete: str | None = None) -> Report:
        """The report of what was done (partial, with the reason, when ``incomplete``)."""
        self.timings["total"] = time.perf_counter() - self.start
        if incomplete is not None and self.unfinished is not None:
            # Stopped inside a parameter: keep the entries it finished.
            name, sink = self.unfinished
            partial = sink.partial()
            if partial is not None:
                self.evidence[name] = partial
        for name, ev in self.evidence.items():
            self.timings[f"param:{name}"] = ev.seconds
        results = {
            name: build_report(self.contexts[name], ev, self.diagnoses.get(name))
            for name, ev in self.evidence.items()
        }
        complete = incomplete is None
        return Report(
            params=results,
            passed=complete and all(r.passed for r in results.values()),
            warnings=(*self.warnings, *floor_warnings(results)),
            seed=self.options.seed,
            settings={**settings(self.options, self.evaluator.executor), **self.noise_info},
            n_evaluations=self.evaluator.n_evaluations,
            timings=self.timings,
            complete=complete,
            incomplete_reason=incomplete,
            version=__version__,
        )


#: A check predicted to take longer than this many seconds says so on stderr (a terminal).
ANNOUNCE_SECONDS = 60.0


@functools.lru_cache(maxsize=64)
def _seed_sequences(seed: int, n: int) -> tuple[np.random.SeedSequence, ...]:
    """``SeedSequence(seed).spawn(n)``, kept for the next check with the same seed (spawning
    costs ~15 us, a share of a tiny check); generators are made from them, never spawned."""
    return tuple(np.random.SeedSequence(seed).spawn(n))


def _timeout_message(timeout: float) -> str:
    return (
        f"time limit of {timeout:g} s (timeout={timeout:g}) reached; raise `timeout` or check "
        "fewer entries."
    )
