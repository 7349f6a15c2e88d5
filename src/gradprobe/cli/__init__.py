"""Command line: ``gradprobe demo``, ``gradprobe check TARGET``, ``gradprobe run [SUITE]``.

The same error contract as the Python API, as exit codes:

- 0 gradients match;
- 1 a gradient mismatch (or a regression against ``--baseline``);
- 2 a usage, configuration or input error, found before any check runs, naming the flag, or
  the file, line and key (``GradCheckError``'s ``InvalidInputError`` in the API);
- 3 a check crashed (the user's code raised: its traceback trimmed to the user's frames) or
  stopped early (timeout, budget);
- 130 interrupted by Ctrl-C, after printing and writing (``--json``, ``--junit``) what
  finished, the interrupted check with its partial report;
- 143 the same for SIGTERM (what CI runners and ``timeout(1)`` send).

When several checks end differently, the largest code wins. Modules: :mod:`.parser` (the
arguments), :mod:`.console` (quiet, verbose, colour, closed pipes), :mod:`.outputs` (the files
written), :mod:`.demo`, :mod:`.checks` (``check`` and ``run``), :mod:`.summary` (their text).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence

from ..errors import CheckAborted, GradCheckError, InvalidInputError
from ..suites.outcome import EXIT_CRASH, EXIT_USAGE
from .console import Console
from .parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    ``argv`` None reads ``sys.argv``: the program itself (``gradprobe``, ``python -m
    gradprobe``), so a Ctrl-C or SIGTERM after the outputs are written stays ignored through
    the interpreter's exit, and the process exits with the code they record.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    console = Console(quiet=args.quiet, verbose=args.verbose)
    from ..suites.stopping import terminate_like_interrupt

    with terminate_like_interrupt(until_exit=argv is None):
        code = _guarded(args, console)
        # Now rather than at interpreter exit: a stop after the outputs are written is ignored
        # until this block ends (``results_written``), and the exit code stays theirs.
        with contextlib.suppress(KeyboardInterrupt):
            from ..evaluate.pool import shutdown_workers

            shutdown_workers()
    return code


def _guarded(args: argparse.Namespace, console: Console) -> int:
    """Run the command; turn what it raises into a message and an exit code."""
    try:
        return _dispatch(args, console)
    except InvalidInputError as exc:
        console.err(f"gradprobe: error: {exc}")
        return EXIT_USAGE
    except ImportError as exc:
        console.err(f"gradprobe: error: {exc}")
        return EXIT_USAGE
    except CheckAborted as exc:
        console.err(f"gradprobe: check stopped: {exc}")
        return EXIT_CRASH
    except GradCheckError as exc:
        from ..suites.tracebacks import crash_text

        console.err(f"gradprobe: check crashed: {crash_text(exc)}")
        return EXIT_CRASH
    except KeyboardInterrupt:
        # Before any check finished (loading the suite, importing a target) or a second
        # Ctrl-C while writing: nothing more to save.
        from ..suites.stopping import stop_exit_code, stop_name

        code = stop_exit_code()
        console.err(f"gradprobe: interrupted ({stop_name()}) (exit code {code}).")
        return code
    except BrokenPipeError:
        console.reader_gone()
        return EXIT_CRASH


def _dispatch(args: object, console: Console) -> int:
    command = getattr(args, "command", None)
    if command == "demo":
        from .demo import run_demo

        return run_demo(args, console)  # type: ignore[arg-type]
    if command in ("check", "run"):
        from .checks import run_checks

        return run_checks(args, console)  # type: ignore[arg-type]
    raise AssertionError(f"unhandled command {command!r}")
