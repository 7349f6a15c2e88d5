"""A nightly suite of 8 mixed checks: serial, ``--jobs 2`` and a 2-worker Dask LocalCluster.

Run: ``python benchmarks/bench_suites.py [--repeats 3] [--jobs 2]``. Writes a suite of eight
checks (numpy MLPs, one with a planted bug; a VJP; a layer; two torch and one jax check; a
numpy conv) into a temporary folder and runs ``gradprobe run`` on it in a fresh process per
run, the modes interleaved: one after another (``--jobs 1``), ``--jobs N``, and ``--scheduler``
to a ``distributed.LocalCluster`` (2 worker processes, one thread each, started once by this
script: its start-up is reported apart, as a nightly cluster is running already). Prints a
markdown table of median walls with the ratio to serial (of the medians, and the median of each
repeat's ratio, which holds better when other work loads the machine), the load average seen,
and checks that every mode gives the same statuses, numbers (loss evaluations and worst
relative error per parameter) and exit code. ``--no-cluster`` leaves out the cluster.

The goal: ``--jobs 2`` in at most 0.6x the serial wall on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

MODELS = textwrap.dedent(
    """
    import numpy as np

    import gradprobe
    from gradprobe.examples import make_conv, make_mlp


    def mlp(bug=None):
        m = make_mlp(sizes=(48, 32, 16, 10), batch=64, bug=bug)
        return gradprobe.Problem(loss=m.loss, grad=m.grad, params=m.params, samples="all")


    def conv():
        m = make_conv()
        return gradprobe.Problem(loss=m.loss, grad=m.grad, params=m.params, samples="all")


    def _dense(p):
        return np.tanh(p["x"] @ p["W"])


    def vjp():
        rng = np.random.default_rng(0)
        point = {"x": rng.standard_normal((96, 32)), "W": rng.standard_normal((32, 32)) / 6}

        def dense_vjp(p, g):
            d = g * (1 - _dense(p) ** 2)
            return {"x": d @ p["W"].T, "W": p["x"].T @ d}

        return gradprobe.Problem.vjp(_dense, dense_vjp, point, samples="all")


    class Dense:
        def __init__(self):
            rng = np.random.default_rng(3)
            self.W = rng.standard_normal((32, 32)) / 6
            self.b = 0.1 * rng.standard_normal(32)
            self.dW, self.db = np.zeros_like(self.W), np.zeros_like(self.b)

        def forward(self, x):
            self.x = x
            self.y = np.tanh(x @ self.W + self.b)
            return self.y

        def backward(self, dy):
            d = dy * (1 - self.y**2)
            self.dW += self.x.T @ d
            self.db += d.sum(axis=0)
            return d @ self.W.T


    def layer():
        x = np.random.default_rng(4).standard_normal((48, 32))
        return gradprobe.Problem.layer(Dense(), x, params=["W", "b"], samples="all")


    def torch_mlp(width=32):
        import torch

        g = torch.Generator().manual_seed(0)
        x = torch.randn(32, width, generator=g, dtype=torch.float64)
        w = torch.randn(width, width, generator=g, dtype=torch.float64) / 8

        def f(x, w):
            return torch.tanh(x @ w).sum(dim=1)

        return gradprobe.Problem.torch(f, x, w.requires_grad_(), samples="all", vectorize=False)


    def jax_fn():
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        x = jnp.linspace(-1.0, 1.0, 800)
        return gradprobe.Problem.jax(
            lambda t: jnp.tanh(t) * jnp.sin(3 * t), x, samples="all", vectorize=False
        )
    """
)

SUITE = """
[defaults]
seed = 0
timeout = 600
[checks.mlp]
target = "suite_models.py:mlp"
[checks.mlp_bug]
target = "suite_models.py:mlp"
args = { bug = "sign" }
[checks.conv]
target = "suite_models.py:conv"
[checks.vjp]
target = "suite_models.py:vjp"
[checks.layer]
target = "suite_models.py:layer"
[checks.torch_a]
target = "suite_models.py:torch_mlp"
[checks.torch_b]
target = "suite_models.py:torch_mlp"
args = { width = 24 }
[checks.jax]
target = "suite_models.py:jax_fn"
"""


#: The environment as this script found it: starting a LocalCluster sets OMP_NUM_THREADS,
#: OPENBLAS_NUM_THREADS, MKL_NUM_THREADS, MALLOC_TRIM_THRESHOLD_ and PYTHONHASHSEED in this
#: process's os.environ (for its workers), which must not reach the runs measured.
ENVIRON = dict(os.environ)


def _env() -> dict[str, str]:
    env = dict(ENVIRON)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(folder: Path, flags: list[str], out: str) -> tuple[float, int, dict]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "gradprobe", "run", "-q", "--json", out, *flags],
        cwd=folder,
        env=_env(),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(
            f"gradprobe run {' '.join(flags)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return wall, proc.returncode, json.loads((folder / out).read_text())


def _numbers(data: dict) -> dict:
    return {
        c["name"]: (
            c["status"],
            c["report"]["n_evaluations"],
            {p["name"]: p["max_rel_error"] for p in c["report"]["params"]},
        )
        for c in data["checks"]
    }


def _load() -> float:
    """The machine's 1-minute load average (runnable processes; 2 cores here)."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on Linux/macOS
        return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--no-cluster", action="store_true", help="leave out the LocalCluster (no dask needed)"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_engine import machine_facts

    print(machine_facts())
    folder = Path(tempfile.mkdtemp(prefix="gradprobe-bench-suites-"))
    (folder / "suite_models.py").write_text(MODELS)
    (folder / "gradprobe.toml").write_text(SUITE)

    with contextlib.ExitStack() as stack:
        modes = {
            "serial (--jobs 1)": ["--jobs", "1"],
            f"--jobs {args.jobs}": ["--jobs", str(args.jobs)],
        }
        cluster_start = None
        if not args.no_cluster:
            import dask
            from distributed import LocalCluster

            t0 = time.perf_counter()
            stack.enter_context(dask.config.set({"distributed.scheduler.allowed-failures": 0}))
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
                )
            )
            cluster_start = time.perf_counter() - t0
            modes["2-worker LocalCluster (--scheduler)"] = [
                "--scheduler",
                cluster.scheduler_address,
            ]
        walls: dict[str, list[float]] = {m: [] for m in modes}
        loads: list[float] = []
        results: dict[str, tuple[int, dict]] = {}
        for r in range(args.repeats):  # interleaved, so load drifts hit every mode alike
            for i, (mode, flags) in enumerate(modes.items()):
                loads.append(_load())
                # A fresh output path each run: --jobs reads the last run's --json for the
                # checks' times, which a nightly job may have, but a first run does not.
                wall, code, data = _run(folder, flags, f"out{r}-{i}.json")
                walls[mode].append(wall)
                results.setdefault(mode, (code, _numbers(data)))
                print(f"  repeat {r + 1}: {mode}: {wall:.2f} s (exit {code})", file=sys.stderr)
        loads.append(_load())

    serial_mode = "serial (--jobs 1)"
    serial = statistics.median(walls[serial_mode])
    if cluster_start is not None:
        print(f"\nLocalCluster start-up (not counted): {cluster_start:.2f} s")
    print(
        f"\nload average (1 min) at each run's start: {min(loads):.1f} to {max(loads):.1f} "
        f"(median {statistics.median(loads):.1f}) on {os.cpu_count()} cores\n"
    )
    print(
        "| mode | median wall (s) | runs | ratio of medians | median of per-repeat ratios | "
        "same statuses, numbers, exit |"
    )
    print("|---|---|---|---|---|---|")
    reference = results[serial_mode]
    for mode, ws in walls.items():
        same = results[mode] == reference
        pairs = [w / s for w, s in zip(ws, walls[serial_mode], strict=True)]
        print(
            f"| {mode} | {statistics.median(ws):.2f} | "
            f"{', '.join(f'{w:.1f}' for w in ws)} | {statistics.median(ws) / serial:.2f}x | "
            f"{statistics.median(pairs):.2f}x | {'yes' if same else 'NO'} |"
        )
    code, numbers = reference
    print(f"\nexit code {code}; statuses: " + ", ".join(f"{k} {v[0]}" for k, v in numbers.items()))
    if any(results[m] != reference for m in results):
        raise SystemExit("the modes disagree")


if __name__ == "__main__":
    main()
