"""How close each finite-difference path comes to the arithmetic limit of the machine.

Run: ``python benchmarks/bench_limits.py [--repeats 5]``. For the example MLPs, the limit of
any path that evaluates perturbed models one by one (or B at a time, as ``batched=True`` does
with a loss that runs one matrix product per copy) is

    limit = 2 * entries * (multiply-adds per forward pass) / (the BLAS rate, multiply-adds/s)

with the BLAS rate measured here on a float64 matrix product at one thread (the rate every
gradprobe evaluation runs at) and at every thread. A path's "share of the limit" is
``limit / wall``: 1.0 would be pure arithmetic with no overhead; the rest is Python call
overhead, element-wise work (tanh, softmax, copies) and products too small for BLAS's peak.
Prints a markdown table (medians over repeats).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

import gradprobe
from gradprobe.examples import make_mlp


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def blas_rate(threads: int, n: int = 512, repeats: int = 7) -> float:
    """Multiply-adds per second of an n x n x n float64 product at ``threads`` BLAS threads."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    with threadpool_limits(threads, user_api="blas"):
        wall = median_time(lambda: a @ b, repeats)
    return n**3 / wall


def macs_per_forward(sizes: tuple[int, ...], batch: int) -> int:
    return batch * sum(a * b for a, b in itertools.pairwise(sizes))


def per_entry_loop(loss, params, entries):
    for name, idx in entries.items():
        flat = params[name].reshape(-1)
        for i in idx:
            saved = flat[i]
            h = 6.06e-6 * max(1.0, abs(saved))
            flat[i] = saved + h
            loss(params)
            flat[i] = saved - h
            loss(params)
            flat[i] = saved


def bench(sizes, batch, per_param, repeats, rate1):
    m = make_mlp(sizes, batch=batch)
    rng = np.random.default_rng(0)
    entries = {
        k: np.sort(rng.choice(v.size, min(v.size, per_param), replace=False))
        for k, v in m.params.items()
    }
    n = sum(i.size for i in entries.values())
    samples = {k: int(i.size) for k, i in entries.items()}
    macs = macs_per_forward(sizes, batch)
    limit = 2 * n * macs / rate1
    params = {k: v.copy() for k, v in m.params.items()}
    with threadpool_limits(1, user_api="blas"):
        loop1 = median_time(lambda: per_entry_loop(m.loss, params, entries), repeats)
    loop = median_time(lambda: per_entry_loop(m.loss, params, entries), repeats)
    serial = median_time(
        lambda: gradprobe.check(m.loss, m.grad, m.params, samples=samples, n_jobs=1), repeats
    )
    auto = median_time(lambda: gradprobe.check(m.loss, m.grad, m.params, samples=samples), repeats)
    batched = median_time(
        lambda: gradprobe.check(m.batched_loss, m.grad, m.params, samples=samples, batched=True),
        repeats,
    )
    name = f"MLP {'-'.join(map(str, sizes))}, batch {batch}"
    print(
        f"\n### {name}: {n:,} entries, {macs:,} multiply-adds per forward pass; "
        f"arithmetic limit {limit:.3f} s at one BLAS thread\n"
    )
    print("| path | median wall (s) | share of the limit | vs loop (all BLAS threads) |")
    print("|---|---|---|---|")
    for what, wall in [
        ("per-entry loop, 1 BLAS thread", loop1),
        ("per-entry loop, all BLAS threads", loop),
        ("gradprobe check, n_jobs=1", serial),
        ("gradprobe check, n_jobs='auto' (default)", auto),
        ("gradprobe check, batched=True", batched),
    ]:
        print(f"| {what} | {wall:.3f} | {limit / wall:.2f} | {loop / wall:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    rate1, rate_all = blas_rate(1), blas_rate(cores)
    print(
        f"BLAS rate (512^3 float64 product): {rate1 / 1e9:.2f} G multiply-adds/s at 1 thread, "
        f"{rate_all / 1e9:.2f} at {cores} threads"
    )
    bench((64, 32, 32, 10), 16, 10**9, args.repeats, rate1)  # every entry
    bench((784, 256, 128, 10), 64, 100, args.repeats, rate1)


if __name__ == "__main__":
    main()
