"""Start-up latency: what a new process, and each isolated suite check, pays before any work.

Run: ``python benchmarks/bench_startup.py [--repeats 5] [--checks 5] [--importtime]``. Prints
markdown tables:

1. median wall of ``--repeats`` fresh interpreters each: ``import numpy``; ``import
   gradprobe``; import plus the first check of a 5-entry quadratic, of a tiny MLP (4-3-2, 23
   parameters) and of a numba-jitted tiny MLP (the kernels loaded from numba's on-disk cache;
   its first-ever run compiles them). The "over numpy" column subtracts ``import numpy``'s wall
   (interpreter start-up included in both).
2. a suite of ``--checks`` checks of the quadratic: in this process (``isolate = false``), in
   one reused worker process (what ``gradprobe run`` does) and in a fresh worker process per
   check (what it did before); per-check overhead = (wall - in-process wall) / checks.

``--importtime`` adds the ten slowest modules of ``python -X importtime -c "import
gradprobe"`` (cumulative microseconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

QUADRATIC = """
import numpy as np
A = np.diag([1.0, 2.0, 3.0, 4.0, 5.0])
x = np.linspace(-1.0, 1.0, 5)
def loss(v):
    return float(0.5 * v @ A @ v)
def grad(v):
    return A @ v
"""

SCRIPTS = {
    "import numpy": "import numpy",
    "import gradprobe": "import gradprobe",
    "import + first check, 5-entry quadratic": QUADRATIC
    + "import gradprobe\nassert gradprobe.check(loss, grad, x).passed",
    "import + first check, tiny MLP (23 params)": (
        "import gradprobe\nfrom gradprobe.examples import make_mlp\n"
        "m = make_mlp(sizes=(4, 3, 2), batch=4)\n"
        "assert gradprobe.check(m.loss, m.grad, m.params).passed"
    ),
    "import + first check, jitted tiny MLP (numba kernel)": (
        "import gradprobe\nfrom gradprobe.examples.jitted import make_jitted_mlp\n"
        "m = make_jitted_mlp(sizes=(4, 3, 2), batch=4)\n"
        "r = gradprobe.check(m.loss, m.grad, m.params)\n"
        "assert r.passed\nprint(r.timings['compile'])"
    ),
}

MODELS = QUADRATIC + textwrap.dedent(
    """
    import gradprobe

    def quadratic():
        return gradprobe.Problem(loss=loss, grad=grad, params=x.copy())
    """
)


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path}


def fresh_wall(code: str) -> tuple[float, str]:
    """Wall seconds of a fresh interpreter running ``code``, and its last output line."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=False
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{code!r} failed:\n{proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    return wall, lines[-1] if lines else ""


def fresh_table(repeats: int) -> None:
    for code in SCRIPTS.values():  # warm the disk caches (pyc, numba's index) once
        fresh_wall(code)
    walls: dict[str, list[float]] = {name: [] for name in SCRIPTS}
    notes: dict[str, str] = {}
    for _ in range(repeats):
        for name, code in SCRIPTS.items():
            wall, last = fresh_wall(code)
            walls[name].append(wall)
            if last:  # the jitted check prints its compile (kernel load) time
                notes[name] = f"timings['compile'] {float(last):.3f} s"
    medians = {name: statistics.median(w) for name, w in walls.items()}
    base = medians["import numpy"]
    print(f"\n### Fresh processes (median of {repeats})\n")
    print("| process | median wall (s) | over `import numpy` (s) | note |")
    print("|---|---|---|---|")
    for name, wall in medians.items():
        over = "-" if name == "import numpy" else f"{wall - base:+.3f}"
        print(f"| {name} | {wall:.3f} | {over} | {notes.get(name, '')} |")


def suite_table(repeats: int, n_checks: int) -> None:
    sys.path.insert(0, str(SRC))
    from gradprobe.suites.config import load_suite
    from gradprobe.suites.isolation import IsolatedWorker
    from gradprobe.suites.runner import run_check

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "models.py").write_text(MODELS)
        body = "".join(f'[checks.c{i}]\ntarget = "models.py:quadratic"\n' for i in range(n_checks))
        (Path(folder) / "gradprobe.toml").write_text(body)
        isolated = list(load_suite(Path(folder) / "gradprobe.toml").checks)
        here = [type(s)(s.name, s.target, s.args, s.options, isolate=False) for s in isolated]

        def in_process() -> None:
            assert all(run_check(s).status == "passed" for s in here)

        def one_worker() -> None:
            with IsolatedWorker() as worker:
                assert all(run_check(s, worker=worker).status == "passed" for s in isolated)

        def worker_per_check() -> None:
            assert all(run_check(s).status == "passed" for s in isolated)

        ways = {
            "in this process (isolate = false)": in_process,
            "one reused worker process (gradprobe run)": one_worker,
            "a fresh worker process per check": worker_per_check,
        }
        in_process()  # import the models and the engine here first
        walls: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(repeats):
            for name, run in ways.items():
                t = time.perf_counter()
                run()
                walls[name].append(time.perf_counter() - t)
    medians = {name: statistics.median(w) for name, w in walls.items()}
    base = medians["in this process (isolate = false)"]
    print(f"\n### A suite of {n_checks} checks of the 5-entry quadratic (median of {repeats})\n")
    print("| how the checks run | median wall (s) | per-check overhead vs in-process (s) |")
    print("|---|---|---|")
    for name, wall in medians.items():
        over = "-" if wall == base else f"{(wall - base) / n_checks:.3f}"
        print(f"| {name} | {wall:.3f} | {over} |")


def importtime_table() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import gradprobe"],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    )
    rows = []
    for line in proc.stderr.splitlines():  # "import time: <self> | <cumulative> | <name>"
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative, name = line.removeprefix("import time:").split("|")
        rows.append((int(cumulative), int(self_us), name.strip()))
    print("\n### `python -X importtime -c 'import gradprobe'`: ten slowest (cumulative us)\n")
    print("| module | cumulative (us) | self (us) |")
    print("|---|---|---|")
    for cumulative, self_us, name in sorted(rows, reverse=True)[:10]:
        print(f"| {name} | {cumulative} | {self_us} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes per row (median)")
    ap.add_argument("--checks", type=int, default=5, help="checks in the suite")
    ap.add_argument("--importtime", action="store_true", help="also list slow imports")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]} on {os.cpu_count()} cores")
    fresh_table(args.repeats)
    suite_table(args.repeats, args.checks)
    if args.importtime:
        importtime_table()


if __name__ == "__main__":
    main()
