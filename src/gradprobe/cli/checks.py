"""``gradprobe check TARGET`` and ``gradprobe run [SUITE]``: plan, run, print, write.

Everything that can be wrong with the command is found before the first check runs (exit
code 2): the suite file and its targets, the flags, the target's arguments, the output paths,
the baseline file. Then each check runs (in a worker process unless ``--no-isolate``) and is
printed as it ends. Ctrl-C stops the run: the interrupted check keeps its partial report,
checks not started are listed as not run, the summary, ``--json`` and ``--junit`` cover what
finished, and the exit code is 130 (143 for SIGTERM, which acts as Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..report.files import write_text_atomic
from ..suites.outcome import EXIT_MISMATCH, EXIT_USAGE
from ..suites.stopping import results_written, stop_exit_code, stop_name
from .console import Console
from .outputs import Output, check_outputs, outputs_of, write_outputs
from .parser import FLAG_OPTIONS, check_options
from .summary import outcome_text, print_verdict, summary_table


@dataclasses.dataclass(frozen=True)
class _Run:
    """What ran: the result, and the checks Ctrl-C kept from running."""

    result: Any
    interrupted: bool
    not_run: tuple[str, ...]


def _quote_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        rel = path
    return shlex.quote(rel if not rel.startswith("..") else path)


def _specs_for_check(args: argparse.Namespace) -> list[Any]:
    from ..suites.config import CheckSpec
    from ..suites.targets import parse_target

    target = parse_target(args.target)
    target.find_problem()
    call_args = dict(args.args)
    problem = target.args_problem(call_args)
    if problem is not None:
        given = " ".join(f"--arg {k}={v}" for k, v in args.args)
        raise InvalidInputError(
            f"{given}: {problem}. Pass only the function's arguments: {target.args_example('cli')}."
        )
    spec = CheckSpec(
        name=target.function,
        target=target,
        args=call_args,
        options=check_options(args),
        isolate=not args.no_isolate,
    )
    return [spec]


def _specs_for_run(args: argparse.Namespace) -> tuple[list[Any], Any]:
    from ..suites.config import load_suite
    from ..suites.select import select_checks

    suite = load_suite(args.suite)
    chosen = select_checks(suite, args.keyword, args.names)
    if not chosen:
        raise InvalidInputError(
            f"-k {args.keyword!r}: no check of {_quote_path(suite.path)} matches; checks there: "
            f"{list(suite.names)}."
        )
    overrides = check_options(args)
    specs = [
        dataclasses.replace(
            c,
            options={**c.options, **overrides},
            isolate=c.isolate and not args.no_isolate,
        )
        for c in chosen
    ]
    return specs, suite


def _reproduce(args: argparse.Namespace, outcome: Any, suite: Any) -> str:
    parts = ["gradprobe"]
    if args.command == "run":
        parts += ["run", _quote_path(suite.path), "--check", shlex.quote(outcome.name)]
    else:
        parts += ["check", _quote_path(args.target) if ".py" in args.target else args.target]
        for key, value in args.args:
            text = value if isinstance(value, str) else json.dumps(value)
            parts += ["--arg", shlex.quote(f"{key}={text}")]
    parts += ["--seed", str(outcome.seed)]
    for option in FLAG_OPTIONS:
        value = getattr(args, option.name, None)
        if option.name != "seed" and value is not None:
            parts += [option.flag, shlex.quote(str(value))]
    if args.no_isolate:
        parts.append("--no-isolate")
    return " ".join(parts)


def run_checks(args: argparse.Namespace, console: Console) -> int:
    """``gradprobe check`` and ``gradprobe run``: the exit code."""
    if args.command == "run":
        from .fanout import fan_out_of

        specs, suite = _specs_for_run(args)
        label = f"suite {_quote_path(suite.path)}"
        args.fan_out = fan_out_of(args, suite)
    else:
        specs, suite = _specs_for_check(args), None
        label = f"target {args.target}"
    outputs = outputs_of(args)
    check_outputs(outputs)
    baseline = None
    if args.baseline:
        from ..suites.baseline import load_baseline

        baseline = load_baseline(args.baseline)  # fail early (exit 2) on a bad file
    if getattr(args, "fan_out", None) is not None:
        from ..suites.schedule import known_seconds, last_run_seconds

        # How long each check took before, so that --jobs starts the longest first.
        args.seconds = (
            known_seconds(baseline.outcomes)
            if baseline is not None
            else last_run_seconds(args.json)
        )
    run = _run_specs(args, console, specs, suite, label)
    result = run.result
    code = result.exit_code
    if run.interrupted:
        code = max(code, stop_exit_code())
    console.out(
        ("" if console.quiet else "\n") + "summary:\n" + summary_table(console, result.outcomes)
    )
    regressions: dict[str, list[str]] = {}
    regressed: list[str] = []
    disappeared: tuple[str, ...] = ()
    if baseline is not None:
        comparison = _compare_with_baseline(args, console, result, baseline, suite)
        regressions = comparison.by_check()
        # The totals line names all the baseline flags: grown errors, checks that passed
        # there and fail now, and checks it has that this run lacks.
        regressed = list(dict.fromkeys([*regressions, *comparison.newly_failing]))
        disappeared = comparison.disappeared
        if comparison.has_regressions:
            code = max(code, EXIT_MISMATCH)
    code = _write(args, console, outputs, result, code, regressions)
    results_written()
    print_verdict(console, result, code, regressed, run.not_run, disappeared)
    return code


def _run_specs(
    args: argparse.Namespace, console: Console, specs: Sequence[Any], suite: Any, label: str
) -> _Run:
    """Run each check (one after another, or side by side with ``--jobs`` / on a cluster with
    ``--scheduler``), printing each outcome as it ends in suite order; stop at Ctrl-C (the
    checks in progress are kept, marked interrupted)."""
    from ..suites.runner import SuiteResult, now_iso, versions

    vers = versions()
    n = len(specs)
    fan_out = getattr(args, "fan_out", None)
    if not console.quiet:
        how = "" if fan_out is None else f" · {fan_out.describe()}"
        console.out(
            f"gradprobe {vers['gradprobe']} · python {vers['python']} · numpy {vers['numpy']} · "
            f"numba {vers['numba']} · {label} · {n} check{'s' * (n != 1)}{how}"
        )
    if fan_out is not None:
        from .fanout import run_fanned_out

        outcomes, interrupted = run_fanned_out(
            console,
            specs,
            fan_out,
            lambda o: _reproduce(args, o, suite),
            getattr(args, "seconds", None),
        )
    else:
        outcomes, interrupted = _run_serially(args, console, specs, suite)
    ran = {o.name for o in outcomes}
    not_run = tuple(s.name for s in specs if s.name not in ran)
    if interrupted:
        where = f" during {outcomes[-1].name}" if outcomes and fan_out is None else ""
        console.err(
            f"gradprobe: interrupted ({stop_name()}){where}: {len(outcomes)} of {n} checks ran, "
            f"{len(not_run)} not run; the summary and outputs below cover what finished "
            f"(exit code {stop_exit_code()})."
        )
    result = SuiteResult(
        outcomes=tuple(outcomes),
        suite=None if suite is None else (suite.given or suite.path),
        versions=vers,
        created=now_iso(),
        not_run=not_run,
    )
    return _Run(result=result, interrupted=interrupted, not_run=not_run)


def _run_serially(
    args: argparse.Namespace, console: Console, specs: Sequence[Any], suite: Any
) -> tuple[list[Any], bool]:
    """The checks one after another under a progress display."""
    from ..suites.isolation import IsolatedWorker
    from ..suites.runner import CheckOutcome, run_check

    n = len(specs)
    outcomes: list[Any] = []
    interrupted = False
    current = None
    try:
        # One worker process runs the isolated checks one after another (a fresh one after a
        # check that had to be killed); it is stopped when the loop ends, Ctrl-C included.
        with IsolatedWorker() as worker, console.progress() as bar:
            for i, spec in enumerate(specs, 1):
                current = spec
                bar.start(f"[{i}/{n}] {spec.name}")
                outcome = run_check(spec, progress=bar, worker=worker)
                outcome = dataclasses.replace(outcome, reproduce=_reproduce(args, outcome, suite))
                outcomes.append(outcome)
                text = outcome_text(console, outcome, i, n)
                if console.quiet:
                    pass
                elif getattr(bar, "active", False):
                    bar.print(text)
                else:
                    console.out(text)
                if outcome.status == "interrupted":
                    interrupted = True
                    break
    except KeyboardInterrupt:  # between checks, or while printing one
        interrupted = True
        if current is not None and (not outcomes or outcomes[-1].name != current.name):
            stopped = CheckOutcome(
                name=current.name,
                target=current.target.text,
                status="interrupted",
                message=f"interrupted ({stop_name()}); no parameter had finished.",
                options=dict(current.options),
                args=dict(current.args),
            )
            outcomes.append(
                dataclasses.replace(stopped, reproduce=_reproduce(args, stopped, suite))
            )
    return outcomes, interrupted


def _compare_with_baseline(
    args: argparse.Namespace, console: Console, result: Any, baseline: Any, suite: Any
) -> Any:
    """Compare with ``--baseline`` (the checks that ran), print the differences, and return
    the :class:`BaselineComparison`."""
    from ..suites.baseline import DEFAULT_FACTOR, compare

    ran = {o.name for o in result.outcomes}
    known = set(suite.names) if suite is not None else ran
    # A check left out by -k/--check (or by Ctrl-C) did not disappear: compare only what ran.
    kept = tuple(o for o in baseline.outcomes if o.name in ran or o.name not in known)
    comparison = compare(
        result,
        dataclasses.replace(baseline, outcomes=kept),
        factor=args.regression_factor or DEFAULT_FACTOR,
    )
    lines = comparison.lines()
    console.out(
        f"\nbaseline {args.baseline} (regression factor {comparison.factor:g}): "
        + ("no regressions" if not lines else "")
    )
    for line in lines:
        console.out(f"  {line}")
    return comparison


def _write(
    args: argparse.Namespace,
    console: Console,
    outputs: Sequence[Output],
    result: Any,
    code: int,
    regressions: dict[str, list[str]],
) -> int:
    """Write ``--junit``, ``--plot``, then ``--json``; return the exit code: at least 2 when
    one could not be written (``--json`` records that code, the one the process exits with)."""
    final = [code]

    def write_json(path: str) -> None:
        data = result.to_dict()
        data["exit_code"] = final[0]
        write_text_atomic(path, json.dumps(data, indent=2))

    def write_junit(path: str) -> None:
        from ..suites.junit import write_junit

        name = Path(result.suite).stem if result.suite else "gradprobe"
        write_junit(path, result, name=name, regressions=regressions)

    def write_plot(path: str) -> None:
        from ..report.plot import plot_reports

        reports = {o.name: o.report for o in result.outcomes if o.report is not None}
        if reports:
            plot_reports(reports, path)
        else:
            console.err(f"gradprobe: no report to plot; {path} not written")

    by_flag = {"--json": write_json, "--junit": write_junit, "--plot": write_plot}
    others = [out for out in outputs if out.flag != "--json"]
    if not write_outputs(
        console, [(out, lambda f=by_flag[out.flag], p=out.path: f(p)) for out in others]
    ):
        final[0] = max(code, EXIT_USAGE)
    json_out = [out for out in outputs if out.flag == "--json"]
    if not write_outputs(console, [(out, lambda p=out.path: write_json(p)) for out in json_out]):
        final[0] = max(final[0], EXIT_USAGE)
    return final[0]
