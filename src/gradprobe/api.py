"""The public entry point: :func:`check`.

It validates and normalises the inputs and options, once, here; the run itself
(:func:`gradprobe.checking.run.check_normalized`) reads as a pipeline: evaluate the base point
and the analytic gradient, then for each parameter choose entries, choose steps, evaluate,
compare, and assemble the report. Each step lives in the module named for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .checking.run import check_normalized, passed_to_recheck
from .errors import raised_at_the_call
from .layout import normalize_params, validate_callable
from .options import DEFAULT_PROBES, validate_options
from .report.model import Report


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
    raw = dict(seed=seed, samples=samples, eps=eps, rtol=rtol, atol=atol, method=method,
               n_jobs=n_jobs, batched=batched, timeout=timeout, budget=budget, progress=progress,
               promote=promote, probes=probes, slice_probes=slice_probes, backend=backend,
               nondet_tol=nondet_tol, thread_safe=thread_safe)  # fmt: skip
    options = validate_options(layout.names, **raw)
    kept = passed_to_recheck(raw)

    def recheck(**more: Any) -> Report:
        return check(loss, grad, params, **kept, **more)

    return check_normalized(loss, grad, layout, base, sources, options, recheck, start)
