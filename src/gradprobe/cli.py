"""Command line: ``gradprobe demo [--bug KIND]``.

Exit codes: 0 gradients match, 1 a gradient mismatch, 2 usage, configuration or input error,
3 a check crashed or stopped early.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__
from .api import check
from .errors import CheckAborted, GradCheckError, InvalidInputError
from .examples import MLP_BUGS, make_mlp

__all__ = ["EXIT_CRASH", "EXIT_MISMATCH", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_CRASH = 0, 1, 2, 3


def _samples_arg(text: str) -> int | float | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'all', an int or a fraction, found {text!r}"
        ) from None


def _add_check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument(
        "--samples",
        type=_samples_arg,
        default=None,
        help="entries per parameter checked one by one: N, a fraction, or 'all'",
    )
    parser.add_argument("--n-jobs", default="1", help="parallel workers, -1 for all cores, 'auto'")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")


def _n_jobs(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise InvalidInputError(f"--n-jobs: expected an int or 'auto', found {text!r}") from None


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
    _add_check_options(demo)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    model = make_mlp(bug=args.bug)
    print(f"model: {model.name}")
    report = check(
        model.loss,
        model.grad,
        model.params,
        seed=args.seed,
        samples=args.samples,
        n_jobs=_n_jobs(args.n_jobs),
    )
    print(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(report.to_json())
    return EXIT_OK if report.passed else EXIT_MISMATCH


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
