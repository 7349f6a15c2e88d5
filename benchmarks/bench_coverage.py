"""Coverage at scale on the mid-size MLP (784-256-128-10, batch 64, ~235k params).

Prints a markdown table: wall time of the default ``gradprobe.check`` (stratified sample, every
entry probed, localization) on a correct model and with one W1 entry off by 5%, its breakdown
(sample / probes / localization, measured by running the same phases directly), loss
evaluations, and the per-entry loop (perturb, evaluate, restore) checking the same sample.

Usage: python benchmarks/bench_coverage.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import gradprobe
from gradprobe.checking.context import ParamCheck
from gradprobe.checking.probes import run_probes
from gradprobe.evaluate import SerialEvaluator
from gradprobe.examples import make_mlp
from gradprobe.layout import normalize_params
from gradprobe.numerics.sampling import stratified_sample
from gradprobe.numerics.steps import default_relative_step
from gradprobe.numerics.tolerances import loss_epsilon, tolerance_for

BAD = (517, 200)


def planted(m):
    def grad(p):
        g = m.grad(p)
        g["W1"][BAD] *= 1.05
        return g

    return grad


def per_entry_loop(m, samples: dict[str, np.ndarray]) -> float:
    """The naive loop over the same sampled entries: perturb in place, evaluate, restore."""
    p = {k: v.copy() for k, v in m.params.items()}
    start = time.perf_counter()
    # One BLAS thread, as gradprobe's serial evaluator uses (fair comparison on a busy machine).
    with threadpool_limits(1):
        _loop(m, p, samples)
    return time.perf_counter() - start


def _loop(m, p, samples: dict[str, np.ndarray]) -> None:
    for name, idx in samples.items():
        flat = p[name].reshape(-1)
        for i in idx:
            x = flat[i]
            h = 6e-6 * max(1.0, abs(x))
            flat[i] = x + h
            fp = m.loss(p)
            flat[i] = x - h
            fm = m.loss(p)
            flat[i] = x
            _ = (fp - fm) / (2 * h)


def phases(m, grad) -> dict[str, float]:
    """Seconds per phase, running the check's pieces directly on each parameter."""
    layout, base, _ = normalize_params(m.params)
    analytic = grad(m.params)
    loss_eps = loss_epsilon(layout.dtypes)
    seeds = np.random.SeedSequence(0).spawn(len(layout.names))
    out = {"sample": 0.0, "probes": 0.0, "localization": 0.0, "samples": {}, "probe_evals": 0}
    from gradprobe.checking.entries import evaluate_entries

    for p, name in enumerate(layout.names):
        rng = np.random.default_rng(seeds[p])
        tol = tolerance_for(layout.dtypes[p], loss_eps)
        step = default_relative_step(layout.dtypes[p])
        ev = SerialEvaluator(m.loss, layout, [b.copy() for b in base])
        t = time.perf_counter()
        s = stratified_sample(rng, analytic[name], min(512, analytic[name].size))
        ctx = ParamCheck(ev, p, analytic[name].reshape(-1), tol, step)
        evaluate_entries(ctx, s.flat_index)
        out["sample"] += time.perf_counter() - t
        out["samples"][name] = s.flat_index
        if s.complete:
            continue
        t = time.perf_counter()
        o = run_probes(ctx, rng)
        dt = time.perf_counter() - t
        out["probe_evals"] += o.n_evaluations
        # Top-level probes cost 8 evaluations; the rest is bisection and the leaves' checks.
        share = 8 / o.n_evaluations
        out["probes"] += dt * share
        out["localization"] += dt * (1 - share)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    m = make_mlp(sizes=(784, 256, 128, 10), batch=64)
    n_params = sum(v.size for v in m.params.values())
    gradprobe.check(m.loss, m.grad, m.params, samples=4)  # warm-up: numba kernels
    rows = []
    for label, grad in (("correct", m.grad), ("W1[517, 200] off by 5%", planted(m))):
        walls, reports = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            r = gradprobe.check(m.loss, grad, m.params)
            walls.append(time.perf_counter() - t)
            reports.append(r)
        r = reports[-1]
        ph = phases(m, grad)
        loop = statistics.median(per_entry_loop(m, ph["samples"]) for _ in range(args.repeats))
        w1 = r.params["W1"]
        rows.append(
            (
                label,
                f"{statistics.median(walls):.2f} s",
                f"{ph['sample']:.2f} / {ph['probes']:.2f} / {ph['localization']:.2f} s",
                f"{r.n_evaluations:,}",
                f"{loop:.2f} s",
                "pass" if r.passed else f"FAIL {list(w1.bad_indices)}",
            )
        )
    print(
        f"mid-size MLP 784-256-128-10, batch 64, {n_params:,} params, float64; median of "
        f"{args.repeats}\n"
    )
    print(
        "| model | `check()` wall (default) | sample / probes / localization | loss evals "
        "| per-entry loop, same sample | verdict |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
