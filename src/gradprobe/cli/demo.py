"""``gradprobe demo``: check the built-in tanh MLP, optionally with a planted backprop bug.

Prints the model and the report (``--quiet``: the summary line only; ``--verbose``: also each
parameter's settings and the timings), writes ``--json``/``--plot`` (paths checked before the
check runs), and exits 0 when the gradients match, 1 on a mismatch, 130 on Ctrl-C (143 on SIGTERM) after
printing and writing what finished.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..api import check
from ..examples import make_mlp
from ..report.files import write_text_atomic
from ..suites.outcome import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE
from ..suites.stopping import results_written, stop_exit_code, stop_name
from .console import Console
from .outputs import check_outputs, outputs_of, write_outputs
from .parser import check_options
from .summary import verbose_details


def run_demo(args: argparse.Namespace, console: Console) -> int:
    """The exit code of ``gradprobe demo``."""
    options = check_options(args)
    outputs = outputs_of(args)
    check_outputs(outputs)
    model = make_mlp(bug=args.bug)
    console.detail(f"model: {model.name}")
    code = None
    with console.progress() as bar:
        bar.start("demo")
        try:
            report = check(model.loss, model.grad, model.params, progress=bar, **options)
        except KeyboardInterrupt as exc:
            report = getattr(exc, "partial_report", None)
            code = stop_exit_code()
    if code is not None:
        console.err(
            f"gradprobe: interrupted ({stop_name()}); the report below holds the parameters "
            f"finished before it (exit code {stop_exit_code()})."
        )
        if report is None:
            return code
    else:
        code = EXIT_OK if report.passed else EXIT_MISMATCH
    _print(console, report)
    if not _write(console, outputs, report):
        code = max(code, EXIT_USAGE)
    results_written()
    return code


def _print(console: Console, report: Any) -> None:
    if console.quiet:
        console.out(report.summary_line())
        return
    console.out(str(report))
    if console.verbose:
        console.out("\n" + verbose_details(report))


def _write(console: Console, outputs: Any, report: Any) -> bool:
    def write_json(path: str) -> None:
        write_text_atomic(path, report.to_json())

    by_flag = {"--json": write_json, "--plot": report.plot}
    return write_outputs(
        console, [(out, lambda f=by_flag[out.flag], p=out.path: f(p)) for out in outputs]
    )
