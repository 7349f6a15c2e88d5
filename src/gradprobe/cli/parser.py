"""The command line's arguments: subcommands, flags, and the check options given as flags.

Every option of :func:`gradprobe.check` with a ``--flag`` takes its help and parsing from
:mod:`gradprobe.options`, and its value is checked by the same validator as ``check``'s
(:func:`check_options`), so a bad value stops before anything runs, naming the flag.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from .._version import __version__
from ..errors import InvalidInputError
from ..examples import MLP_BUGS
from ..options import OPTIONS, Option, option_problem

#: The options of gradprobe.check that have a --flag (the check subcommand has them all).
FLAG_OPTIONS = tuple(o for o in OPTIONS.values() if o.from_text is not None)

EPILOG = (
    "exit codes: 0 gradients match, 1 a gradient mismatch (or a regression), 2 a usage, "
    "configuration or input error (before any check runs), 3 a check crashed or stopped early "
    "(timeout, budget), 130 interrupted by Ctrl-C, 143 by SIGTERM (after writing what "
    "finished). "
    "NO_COLOR=1 turns colour off."
)


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
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument(
        "-q", "--quiet", action="store_true", help="print only the summary (and no progress bar)"
    )
    talk.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print progress lines, each parameter's settings and the timings",
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
    """The ``gradprobe`` parser with its ``demo``, ``check`` and ``run`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="gradprobe",
        description="Check hand-written gradients against finite differences.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"gradprobe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="check the built-in example MLP (optionally with a planted bug)",
        description="Check the built-in tanh MLP with hand-written backprop.",
        epilog=EPILOG,
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
        "('path/to/models.py:function' or 'module:function', imported with the current "
        "folder on sys.path).",
        epilog=EPILOG,
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
    _add_check_options(one, [o.name for o in FLAG_OPTIONS])
    _add_output_options(one)
    _add_suite_options(one)

    run = sub.add_parser(
        "run",
        help="run a suite of named checks (gradprobe.toml or [tool.gradprobe])",
        description="Run the checks of a suite file: SUITE, or ./gradprobe.toml, or "
        "[tool.gradprobe] in ./pyproject.toml.",
        epilog=EPILOG,
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
    run.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="run up to N checks at once, each in its own worker process, the cores divided "
        "between them (default: [run] jobs, else 1)",
    )
    run.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="send each check as a task to the Dask cluster at ADDRESS, e.g. "
        "tcp://host:8786 (default: $GRADPROBE_SCHEDULER, else [run] scheduler)",
    )
    _add_check_options(run, ("seed",), seed_help="seed for every selected check")
    _add_output_options(run)
    _add_suite_options(run)
    return parser


def check_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given as flags, checked by gradprobe.check's own validator (a bad value
    stops before anything runs, naming the flag)."""
    options: dict[str, Any] = {}
    for option in FLAG_OPTIONS:
        value = getattr(args, option.name, None)
        if value is None:
            continue
        problem = option_problem(option.name, value)
        if problem is not None:
            raise InvalidInputError(f"{option.flag}: {problem}.")
        options[option.name] = value
    return options
