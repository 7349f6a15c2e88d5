"""False alarms on correct gradients (and misses of planted bugs) in everyday setups.

Each scenario checks a correct model over several seeds and counts the seeds whose report
fails (false alarms); the bug rows count the seeds that pass (misses). The models are built
here, apart from the tests. Prints one table; run it against any gradprobe on the path
(``PYTHONPATH=<checkout>/src``) to compare versions side by side.

    python benchmarks/bench_trust.py [--seeds 20]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

import gradprobe
from gradprobe.examples import make_mlp


def relu_f32(seed):
    m = make_mlp((48, 24, 24, 10), seed=seed, dtype=np.float32, activation="relu")
    return m.loss, m.grad, m.params, {"seed": seed}


def norm_at(offset, axis):
    def make(seed):
        rng = np.random.default_rng(seed)
        x = offset + rng.standard_normal((6, 16))
        g_out = rng.standard_normal((6, 16))

        def parts(v):
            c = v - v.mean(axis, keepdims=True)
            return c, np.sqrt((c**2).mean(axis, keepdims=True) + 1e-5)

        def loss(p):
            c, s = parts(p["x"])
            return float(np.sum(g_out * c / s))

        def grad(p):
            c, s = parts(p["x"])
            xh = c / s
            mg = g_out.mean(axis, keepdims=True)
            return {"x": (g_out - mg - xh * (g_out * xh).mean(axis, keepdims=True)) / s}

        return loss, grad, {"x": x}, {}

    return make


def relu_near_kink(seed, near=1e-7):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal(12)
    p = {
        "W1": rng.standard_normal((8, 5)) / 2.2,
        "b1": 0.1 * rng.standard_normal(8),
        "w2": rng.standard_normal(8) / 2.8,
    }
    z = x @ p["W1"].T + p["b1"]
    for j in rng.choice(8, size=3, replace=False):
        p["b1"][j] -= z[int(rng.integers(12)), j] - near

    def loss(q):
        a = np.maximum(x @ q["W1"].T + q["b1"], 0.0)
        return float(0.5 * np.mean((a @ q["w2"] - y) ** 2))

    def grad(q):
        z = x @ q["W1"].T + q["b1"]
        a = np.maximum(z, 0.0)
        r = (a @ q["w2"] - y) / len(y)
        gz = np.outer(r, q["w2"]) * (z > 0)
        return {"W1": gz.T @ x, "b1": gz.sum(0), "w2": a.T @ r}

    return loss, grad, p, {}


def cast32(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((64, 10)), rng.standard_normal(64)
    p = {"W": 0.3 * rng.standard_normal((10, 8)), "v": rng.standard_normal(8)}

    def loss(q):
        h = np.tanh(x.astype(np.float32) @ q["W"].astype(np.float32))
        return float(0.5 * np.mean((h @ q["v"].astype(np.float32) - y.astype(np.float32)) ** 2))

    def grad(q):
        h = np.tanh(x @ q["W"])
        r = (h @ q["v"] - y) / len(y)
        return {"W": x.T @ (np.outer(r, q["v"]) * (1 - h**2)), "v": h.T @ r}

    return loss, grad, p, {}


def sub_rtol(seed):
    m = make_mlp((64, 32, 10), seed=seed)

    def grad(q):
        return {k: v * (1 + 2e-6) for k, v in m.grad(q).items()}  # below rtol = 1e-5

    return m.loss, grad, m.params, {"samples": 64}


def planted_scale_f32_cast(seed):
    loss, grad, p, kw = cast32(seed)

    def bad(q):
        g = grad(q)
        g["v"] = 1.5 * g["v"]
        return g

    return loss, bad, p, kw


SCENARIOS = [
    ("float32 ReLU MLP 48-24-24-10 (units at pre-activation 0)", relu_f32, "false alarms"),
    ("layer norm, inputs 1e4 + N(0, 1)", norm_at(1e4, -1), "false alarms"),
    ("layer norm, inputs 1e5 + N(0, 1)", norm_at(1e5, -1), "false alarms"),
    ("batch-norm statistics, inputs 1e5 + N(0, 1)", norm_at(1e5, 0), "false alarms"),
    ("ReLU net, pre-activations 1e-7 from a kink", relu_near_kink, "false alarms"),
    ("float64 params, loss computed in float32", cast32, "false alarms"),
    ("every gradient off by 2e-6 (below rtol), samples=64", sub_rtol, "false alarms"),
    ("float32-computed loss, 1.5x bug in one parameter", planted_scale_f32_cast, "misses"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    print(
        f"gradprobe {gradprobe.__version__} from {gradprobe.__file__}; Python "
        f"{platform.python_version()}, numpy {np.__version__}; {args.seeds} seeds per row"
    )
    print("\n| scenario | counted | count | seconds |\n|---|---|---|---|")
    for label, make, counted in SCENARIOS:
        start, count = time.perf_counter(), 0
        for seed in range(args.seeds):
            loss, grad, params, kw = make(seed)
            try:
                report = gradprobe.check(loss, grad, params, **kw)
                ok = report.passed
                if counted == "misses":
                    ok = not ok and [p.name for p in report.failures] == ["v"]
            except gradprobe.GradCheckError:
                ok = False
            count += not ok  # a false alarm, or a bug missed
        wall = time.perf_counter() - start
        print(f"| {label} | {counted} | {count} / {args.seeds} | {wall:.1f} |")


if __name__ == "__main__":
    main()
