"""gradprobe's adapters beside the frameworks' own gradient checks, on the same functions.

A layer norm with a hand-written backward, as a ``torch.autograd.Function`` and as a
``jax.custom_vjp``: a correct one and one whose backward gets a single entry of the input
gradient wrong by 50%, in float64 and float32. Each is checked by

- ``gradprobe.torch.check`` / ``gradprobe.jax.check`` (defaults: the adaptive sample per input,
  directional probes over every entry, bisection to the wrong entries);
- ``torch.autograd.gradcheck`` in slow mode (the full Jacobian, numerical and analytical: its
  memory is ``2 * inputs * outputs * 8`` bytes, so large sizes are skipped past ``--max-gb``)
  and in fast mode (one random projection ``v^T J u`` per input; on a failure it computes the
  full Jacobians for its message, which past ``--max-gb`` is skipped and the row says so);
- ``jax.test_util.check_grads`` (order 1, reverse mode: a random direction),

with each tool's default tolerances, as a user would call it. Columns: wall time (median of
``--repeats``; JAX's times include compiling, which every new check pays), entries covered,
verdict (a failure of the correct function is a false alarm, a pass of the buggy one a miss),
and whether the wrong entry was named. Prints one table.

    python benchmarks/bench_frameworks.py [--rows 32 --cols 256 --repeats 3]

The README's goals for this table: gradprobe at least 20x faster than gradcheck's slow mode,
with every entry covered and the wrong entry named; no false alarm in float32 where gradcheck
raises one.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import numpy as np

import gradprobe


@dataclass
class Row:
    framework: str
    dtype: str
    function: str
    tool: str
    seconds: float | None
    covered: str
    verdict: str
    localized: str


def _timed(run: Callable[[], tuple[str, str, str]], repeats: int) -> tuple[float, str, str, str]:
    times, outcome = [], ("", "", "")
    for _ in range(repeats):
        start = time.perf_counter()
        outcome = run()
        times.append(time.perf_counter() - start)
    # Progress on stderr: the slow mode of gradcheck can take minutes.
    print(f"  {getattr(run, '__name__', 'run')}: {times[-1]:.3g} s, {outcome[1]}", file=sys.stderr)
    return statistics.median(times), *outcome


def _verdict(failed: bool, buggy: bool) -> str:
    if buggy:
        return "caught" if failed else "MISSED"
    return "FALSE ALARM" if failed else "passed"


def _gradprobe_outcome(report, bad: tuple[int, int], buggy: bool) -> tuple[str, str, str]:
    x = report.params["input0"]
    total = sum(p.n_total for p in report.params.values())
    every = all(
        p.n_checked == p.n_total or (p.coverage is not None and p.coverage.n_probed == p.n_total)
        for p in report.params.values()
    )
    checked = sum(p.n_checked for p in report.params.values())
    covered = f"{checked:,}/{total:,} one by one" + (", every entry probed" if every else "")
    localized = "-" if not buggy else ("yes" if bad in x.bad_indices else "no")
    if buggy and x.bad_indices:
        localized += f" {list(x.bad_indices[:3])}"
    verdict = _verdict(not report.passed, buggy)
    at_floor = sum(p.n_at_floor for p in report.params.values())
    if report.passed and at_floor:  # the report says these entries were not verified
        verdict += f" ({at_floor:,} of {checked:,} at the round-off floor)"
    return covered, verdict, localized


# -- PyTorch ----------------------------------------------------------------------------------
def torch_rows(rows: int, cols: int, repeats: int, max_gb: float) -> list[Row]:
    import torch
    from torch.autograd.gradcheck import GradcheckError

    gradcheck_module = sys.modules["torch.autograd.gradcheck"]

    import gradprobe.torch

    bad = (rows // 2 + 1, cols // 3)

    def parts(x, w, b):
        xc = x - x.mean(-1, keepdim=True)
        rstd = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + 1e-5)
        return xc * rstd * w + b, xc * rstd, rstd

    def make(bug: bool):
        class LayerNorm(torch.autograd.Function):
            generate_vmap_rule = True

            @staticmethod
            def forward(x, w, b):
                return parts(x, w, b)[0]

            @staticmethod
            def setup_context(ctx, inputs, output):
                _, xhat, rstd = parts(*inputs)
                ctx.save_for_backward(xhat, rstd, inputs[1])

            @staticmethod
            def backward(ctx, g):
                xhat, rstd, w = ctx.saved_tensors
                gh = g * w
                gx = rstd * (
                    gh - gh.mean(-1, keepdim=True) - xhat * (gh * xhat).mean(-1, keepdim=True)
                )
                if bug:
                    gx = gx.clone()
                    gx[bad] *= 1.5
                return gx, (g * xhat).sum(0), g.sum(0)

        return LayerNorm.apply

    out: list[Row] = []
    n_in, n_out = rows * cols + 2 * cols, rows * cols
    for dtype in (torch.float64, torch.float32):
        gen = torch.Generator().manual_seed(0)
        base = [
            torch.randn(rows, cols, dtype=dtype, generator=gen) * 2 + 0.5,
            torch.randn(cols, dtype=dtype, generator=gen),
            torch.randn(cols, dtype=dtype, generator=gen),
        ]
        inputs = [t.requires_grad_() for t in base]
        name = str(dtype).removeprefix("torch.")
        for buggy in (False, True):
            fn = make(buggy)
            label = "one wrong entry" if buggy else "correct"

            def run_gradprobe(fn=fn, buggy=buggy, inputs=inputs):
                return _gradprobe_outcome(gradprobe.torch.check(fn, *inputs), bad, buggy)

            t, *res = _timed(run_gradprobe, repeats)
            out.append(Row("torch", name, label, "gradprobe.torch.check", t, *res))
            for fast in (False, True):
                tool = f"gradcheck ({'fast' if fast else 'slow'} mode)"
                gb = 2 * n_in * n_out * 8 / 2**30
                if not fast and gb > max_gb:
                    out.append(
                        Row(
                            "torch",
                            name,
                            label,
                            tool,
                            None,
                            f"skipped: Jacobians {gb:.1f} GB > --max-gb",
                            "-",
                            "-",
                        )
                    )
                    continue

                def run_gradcheck(fn=fn, fast=fast, buggy=buggy, inputs=inputs):
                    # On a failure, fast mode computes the full Jacobians (slow mode) for its
                    # message; past --max-gb that step is skipped and the row says so.
                    skip_message = fast and 2 * n_in * n_out * 8 / 2**30 > max_gb
                    patch = (
                        mock.patch.object(
                            gradcheck_module,
                            "_run_slow_mode_and_get_error",
                            lambda *a, **k: "(full Jacobians skipped by the benchmark)",
                        )
                        if skip_message
                        else contextlib.nullcontext()
                    )
                    with warnings.catch_warnings(), patch:
                        warnings.simplefilter("ignore")  # "not a double precision" inputs
                        try:
                            torch.autograd.gradcheck(fn, inputs, fast_mode=fast)
                            failed = False
                        except GradcheckError:
                            failed = True
                    covered = (
                        "1 random projection per input" if fast else f"all {n_in:,} (full Jacobian)"
                    )
                    if failed and skip_message:
                        covered += "; failure's Jacobians not computed"
                    return (
                        covered,
                        _verdict(failed, buggy),
                        "-" if not buggy else "no (prints the Jacobians)",
                    )

                t, *res = _timed(run_gradcheck, 1 if not fast else repeats)
                out.append(Row("torch", name, label, tool, t, *res))
    return out


# -- JAX --------------------------------------------------------------------------------------
def jax_rows(rows: int, cols: int, repeats: int) -> list[Row]:
    import jax
    import jax.numpy as jnp
    from jax.test_util import check_grads

    import gradprobe.jax

    bad = (rows // 2 + 1, cols // 3)

    def parts(x, w, b):
        xc = x - x.mean(-1, keepdims=True)
        rstd = 1.0 / jnp.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5)
        return xc * rstd * w + b, (xc * rstd, rstd, w)

    def make(bug: bool):
        @jax.custom_vjp
        def layer_norm(x, w, b):
            return parts(x, w, b)[0]

        def backward(res, g):
            xhat, rstd, w = res
            gh = g * w
            gx = rstd * (
                gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True)
            )
            if bug:
                gx = gx.at[bad].multiply(1.5)
            return gx, (g * xhat).sum(0), g.sum(0)

        layer_norm.defvjp(parts, backward)
        return layer_norm

    out: list[Row] = []
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((rows, cols)) * 2 + 0.5,
        rng.standard_normal(cols),
        rng.standard_normal(cols),
    ]
    for dtype in (np.float64, np.float32):
        with jax.enable_x64(dtype == np.float64):
            inputs = [jnp.asarray(a.astype(dtype)) for a in arrays]
            for buggy in (False, True):
                fn = make(buggy)
                label = "one wrong entry" if buggy else "correct"

                def run_gradprobe(fn=fn, buggy=buggy, inputs=inputs):
                    return _gradprobe_outcome(gradprobe.jax.check(fn, *inputs), bad, buggy)

                t, *res = _timed(run_gradprobe, repeats)
                out.append(Row("jax", np.dtype(dtype).name, label, "gradprobe.jax.check", t, *res))

                def run_check_grads(fn=fn, buggy=buggy, inputs=inputs):
                    try:
                        check_grads(fn, tuple(inputs), order=1, modes=("rev",))
                        failed = False
                    except AssertionError:
                        failed = True
                    return "1 random direction", _verdict(failed, buggy), "-" if not buggy else "no"

                t, *res = _timed(run_check_grads, repeats)
                out.append(Row("jax", np.dtype(dtype).name, label, "jax check_grads", t, *res))
    return out


def print_table(rows: list[Row]) -> None:
    head = (
        "framework",
        "dtype",
        "function",
        "tool",
        "wall s",
        "entries covered",
        "verdict",
        "bad entry localized?",
    )
    cells = [
        (
            r.framework,
            r.dtype,
            r.function,
            r.tool,
            "-" if r.seconds is None else f"{r.seconds:.3g}",
            r.covered,
            r.verdict,
            r.localized,
        )
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in [head, *cells]) for i in range(len(head))]
    for line in [head, *cells]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--cols", type=int, default=256)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per timing (gradcheck's slow mode runs once)"
    )
    parser.add_argument(
        "--max-gb",
        type=float,
        default=6.0,
        help="skip gradcheck's slow mode above this Jacobian memory",
    )
    parser.add_argument("--only", choices=["torch", "jax"], help="one framework")
    args = parser.parse_args()
    print(
        f"layer norm of a {args.rows}x{args.cols} input (+ weight and bias of {args.cols}); "
        f"{platform.processor() or platform.machine()}, {platform.python_version()}"
    )
    # gradprobe's one-time start (numba kernels loaded from the cache) stays out of the timings.
    gradprobe.check(lambda p: float(p.sum()), lambda p: np.ones_like(p), np.ones(3))
    rows: list[Row] = []
    if args.only in (None, "torch"):
        try:
            rows += torch_rows(args.rows, args.cols, args.repeats, args.max_gb)
        except ImportError as exc:
            print(f"torch rows skipped: {exc}")
    if args.only in (None, "jax"):
        try:
            rows += jax_rows(args.rows, args.cols, args.repeats)
        except ImportError as exc:
            print(f"jax rows skipped: {exc}")
    print_table(rows)


if __name__ == "__main__":
    main()
