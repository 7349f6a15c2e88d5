"""Side-by-side timings of gradprobe's executors against the classic per-entry loop.

Run: ``python benchmarks/bench_engine.py [--repeats 3] [--quick]``. Prints markdown tables:
median wall over repeats, entries/s and efficiency ``E = 2 * entries * T_forward / (cores *
wall)`` with ``T_forward`` one loss evaluation at one BLAS thread. torch's gradcheck runs when
torch is installed (``pip install torch==2.13.0``) and is skipped otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import joblib
import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import gradprobe
from gradprobe.examples import make_mlp
from gradprobe.examples.jitted import make_jitted_mlp


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def per_entry_loop(loss, params, entries):
    """The classic check: perturb one entry, evaluate, restore (every BLAS thread available)."""
    out = []
    for name, idx in entries:
        flat = params[name].reshape(-1)
        for i in idx:
            saved = flat[i]
            h = 6.06e-6 * max(1.0, abs(saved))
            flat[i] = saved + h
            fp = loss(params)
            flat[i] = saved - h
            fm = loss(params)
            flat[i] = saved
            out.append((fp - fm) / (2 * h))
    return out


def sampled(params, count, seed=0):
    rng = np.random.default_rng(seed)
    sizes = {k: v.size for k, v in params.items()}
    total = sum(sizes.values())
    if count >= total:
        return [(k, np.arange(n)) for k, n in sizes.items()]
    picks = np.sort(rng.choice(total, count, replace=False))
    starts = np.cumsum([0, *sizes.values()])
    return [
        (k, picks[(picks >= a) & (picks < b)] - a)
        for k, a, b in zip(sizes, starts[:-1], starts[1:], strict=True)
    ]


def row(what, wall, entries, t_fwd, cores, base):
    e = 2 * entries * t_fwd / (cores * wall)
    return f"| {what} | {wall:.3f} | {entries / wall:,.0f} | {e:.2f} | {base / wall:.2f}x |"


def header(title):
    print(f"\n### {title}\n")
    print("| what | median wall (s) | entries/s | E | vs per-entry loop |")
    print("|---|---|---|---|---|")


def t_forward(loss, params, blas=1, n=50):
    with threadpool_limits(blas, user_api="blas"):
        loss(params)
        return median_time(lambda: loss(params), n)


def bench_mlp(sizes, batch, count, repeats, core_list, torch_ok):
    m = make_mlp(sizes=sizes, batch=batch)
    n_params = sum(v.size for v in m.params.values())
    entries = sampled(m.params, count)
    n = sum(len(i) for _, i in entries)
    samples = "all" if n == n_params else {k: len(i) for k, i in entries}
    tf1 = t_forward(m.loss, m.params, 1)
    tf2 = t_forward(m.loss, m.params, os.cpu_count())
    print(
        f"\nWorkload: {m.name}; {n_params:,} params, {n:,} entries checked; T_forward "
        f"{tf1 * 1e6:,.0f} us (1 BLAS thread), {tf2 * 1e6:,.0f} us ({os.cpu_count()} threads)"
    )
    params = {k: v.copy() for k, v in m.params.items()}
    loop = median_time(lambda: per_entry_loop(m.loss, params, entries), repeats)
    header(f"MLP {'-'.join(map(str, sizes))}, batch {batch}")
    cores = os.cpu_count() or 1
    print(row("per-entry loop (numpy, all BLAS threads)", loop, n, tf1, cores, loop))

    def run(**kw):
        return lambda: gradprobe.check(m.loss, m.grad, m.params, samples=samples, **kw)

    print(row("gradprobe serial", median_time(run(), repeats), n, tf1, cores, loop))
    for c in core_list:
        if c < 2:
            continue
        with gradprobe.keep_workers():
            report = run(n_jobs=c)()  # start the workers once
            wall = median_time(run(n_jobs=c), repeats)
        what = "loky, warm workers" if "kept in process" not in report.measured["executor"] else "stayed in process"
        print(row(f"gradprobe n_jobs={c} ({what})", wall, n, tf1, c, loop))
        wall = median_time(run(n_jobs=c), repeats)
        print(row(f"gradprobe n_jobs={c} (workers started and stopped per check)", wall, n, tf1, c, loop))
    wall = median_time(run(n_jobs="auto"), repeats)
    print(row("gradprobe n_jobs='auto'", wall, n, tf1, cores, loop))
    wall = median_time(
        lambda: gradprobe.check(m.batched_loss, m.grad, m.params, samples=samples, batched=True),
        repeats,
    )
    print(row("gradprobe batched=True", wall, n, tf1, cores, loop))
    if torch_ok and n == n_params:
        for fast in (False, True):
            wall = median_time(lambda fast=fast: torch_gradcheck(m, fast), repeats)
            print(row(f"torch gradcheck {'fast' if fast else 'slow'} mode", wall, n, tf1, cores, loop))


def torch_gradcheck(m, fast):
    import torch

    X = torch.from_numpy(m.data["X"])
    y = torch.from_numpy(m.data["y"])
    names = list(m.params)
    tensors = [torch.from_numpy(m.params[k].copy()).requires_grad_() for k in names]
    n_layers = len(names) // 2
    l2 = m.data["l2"]

    def f(*ps):
        h = X
        for i in range(n_layers):
            z = h @ ps[2 * i] + ps[2 * i + 1]
            h = torch.tanh(z) if i < n_layers - 1 else z
        ce = torch.nn.functional.cross_entropy(h, y)
        return ce + 0.5 * l2 * sum((ps[2 * i] ** 2).sum() for i in range(n_layers))

    return torch.autograd.gradcheck(f, tensors, fast_mode=fast)


def bench_jitted(repeats, core_list):
    m = make_jitted_mlp()
    x = m.params.copy()
    n = x.size
    m.loss(x)
    tf = median_time(lambda: m.loss(x), 200)
    print(f"\nWorkload: {m.name}; {n:,} params, all checked; T_forward {tf * 1e6:.1f} us")
    loop = median_time(lambda: per_entry_loop(lambda p: m.loss(p["x"]), {"x": x}, [("x", np.arange(n))]), repeats)
    header("jitted tiny MLP (numba)")
    print(row("per-entry loop calling the jitted loss", loop, n, tf, 1, loop))
    compile_s = gradprobe.check(m.loss, m.grad, m.params).timings["compile"]
    for c in sorted({1, *core_list}):
        wall = median_time(lambda c=c: gradprobe.check(m.loss, m.grad, m.params, n_jobs=c), repeats)
        print(row(f"gradprobe numba kernel, {c} threads", wall, n, tf, c, loop))
    print(f"\n(first check in this process: {compile_s:.2f} s compiling or loading the cached "
          f"kernels, reported as timings['compile'])")


def machine_facts() -> str:
    """One line: CPU, cores, versions, BLAS library and kernel (also used by bench_speed.py)."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = [
        f"{i['internal_api']} {i['version']} ({i.get('architecture', '?')}, "
        f"{i['num_threads']} threads)"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy "
        f"{np.__version__}, numba {numba.__version__}, joblib {joblib.__version__}; BLAS "
        f"{'; '.join(blas) or '?'}; OPENBLAS_CORETYPE="
        f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores", default=None, help="comma-separated worker counts (default: 2..all)")
    ap.add_argument("--mid-entries", type=int, default=2000)
    ap.add_argument("--skip-mid", action="store_true")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    core_list = (
        [int(c) for c in args.cores.split(",")] if args.cores else list(range(2, cores + 1))
    )
    try:
        import torch  # noqa: F401

        torch_ok = True
    except ImportError:
        torch_ok = False
    import scipy  # noqa: F401  (loads scipy's BLAS so machine_facts lists it)

    print(machine_facts())
    if not torch_ok:
        print("torch not installed: torch.autograd.gradcheck rows skipped")
    bench_mlp((64, 32, 10), 16, 10**9, args.repeats, core_list, torch_ok)
    bench_jitted(args.repeats, core_list)
    if not args.skip_mid:
        bench_mlp((784, 256, 128, 10), 64, args.mid_entries, args.repeats, core_list, torch_ok)


if __name__ == "__main__":
    main()
