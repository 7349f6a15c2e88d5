"""Command line: ``gradprobe demo``, ``gradprobe check TARGET``, ``gradprobe run [SUITE]``.

Exit codes: 0 gradients match, 1 a gradient mismatch (or a regression against ``--baseline``),
2 usage, configuration or input error, 3 a check crashed or stopped early (timeout, budget).
When several checks end differently, the largest code wins.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .api import check
from .errors import CheckAborted, GradCheckError, InvalidInputError
from .examples import MLP_BUGS, make_mlp
from .options import OPTIONS, Option, option_problem
from .report.text import align_columns
from .suites.outcome import EXIT_CRASH, EXIT_MISMATCH, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_CRASH", "EXIT_MISMATCH", "EXIT_OK", "EXIT_USAGE", "main"]


#: The options of gradprobe.check that have a --flag (the check subcommand has them all).
_FLAG_OPTIONS = tuple(o for o in OPTIONS.values() if o.from_text is not None)


def _flag_type(read: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` from an option's ``from_text`` (its ValueError message shown as
    is; ``int`` and ``float`` keep argparse's own "invalid int value" message)."""
    if read in (int, float):
        return read

    def convert(text: str) -> Any:
        try:
            return read(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _arg_pair(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, found {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # a bare string: --arg bug=sign
    return key, value


def _add_check_options(
    parser: argparse.ArgumentParser,
    names: Sequence[str],
    *,
    seed_default: int | None = None,
    seed_help: str | None = None,
) -> None:
    """Add the ``--flag`` of each named option (help and parsing from gradprobe.options)."""
    for name in names:
        option: Option = OPTIONS[name]
        assert option.from_text is not None, f"{name} has no command-line flag"
        default, text = None, option.help
        if name == "seed":
            default = seed_default
            if seed_help is not None:
                text = seed_help
            elif seed_default is not None:
                text += f" (default {seed_default})"
        parser.add_argument(
            option.flag, type=_flag_type(option.from_text), default=default, help=text
        )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", help="write the full results as JSON to PATH")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of relative errors to PATH")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only the summary (and no progress bar)"
    )


def _add_suite_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--junit", metavar="PATH", help="write JUnit XML (one testcase per check)")
    parser.add_argument(
        "--baseline",
        metavar="PATH",
        help="compare with an earlier --json result; regressions exit 1",
    )
    parser.add_argument(
        "--regression-factor",
        type=float,
        default=None,
        help="flag parameters whose max relative error grew by more than this (default 10)",
    )
    parser.add_argument(
        "--no-isolate",
        action="store_true",
        help="run checks in this process (no worker to kill if a loss call never returns)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradprobe",
        description="Check hand-written gradients against finite differences.",
    )
    parser.add_argument("--version", action="version", version=f"gradprobe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="check the built-in example MLP (optionally with a planted bug)",
        description="Check the built-in tanh MLP with hand-written backprop.",
    )
    demo.add_argument(
        "--bug",
        choices=sorted(MLP_BUGS),
        default=None,
        help="plant a backprop bug: " + "; ".join(f"{k}: {v[0]}" for k, v in MLP_BUGS.items()),
    )
    _add_check_options(demo, ("seed", "samples", "n_jobs"), seed_default=0)
    _add_output_options(demo)

    one = sub.add_parser(
        "check",
        help="run one check: a function returning gradprobe.Problem",
        description="Run the gradprobe.Problem returned by TARGET "
        "('path/to/models.py:function' or 'pkg.module:function').",
    )
    one.add_argument("target", help="path/to/models.py:function or pkg.module:function")
    one.add_argument(
        "--arg",
        dest="args",
        action="append",
        type=_arg_pair,
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for the target function (VALUE parsed as JSON, else a string)",
    )
    _add_check_options(one, [o.name for o in _FLAG_OPTIONS])
    _add_output_options(one)
    _add_suite_options(one)

    run = sub.add_parser(
        "run",
        help="run a suite of named checks (gradprobe.toml or [tool.gradprobe])",
        description="Run the checks of a suite file: SUITE, or ./gradprobe.toml, or "
        "[tool.gradprobe] in ./pyproject.toml.",
    )
    run.add_argument("suite", nargs="?", default=None, help="suite file or folder")
    run.add_argument(
        "-k",
        dest="keyword",
        default=None,
        metavar="EXPR",
        help="run checks whose names match, e.g. -k 'mlp and not bug'",
    )
    run.add_argument(
        "--check",
        dest="names",
        action="append",
        default=[],
        metavar="NAME",
        help="run the check with exactly this name (repeatable)",
    )
    _add_check_options(run, ("seed",), seed_help="seed for every selected check")
    _add_output_options(run)
    _add_suite_options(run)
    return parser


# -- demo -----------------------------------------------------------------------------------
def _run_demo(args: argparse.Namespace) -> int:
    model = make_mlp(bug=args.bug)
    print(f"model: {model.name}")
    report = check(model.loss, model.grad, model.params, **_cli_options(args))
    print(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(report.to_json())
    if args.plot:
        report.plot(args.plot)
    return EXIT_OK if report.passed else EXIT_MISMATCH


# -- check and run --------------------------------------------------------------------------
def _quote_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        rel = path
    return shlex.quote(rel if not rel.startswith("..") else path)


def _cli_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given as flags, checked by gradprobe.check's own validator (a bad value
    stops before anything runs, naming the flag)."""
    options: dict[str, Any] = {}
    for option in _FLAG_OPTIONS:
        value = getattr(args, option.name, None)
        if value is None:
            continue
        problem = option_problem(option.name, value)
        if problem is not None:
            raise InvalidInputError(f"{option.flag}: {problem}.")
        options[option.name] = value
    return options


def _specs_for_check(args: argparse.Namespace) -> list[Any]:
    from .suites.config import CheckSpec
    from .suites.targets import parse_target

    target = parse_target(args.target)
    target.find_problem()
    options = _cli_options(args)
    spec = CheckSpec(
        name=target.function,
        target=target,
        args=dict(args.args),
        options=options,
        isolate=not args.no_isolate,
    )
    return [spec]


def _specs_for_run(args: argparse.Namespace) -> tuple[list[Any], Any]:
    import dataclasses

    from .suites.config import load_suite
    from .suites.select import select_checks

    suite = load_suite(args.suite)
    chosen = select_checks(suite, args.keyword, args.names)
    if not chosen:
        raise InvalidInputError(
            f"-k {args.keyword!r}: no check of {suite.path} matches; checks there: "
            f"{list(suite.names)}."
        )
    overrides = _cli_options(args)
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
    for option in _FLAG_OPTIONS:
        value = getattr(args, option.name, None)
        if option.name != "seed" and value is not None:
            parts += [option.flag, shlex.quote(str(value))]
    if args.no_isolate:
        parts.append("--no-isolate")
    return " ".join(parts)


def _summary_rows(outcomes: Sequence[Any]) -> str:
    rows = [("check", "status", "max rel err", "evaluations", "time")]
    for o in outcomes:
        r = o.report
        if r is not None and r.params:
            shown = [p.headline_rel_error for p in r.params.values()]
            shown = [x for x in shown if not math.isnan(x)]
            mre = f"{max(shown):.2e}" if shown else "-"
        else:
            mre = "-"
        status = o.status.upper() if o.status != "passed" else o.status
        if r is not None and not r.complete and o.status != "passed":
            status += " (partial)"
        evals = f"{r.n_evaluations:,}" if r is not None else "-"
        rows.append((o.name, status, mre, evals, f"{o.duration:.2f} s"))
    return align_columns(rows)


def _run_checks(args: argparse.Namespace) -> int:
    """``gradprobe check`` and ``gradprobe run``: run, print, compare, write the outputs."""
    if args.command == "run":
        specs, suite = _specs_for_run(args)
        label = f"suite {_quote_path(suite.path)}"
    else:
        specs, suite = _specs_for_check(args), None
        label = f"target {args.target}"
    baseline = None
    if args.baseline:
        from .suites.baseline import load_baseline

        baseline = load_baseline(args.baseline)  # fail early (exit 2) on a bad file
    result = _run_specs(args, specs, suite, label)
    code = result.exit_code
    print("\nsummary:\n" + _summary_rows(result.outcomes))
    regressions: dict[str, list[str]] = {}
    if baseline is not None:
        comparison = _compare_with_baseline(args, result, baseline, specs, suite)
        regressions = comparison.by_check()
        if comparison.has_regressions:
            code = max(code, EXIT_MISMATCH)
    _print_verdict(result, code, regressions)
    _write_outputs(args, result, code, regressions)
    return code


def _run_specs(args: argparse.Namespace, specs: Sequence[Any], suite: Any, label: str) -> Any:
    """Run each check under a progress bar, printing each outcome; the :class:`SuiteResult`."""
    import dataclasses

    from .suites.progress import ProgressDisplay, progress_wanted
    from .suites.runner import SuiteResult, now_iso, run_check, versions

    vers = versions()
    print(
        f"gradprobe {vers['gradprobe']} · python {vers['python']} · numpy {vers['numpy']} · "
        f"numba {vers['numba']} · {label} · {len(specs)} check{'s' * (len(specs) != 1)}"
    )
    outcomes = []
    with ProgressDisplay(progress_wanted(args.quiet)) as bar:
        for i, spec in enumerate(specs, 1):
            bar.start(f"[{i}/{len(specs)}] {spec.name}")
            outcome = run_check(spec, progress=bar.update)
            outcome = dataclasses.replace(outcome, reproduce=_reproduce(args, outcome, suite))
            outcomes.append(outcome)
            if not args.quiet:
                bar.print(_outcome_text(outcome, i, len(specs)))
    return SuiteResult(
        outcomes=tuple(outcomes),
        suite=None if suite is None else suite.path,
        versions=vers,
        created=now_iso(),
    )


def _compare_with_baseline(
    args: argparse.Namespace, result: Any, baseline: Any, specs: Sequence[Any], suite: Any
) -> Any:
    """Compare with ``--baseline`` (the checks that ran), print the differences, and return
    the :class:`BaselineComparison`."""
    import dataclasses

    from .suites.baseline import DEFAULT_FACTOR, compare

    selected = {s.name for s in specs}
    known = set(suite.names) if suite is not None else selected
    # A check left out by -k/--check did not disappear: compare only what ran.
    kept = tuple(o for o in baseline.outcomes if o.name in selected or o.name not in known)
    comparison = compare(
        result,
        dataclasses.replace(baseline, outcomes=kept),
        factor=args.regression_factor or DEFAULT_FACTOR,
    )
    lines = comparison.lines()
    print(
        f"\nbaseline {args.baseline} (regression factor {comparison.factor:g}): "
        + ("no regressions" if not lines else "")
    )
    for line in lines:
        print(f"  {line}")
    return comparison


def _print_verdict(result: Any, code: int, regressions: dict[str, list[str]]) -> None:
    """The count of each status, the exit code, and a command reproducing each failing check."""
    told = ", ".join(f"{n} {s}" for s, n in result.counts.items() if n)
    print(f"\n{told} — exit code {code}")
    failing = [o for o in result.outcomes if o.status != "passed" or o.name in regressions]
    if failing:
        print("reproduce:")
        for o in failing:
            print(f"  {o.name}: {o.reproduce}")


def _write_outputs(
    args: argparse.Namespace, result: Any, code: int, regressions: dict[str, list[str]]
) -> None:
    """``--json``, ``--junit`` and ``--plot``."""
    if args.json:
        data = result.to_dict()
        data["exit_code"] = code
        Path(args.json).write_text(json.dumps(data, indent=2), encoding="utf-8")
    if args.junit:
        from .suites.junit import write_junit

        name = Path(result.suite).stem if result.suite else "gradprobe"
        write_junit(args.junit, result, name=name, regressions=regressions)
    if args.plot:
        from .report.plot import plot_reports

        reports = {o.name: o.report for o in result.outcomes if o.report is not None}
        if reports:
            plot_reports(reports, args.plot)
        else:
            print(f"gradprobe: no report to plot; {args.plot} not written", file=sys.stderr)


def _outcome_text(outcome: Any, i: int, n: int) -> str:
    head = f"── [{i}/{n}] {outcome.name} ({outcome.target}): {outcome.status.upper()} ──"
    parts = [head]
    if outcome.message:
        parts.append(outcome.message)
    if outcome.report is not None:
        parts.append(str(outcome.report))
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "demo":
            return _run_demo(args)
        if args.command in ("check", "run"):
            return _run_checks(args)
        raise AssertionError(f"unhandled command {args.command!r}")
    except InvalidInputError as exc:
        print(f"gradprobe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CheckAborted as exc:
        print(f"gradprobe: check stopped: {exc}", file=sys.stderr)
        return EXIT_CRASH
    except GradCheckError as exc:
        print(f"gradprobe: check crashed: {exc}", file=sys.stderr)
        return EXIT_CRASH
    except ImportError as exc:
        print(f"gradprobe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`gradprobe demo | head`): stop quietly, without a traceback
        # from the interpreter's final flush, and say that the output was cut short.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_CRASH


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
