"""Time per op_db sample: gradprobe.torch.check beside torch.autograd.gradcheck (issue 21).

The samples are the peer suite's (``tests/adapters/opdb_samples.py``: torch's OpInfo sample
inputs, the first of each op with at most 1,500 differentiable entries), float64, those
gradcheck passes. Each tree ("before": a commit's ``src`` extracted with ``git archive``,
default 39aca7e; "after": the ``src`` beside this script) runs in a fresh process that times,
for every sample, gradcheck and gradprobe one after the other (best of ``--reps``), so both see
the same machine state. Prints the medians, their ratio, the median of the per-sample ratios,
and the ratio by sample size. The goal (issue 21): gradprobe's median no slower than
gradcheck's.

    python benchmarks/bench_opdb.py [--before REV] [--every 1] [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "39aca7e"
BUCKETS = ((0, 2), (3, 10), (11, 40), (41, 200), (201, 1500))


def _child(every: int, reps: int) -> None:
    """In the child (gradprobe from $PYTHONPATH): one line of JSON per sample."""
    warnings.simplefilter("ignore")
    sys.path.insert(0, str(HERE))
    from tests.adapters.opdb_samples import gradcheck_passes, opdb_samples

    import gradprobe.torch as gt

    rows = []
    for i, sample in enumerate(opdb_samples()):
        if i % every:
            continue
        fn, inputs = sample.build()
        tol = sample.op.gradcheck_nondet_tol
        if not gradcheck_passes(fn, inputs, tol):
            continue
        gc, gp = [], []
        for _ in range(reps):
            start = time.perf_counter()
            gradcheck_passes(fn, inputs, tol)
            gc.append(time.perf_counter() - start)
            start = time.perf_counter()
            try:
                gt.check(fn, *inputs)
            except Exception:  # refused (nothing left to check): timed all the same
                pass
            gp.append(time.perf_counter() - start)
        rows.append({"name": sample.name, "entries": sample.entries, "gc": min(gc), "gp": min(gp)})
    print(json.dumps({"file": gt.__file__, "rows": rows}))


def _run(src: Path, every: int, reps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--every", str(every), "--reps", str(reps)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _summary(rows: list[dict]) -> dict:
    gp, gc = [r["gp"] for r in rows], [r["gc"] for r in rows]
    out = {
        "samples": len(rows),
        "gradprobe_ms": 1e3 * statistics.median(gp),
        "gradcheck_ms": 1e3 * statistics.median(gc),
        "ratio_of_medians": statistics.median(gp) / statistics.median(gc),
        "median_of_ratios": statistics.median(r["gp"] / r["gc"] for r in rows),
    }
    for lo, hi in BUCKETS:
        part = [r["gp"] / r["gc"] for r in rows if lo <= r["entries"] <= hi]
        out[f"{lo}-{hi}"] = (len(part), statistics.median(part) if part else float("nan"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE_COMMIT, help="the commit to compare with")
    parser.add_argument("--every", type=int, default=1, help="every k-th op_db sample")
    parser.add_argument("--reps", type=int, default=3, help="best of this many, each tool")
    parser.add_argument("--json", help="write the rows and the summary here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.every, args.reps)
        return
    import numpy
    import torch

    sys.path.insert(0, str(HERE / "benchmarks"))
    from bench_speed import extract_src

    before, note = extract_src(HERE, args.before)
    trees = {"before": before, "after": HERE / "src"}
    results = {name: _run(src, args.every, args.reps) for name, src in trees.items()}
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}, numpy {numpy.__version__}, torch {torch.__version__}"
    )
    print(f"- before: {before} ({note}); after: {trees['after']}")
    print(
        "\n| tree | samples | gradprobe median (ms) | gradcheck median (ms) | ratio of medians "
        "| median of ratios | "
        + " | ".join(f"ratio, {lo}-{hi} entries" for lo, hi in BUCKETS)
        + " |"
    )
    print("|---" * (6 + len(BUCKETS)) + "|")
    summaries = {}
    for name, res in results.items():
        s = summaries[name] = _summary(res["rows"])
        buckets = " | ".join(
            f"{s[f'{lo}-{hi}'][1]:.2f} ({s[f'{lo}-{hi}'][0]})" for lo, hi in BUCKETS
        )
        print(
            f"| {name} | {s['samples']} | {s['gradprobe_ms']:.2f} | {s['gradcheck_ms']:.2f} | "
            f"{s['ratio_of_medians']:.2f}x | {s['median_of_ratios']:.2f}x | {buckets} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "summary": summaries}, indent=1))


if __name__ == "__main__":
    main()
