"""The public entry point: :func:`check`.

It reads as a pipeline: validate and normalise the inputs, evaluate the base point and the
analytic gradient, then for each parameter choose entries, choose steps, evaluate, compare,
and assemble the report. Each step lives in the module named for it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ._version import __version__
from .checking.advice import dtype_warnings, precision_warnings
from .checking.context import ParamCheck, param_context
from .checking.diagnosis import diagnose
from .checking.parameter import (
    Evidence,
    EvidenceSink,
    first_samples,
    gather_evidence,
    send_first_blocks,
)
from .checking.plan import plan_for
from .checking.preflight import analytic_gradient, base_loss, run_preflight
from .checking.promotion import floor_left, verify_in_float64
from .checking.verdict import build_report, floor_warnings, passes
from .errors import CheckAborted, GradCheckError, InvalidInputError, raised_at_the_call
from .evaluate import make_evaluator
from .evaluate.backends import joblib_backend
from .evaluate.threads import one_blas_thread
from .evaluate.watchdog import hard_deadline
from .layout import (
    ParamLayout,
    describe_fixed,
    normalize_params,
    promote_to_float64,
    validate_callable,
)
from .numerics.sampling import Sample
from .numerics.tolerances import loss_epsilon
from .options import (
    DEFAULT_PROBES,
    CheckOptions,
    settings,
    validate_options,
)
from .report.model import Diagnosis, Report
from .report.text import cost_notice


@raised_at_the_call
def check(
    loss: Callable[[Any], Any],
    grad: Any,
    params: Any,
    *,
    seed: int = 0,
    samples: Any = None,
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    method: str = "central",
    n_jobs: int | str = "auto",
    batched: bool = False,
    timeout: float | None = None,
    budget: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    promote: bool | str = "auto",
    probes: int | bool = DEFAULT_PROBES,
    slice_probes: bool = False,
    backend: str | None = None,
    nondet_tol: float | None = None,
    thread_safe: bool = False,
) -> Report:
    """Check an analytic gradient against finite differences (``method``: central, Richardson
    extrapolation or the complex step).

    Parameters
    ----------
    loss : callable
        ``loss(params) -> float``, called with a container of the same kind as ``params``.
    grad : callable or container
        ``grad(params) -> container of arrays`` (same names and shapes as ``params``; leaves
        held fixed may be left out), or the gradient already computed at ``params``.
    params : mapping, sequence, dataclass or ndarray
        Float arrays by name (``{"W1": ..., "b1": ...}``), a sequence of arrays (named "0",
        "1", ...), one array (named "x"), or a tree of those (nested dicts, lists, tuples,
        NamedTuples, dataclasses; names are paths such as ``"encoder.layers[0].W"``). Leaves
        that are not float arrays (ints, float scalars, strings, None, integer or bool arrays)
        are held fixed: passed to the loss as they are, never perturbed, listed in
        ``report.warnings`` (a gradient value given for a held float scalar is refused: pass
        ``np.array(x)`` to check it). Never modified.
    seed : int
        Seeds the choice of entries; the same seed gives the same report.
    samples : int, float, "all" or mapping, optional
        Entries of each parameter to check one by one: a count, a fraction in (0, 1], "all",
        or a mapping from parameter name to one of those. Default (adaptive): every entry of
        parameters with at most 192 entries; 48 stratified entries of larger ones, with probes
        covering the rest, grown to 512 where a sampled entry fails, a probe disagrees or the
        analytic gradient is not finite (so the diagnosis reads enough evidence).
    eps : float, optional
        Relative step: ``h = eps * max(1, |x|)``. Default ``EPS**(1/3)`` of the dtype.
    rtol, atol : float, optional
        An entry fails when ``|a - n| > max(rtol * (|a| + |n|), noise) + atol`` where ``noise``
        is the round-off floor of the difference quotient. Default rtol by dtype (float64 1e-5,
        float32 2e-3, float16 5e-2), atol 0.
    method : str
        Finite-difference scheme: ``"central"`` (2 evaluations per entry), ``"richardson"``
        (central at ``h`` and ``h/2`` extrapolated, 4 evaluations, error ~h**4) or
        ``"complex-step"`` (``Im L(x + ih) / h``, 1 evaluation, no cancellation; the loss must
        accept complex parameters and return a complex value). Central and Richardson
        re-evaluate a disagreeing entry at an 8x smaller step before failing it, and mark it
        a kink (not a failure) when its one-sided differences disagree across a
        non-differentiable point and the analytic value lies between them.
    n_jobs : int or "auto"
        Parallel workers (joblib conventions: 1 serial, -1 every core; the backend follows
        ``joblib.parallel_config``, processes by default, where this process is one of the
        ``n_jobs``). ``"auto"`` (the default) times the loss and uses every core only when the
        time saved pays for dispatching; the check never waits for workers to start. Every
        evaluation runs with one BLAS thread, so the report is the same for every value.
    batched : bool
        The loss takes every parameter with one extra leading axis (size B for the parameter
        being perturbed, size 1 for the others) and returns B losses, shape ``(B,)``: B
        perturbed models are evaluated per call.
    timeout : float, optional
        Seconds after which the check stops with :class:`gradprobe.CheckAborted`.
    budget : int, optional
        Maximum loss evaluations before stopping with :class:`gradprobe.CheckAborted`.
    probes : int or False
        Random directions probed over every entry of each parameter that is not checked in
        full (2 loss evaluations each, plus 4 for the pilot that sets the step); a failing
        probe is bisected down to the wrong entries. ``False`` or 0 turns probes off.
    slice_probes : bool
        Also probe each slice along the leading axis (each row), 2 evaluations per row.
    backend : str, optional
        Where ``n_jobs`` workers run: loky, threading, dask (the active Client), a joblib name.
    progress : callable, optional
        ``progress(done, total)`` called as loss evaluations are spent (per chunk), with
        ``total`` the planned count (extra work such as localization may push ``done`` past it).
        When it also has a ``parameter(name, index, count)`` method, that is called as each
        parameter's check begins.
    promote : bool or "auto"
        True: check parameters below float64 cast to float64. ``"auto"`` (default): where a
        float32 check leaves a parameter's entries at the round-off floor, check again in
        float64, or say what was not verified (:mod:`gradprobe.checking.promotion`).
    nondet_tol : float, optional
        Relative difference between repeated evaluations at the same parameters accepted as
        run-to-run jitter (summation order, atomics): the loss's two values, and each
        parameter's two gradients over its largest entry. Accepted jitter is folded into the
        noise floor (differences below it are noise, not gradient errors). Default 1e-12 (never
        below 16 ulps of the loss's dtype), with a warning when jitter is found; passing it
        silences the warning.
    thread_safe : bool
        The loss may run in several threads at once: it keeps no state between calls (no
        cached forward, no list appended to, no shared buffer written). Under
        ``n_jobs="auto"`` the check then measures in the pre-flight whether calls run in
        parallel on threads (numpy/BLAS code releases the GIL) and uses threads, each with its
        own copy of the parameters, where they do: no start-up, no pickling.
        ``report.measured["executor"]`` says which ran and why. Default False: processes.

    Notes
    -----
    Before any perturbation, the loss is evaluated a second time at the base point and the
    grad function called a second time (pre-flight): values differing beyond ``nondet_tol``
    raise :class:`NondeterministicLossError` (:class:`StatefulGradientError` when the loss
    repeats and grad does not: a buffer accumulated into or scaled in place), a loss or grad
    that writes into its arguments raises :class:`InvalidInputError`. NaN/inf entries of the
    analytic gradient fail their parameter (diagnosis ``"nonfinite"``) without stopping the
    check. Every failing parameter gets a :class:`Diagnosis` (``report.params[name].diagnosis``).

    Returns
    -------
    Report
        ``report.passed``, ``report.params[name]``, ``str(report)``, ``report.to_json()``...

    Raises
    ------
    InvalidInputError
        A bad argument, a non-scalar or non-finite loss at the base point, a gradient of the
        wrong names or shapes.
    LossEvaluationError
        The loss or grad raised; the message names the parameter and entry.
    NondeterministicLossError
        The loss or grad returned different values for the same parameters (beyond
        ``nondet_tol``); :class:`StatefulGradientError` when grad keeps state between calls.
    CheckAborted
        The time limit or evaluation budget ran out (``exc.partial_report`` keeps the results).
    """
    start = time.perf_counter()
    validate_callable("loss", loss)
    layout, base, sources = normalize_params(params, loss)
    options = validate_options(
        layout.names,
        seed=seed,
        samples=samples,
        eps=eps,
        rtol=rtol,
        atol=atol,
        method=method,
        n_jobs=n_jobs,
        batched=batched,
        timeout=timeout,
        budget=budget,
        progress=progress,
        promote=promote,
        probes=probes,
        slice_probes=slice_probes,
        backend=backend,
        nondet_tol=nondet_tol,
        thread_safe=thread_safe,
    )
    with joblib_backend(options.backend):  # where the workers come from (docs/scaling.md)
        report = _checked(_Run(loss, grad, layout, base, options, start, sources), options)
    if options.promote == "auto" and floor_left(report):  # recheck in float64
        kw = dict(seed=seed, samples=samples, eps=eps, rtol=rtol, atol=atol, method=method,
                  n_jobs=n_jobs, batched=batched, budget=budget, progress=progress, probes=probes,
                  slice_probes=slice_probes, backend=backend, nondet_tol=nondet_tol)  # fmt: skip
        left = None if timeout is None else max(1e-3, timeout - (time.perf_counter() - start))
        report = verify_in_float64(report, lambda: check(loss, grad, params, **kw, promote=True, timeout=left))  # fmt: skip
    return report


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
        self.seeds = np.random.SeedSequence(options.seed).spawn(len(layout.names) + 1)
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


def _timeout_message(timeout: float) -> str:
    return (
        f"time limit of {timeout:g} s (timeout={timeout:g}) reached; raise `timeout` or check "
        "fewer entries."
    )
