"""The default ``n_jobs="auto"`` on the mid MLP with 2,000 sampled entries, against the loop.

Run: ``python benchmarks/bench_auto.py [--repeats 3]``. Prints a markdown table: the classic
per-entry loop (every BLAS thread), the default check (workers started and stopped per check
when the sample pays for them), ``n_jobs=1``, ``batched=True``, and the default with the
workers kept warm across checks (``gradprobe.keep_workers()``), medians over repeats after one
warm-up call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from bench_engine import per_entry_loop, sampled

import gradprobe
from gradprobe.examples import make_mlp


def median(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--entries", type=int, default=2000)
    args = ap.parse_args()
    m = make_mlp((784, 256, 128, 10), batch=64)
    entries = sampled(m.params, args.entries)
    samples = {k: len(i) for k, i in entries}
    params = {k: v.copy() for k, v in m.params.items()}
    r = args.repeats

    def check(**kw):
        return lambda: gradprobe.check(m.loss, m.grad, m.params, samples=samples, **kw)

    loop, _ = median(lambda: per_entry_loop(m.loss, params, entries), r)
    rows = [("per-entry loop (all BLAS threads)", loop, "")]
    wall, rep = median(check(), r)
    rows.append(("check, default n_jobs='auto'", wall, rep.measured["executor"]))
    rows.append(("check, n_jobs=1", median(check(n_jobs=1), r)[0], ""))
    wall, rep = median(
        lambda: gradprobe.check(m.batched_loss, m.grad, m.params, samples=samples, batched=True),
        r,
    )
    rows.append(("check, batched=True", wall, rep.measured["executor"]))
    with gradprobe.keep_workers():
        wall, rep = median(check(), r)
    rows.append(("check, default, warm workers (keep_workers)", wall, rep.measured["executor"]))
    print("| what | median wall (s) | vs loop | executor |")
    print("|---|---|---|---|")
    for what, wall, executor in rows:
        print(f"| {what} | {wall:.2f} | {loop / wall:.2f}x | {executor} |")


if __name__ == "__main__":
    main()
