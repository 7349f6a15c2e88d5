"""Issue 20's measurements, before (main at 4300d04) and after, side by side in one run.

Run: ``python benchmarks/bench_pool.py [--quick] [--before DIR] [--json out.json]``
(``--quick``: one repeat and smaller workloads, a smoke run of ~3-5 min on 2 cores; the full
run takes ~10-15 min). "Before" is main at 4300d04, extracted with ``git archive`` under /tmp
(or ``--before``); "after" is the ``src`` beside this script. Every measurement runs in a fresh
subprocess with one version's ``src`` on ``PYTHONPATH`` (bench_speed.py's runner), so the
first check of a process is a real first check and the second one finds what the first left.

Tables (markdown):

1. *Default check vs the classic loop*, same entries (``samples=N, probes=0``), mid and tiny
   MLP: the first check in a fresh process and the second one; the loop uses every BLAS thread.
   Then the loop and the check in turn in one process (after its first check), the ratio
   pair by pair: the two under the same load, which the separate processes are not; the tiny
   MLP also after a mid MLP check, which leaves the pool running (a suite's later checks).
2. *n_jobs=2 vs n_jobs=1* on the mid MLP, from the second check of a process.
3. *Efficiency per path* ``E = 2 * entries * T_forward / (cores * wall)`` (second check):
   serial, threads, processes, batched, numba (the jitted example MLP).
4. *Engine cost per evaluation*: a tiny loss (``x @ x``, 2,000 entries, every entry): wall
   per evaluation beyond the loss's own time, and its share of the check.
5. *Scaling model*: from the measured round trip of one chunk on a warm pool (``t_d``) and one
   evaluation (``t``): the check's ``N`` evaluations are streamed to ``W`` evaluators (the
   check's own process and ``W - 1`` workers) in ``c`` chunks each (at least 4, at most 16),
   so they take ``N t / W + c t_d`` (start-up excluded: the pool is warm). For the whole
   check, the check's own work beside evaluating (``S``: the serial check's wall minus
   ``N t``) splits into the prefix before the first blocks are sent (``P``: base point,
   gradient, first samples; measured), which is serial, and the rest (pre-flight, verdicts),
   done by the check's process while the workers evaluate:
   ``P + (N t + S - P) / W + c t_d``. Assumptions: one core per evaluator, evaluations
   independent of each other, no memory-bandwidth limit, the parent submits faster than the
   workers finish; predicted for 2 to 16 evaluators.
6. *Peak memory* beyond the caller's data, in multiples of the parameters' size: a default
   check of one 5,000,000-entry float64 vector (``dot(w, w)``) and of a model of 100
   parameters of 50,000 entries, serial and ``n_jobs=2`` (parent's peak resident set from
   ``resource``; the largest worker's apart).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_speed

BEFORE_COMMIT = "4300d04"


# --------------------------------------------------------------------------- child side
def _checks(task: dict) -> dict:
    """``task["runs"]`` checks in one process: the wall of each and the last report's facts."""
    import contextlib

    import joblib

    import gradprobe

    kw: dict[str, Any] = dict(task.get("kw", {}))
    if task.get("jitted"):
        from gradprobe.examples.jitted import make_jitted_mlp

        m = make_jitted_mlp()
    else:
        m = bench_speed._model(task["workload"])
    loss = m.batched_loss if kw.get("batched") else m.loss
    backend = task.get("backend")
    walls, r = [], None
    # When the first samples are drawn and their blocks could go to workers: the check's
    # serial prefix (base point, gradient, first samples), before which no worker has
    # anything to do. Timed where the run draws them (in-process placements no longer hand the
    # blocks over), else at the evaluator's prefetch; neither exists before 6c2d79d.
    try:  # where the run draws them (gradprobe.api's own module before the run moved out)
        import gradprobe.checking.run as api
    except ImportError:
        import gradprobe.api as api  # type: ignore[no-redef]
    from gradprobe.evaluate import Evaluator

    sent: list[float] = []
    draw = getattr(api, "first_samples", None)
    prefetch = getattr(Evaluator, "prefetch", None)
    if draw is not None:

        def timed_draw(*a: Any, **k: Any) -> Any:
            out = draw(*a, **k)
            sent.append(time.perf_counter())
            return out

        api.first_samples = timed_draw  # type: ignore[attr-defined]
    elif prefetch is not None:

        def timed_prefetch(self: Any, requests: Any) -> None:
            sent.append(time.perf_counter())
            prefetch(self, requests)

        Evaluator.prefetch = timed_prefetch  # type: ignore[method-assign]
    prefixes = []
    with joblib.parallel_config(backend=backend) if backend else contextlib.nullcontext():
        for _ in range(task["runs"]):
            sent.clear()
            t = time.perf_counter()
            r = gradprobe.check(loss, m.grad, m.params, seed=0, **kw)
            walls.append(time.perf_counter() - t)
            if sent:
                prefixes.append(sent[0] - t)
    assert r is not None
    return {
        "first": walls[0],
        "second": statistics.median(walls[1:]) if len(walls) > 1 else None,
        "n_evaluations": int(r.n_evaluations),
        "entries": int(sum(p.n_checked for p in r.params.values())),
        "passed": bool(r.passed),
        "prefix": statistics.median(prefixes[1:] or prefixes) if prefixes else None,
        "executor": _executor(r),
        "file": gradprobe.__file__,
    }


def _executor(r: Any) -> str:
    """The report's executor: in ``measured`` since JSON schema 2, in ``settings`` before."""
    return str(getattr(r, "measured", {}).get("executor") or r.settings.get("executor", ""))


def _loop(task: dict) -> dict:
    """The classic per-entry loop over the same entries, and T_forward at one BLAS thread."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    import gradprobe

    m = bench_speed._model(task["workload"])
    params = {k: np.array(v, copy=True) for k, v in m.params.items()}
    with threadpool_limits(1, user_api="blas"):
        m.loss(params)
        times = []
        for _ in range(30):
            t = time.perf_counter()
            m.loss(params)
            times.append(time.perf_counter() - t)
    entries = bench_speed._entries(params, task["samples"], None)
    walls = []
    for _ in range(1 + task["repeats"]):
        t = time.perf_counter()
        n = bench_speed._per_entry_loop(m.loss, params, entries)
        walls.append(time.perf_counter() - t)
    return {
        "t_forward": statistics.median(times),
        "wall": statistics.median(walls[1:]),
        "entries": n,
        "file": gradprobe.__file__,
    }


def _pairs(task: dict) -> dict:
    """The classic loop and the default check in turn in one process, from the second check
    on (the first starts the pool where its plan pays): the ratio pair by pair, both under
    the same load.
    ``after_mid``: a mid MLP check first, which starts the pool (a suite's later checks)."""
    import numpy as np

    import gradprobe

    m = bench_speed._model(task["workload"])
    params = {k: np.array(v, copy=True) for k, v in m.params.items()}
    entries = bench_speed._entries(params, task["samples"], None)
    kw = {"samples": task["samples"], "probes": 0}
    if task.get("after_mid"):
        mid = bench_speed._model("mid")
        gradprobe.check(mid.loss, mid.grad, mid.params, seed=0, **kw)
    report = gradprobe.check(m.loss, m.grad, m.params, seed=0, **kw)
    bench_speed._per_entry_loop(m.loss, params, entries)
    loops, checks = [], []
    for _ in range(task["pairs"]):
        t = time.perf_counter()
        bench_speed._per_entry_loop(m.loss, params, entries)
        loops.append(time.perf_counter() - t)
        t = time.perf_counter()
        report = gradprobe.check(m.loss, m.grad, m.params, seed=0, **kw)
        checks.append(time.perf_counter() - t)
    ratios = [a / b for a, b in zip(loops, checks, strict=True)]
    return {
        "executor": _executor(report),
        "loop": statistics.median(loops),
        "check": statistics.median(checks),
        "ratio": statistics.median(ratios),
        "low": min(ratios),
        "high": max(ratios),
        "file": gradprobe.__file__,
    }


def _engine(task: dict) -> dict:
    """Engine cost per evaluation on a tiny loss: check wall minus the loss's own time."""
    import numpy as np

    import gradprobe

    x = np.random.default_rng(0).standard_normal(2000)

    def loss(v: Any) -> float:
        return float(v @ v)

    t = time.perf_counter()
    for _ in range(20000):
        loss(x)
    per_call = (time.perf_counter() - t) / 20000
    gradprobe.check(loss, lambda v: 2 * v, x, samples="all", probes=0, n_jobs=1)
    walls = []
    for _ in range(5):
        t = time.perf_counter()
        r = gradprobe.check(loss, lambda v: 2 * v, x, samples="all", probes=0, n_jobs=1)
        walls.append(time.perf_counter() - t)
    wall = statistics.median(walls)
    engine = max(0.0, wall / r.n_evaluations - per_call)
    return {
        "loss_us": per_call * 1e6,
        "engine_us": engine * 1e6,
        "share": engine / (engine + per_call),
        "file": gradprobe.__file__,
    }


def _dispatch(task: dict) -> dict:
    """Round trip of one chunk on a warm loky pool of 2 workers (a trivial loss), per chunk."""
    import joblib
    import numpy as np

    import gradprobe
    from gradprobe.evaluate import ParallelEvaluator
    from gradprobe.evaluate.parallel import DispatchPolicy
    from gradprobe.layout import normalize_params

    x = np.linspace(-1, 1, 64)
    layout, base, _ = normalize_params(x)
    # Every chunk to a worker (a true round trip: this process takes none of them).
    policy = DispatchPolicy(min_dispatch_seconds=0.0, process_start_seconds=0.0)
    if "this_process_evaluates" in DispatchPolicy.__dataclass_fields__:
        policy = DispatchPolicy(
            min_dispatch_seconds=0.0, process_start_seconds=0.0, this_process_evaluates=False
        )
    with joblib.parallel_config(backend="loky"):
        ev = ParallelEvaluator(lambda v: float(v @ v), layout, base, n_jobs=2, policy=policy)
        with ev:
            ev.base_loss()
            values = np.stack([x + 1e-3, x - 1e-3], axis=1)
            ev.entry_losses(0, np.arange(64), values)  # starts the workers
            walls = []
            for _ in range(10):
                t = time.perf_counter()
                ev.entry_losses(0, np.arange(64), values)
                walls.append(time.perf_counter() - t)
    chunks = 2 * policy.chunks_per_worker
    return {"t_d": statistics.median(walls) / chunks, "chunks": chunks, "file": gradprobe.__file__}


def _memory(task: dict) -> dict:
    import resource

    import numpy as np

    import gradprobe

    rng = np.random.default_rng(0)
    if task["model"] == "vector":
        params: Any = rng.standard_normal(task["n"])

        def loss(p: Any) -> float:
            return float(p @ p)

        def grad(p: Any) -> Any:
            return 2 * p

        nbytes = params.nbytes
    else:
        params = {f"p{i}": rng.standard_normal(task["n"]) for i in range(task["count"])}

        def loss(p: Any) -> float:
            return float(sum(v @ v for v in p.values()))

        def grad(p: Any) -> Any:
            return {k: 2 * v for k, v in p.items()}

        nbytes = sum(v.nbytes for v in params.values())
    loss(params)
    grad(params)  # the caller's own data and one gradient: the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r = gradprobe.check(loss, grad, params, n_jobs=task["n_jobs"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "x": (peak - base) / nbytes,
        "worker_x": child / nbytes,
        "mb": nbytes / 1e6,
        "executor": _executor(r),
        "file": gradprobe.__file__,
    }


def child_main() -> None:
    task = json.loads(sys.stdin.read())
    kinds = {
        "checks": _checks,
        "loop": _loop,
        "engine": _engine,
        "dispatch": _dispatch,
        "memory": _memory,
        "pairs": _pairs,
    }
    try:
        result = kinds[task["kind"]](task)
    except Exception as exc:  # a row, not a crash of the whole run
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")


# --------------------------------------------------------------------------- parent side
class Runner(bench_speed.Runner):
    script = Path(__file__).resolve()


def _f(res: dict, key: str, fmt: str = "{:.3f}") -> str:
    if "error" in res:
        return f"error ({res['error'][:50]})"
    value = res.get(key)
    return "-" if value is None else fmt.format(value)


def _ratio(num: float | None, den: float | None) -> str:
    return "-" if not num or not den else f"{num / den:.2f}x"


def main() -> None:
    if "--child" in sys.argv:
        child_main()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="the before tree (default: git archive 4300d04)")
    parser.add_argument("--after", help="the after tree (default: this checkout)")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer, smaller runs")
    parser.add_argument("--json", help="write every raw result here")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    bench_speed.BEFORE_COMMIT = BEFORE_COMMIT
    trees, notes = bench_speed.resolve_trees(args)
    runner = Runner(sys.executable, trees, args.timeout)
    versions = ("before", "after")
    runs, samples, repeats = (2, 64, 1) if args.quick else (4, 256, 3)
    cores = os.cpu_count() or 1
    R: dict[str, Any] = {}
    same = {"samples": samples, "probes": 0}

    def both(name: str, task: dict) -> None:
        for v in versions:  # interleaved: before and after under the same load
            R.setdefault(name, {})[v] = runner.child(v, task)

    for w in ("mid", "tiny"):
        both(f"default-{w}", {"kind": "checks", "workload": w, "runs": runs, "kw": same})
        R[f"loop-{w}"] = runner.child(
            "after", {"kind": "loop", "workload": w, **same, "repeats": repeats}
        )
    for w in ("mid", "tiny", "tiny-warm"):
        R[f"pairs-{w}"] = runner.child(
            "after",
            {
                "kind": "pairs",
                "workload": w.split("-")[0],
                "after_mid": w.endswith("warm"),
                **same,
                "pairs": 2 if args.quick else 5,
            },
        )
    for n in (1, 2):
        both(
            f"jobs{n}",
            {"kind": "checks", "workload": "mid", "runs": runs, "kw": {**same, "n_jobs": n}},
        )
    paths = {
        "serial": {"workload": "mid", "kw": {**same, "n_jobs": 1}},
        "threads": {"workload": "mid", "kw": {**same, "n_jobs": 2}, "backend": "threading"},
        "processes": {"workload": "mid", "kw": {**same, "n_jobs": 2}, "backend": "loky"},
        "batched": {"workload": "mid", "kw": {**same, "batched": True}},
        "numba": {"workload": "mid", "jitted": True, "kw": {"samples": samples, "probes": 0}},
    }
    for name, task in paths.items():
        both(f"path-{name}", {"kind": "checks", "runs": runs, **task})
    both("engine", {"kind": "engine"})
    R["dispatch"] = runner.child("after", {"kind": "dispatch"})
    n_vec = 1_000_000 if args.quick else 5_000_000
    for jobs in (1, 2):
        both(
            f"mem-vector-{jobs}", {"kind": "memory", "model": "vector", "n": n_vec, "n_jobs": jobs}
        )
        both(
            f"mem-many-{jobs}",
            {"kind": "memory", "model": "many", "n": n_vec // 100, "count": 100, "n_jobs": jobs},
        )
    if args.json:
        Path(args.json).write_text(json.dumps(R, indent=1))
    report(R, notes, cores, samples)


def report(R: dict, notes: list[str], cores: int, samples: int) -> None:
    print(bench_speed.machine_facts())
    print("\n".join(f"- {n}" for n in notes))
    print(f"\n### Default check vs the classic loop ({samples} entries per parameter, probes=0)\n")
    print(
        "| model | loop (s) | before 1st / 2nd (s) | after 1st / 2nd (s) | after vs loop 1st / 2nd | after executor |"
    )
    print("|---|---|---|---|---|---|")
    for w in ("mid", "tiny"):
        b, a, loop = R[f"default-{w}"]["before"], R[f"default-{w}"]["after"], R[f"loop-{w}"]
        lw = loop.get("wall")
        print(
            f"| {w} | {_f(loop, 'wall')} | {_f(b, 'first')} / {_f(b, 'second')} | "
            f"{_f(a, 'first')} / {_f(a, 'second')} | {_ratio(lw, a.get('first'))} / "
            f"{_ratio(lw, a.get('second'))} | {a.get('executor', '')[:90]} |"
        )
    print("\n### The same, the loop and the check in turn in one process (after the first check)\n")
    print(
        "| model | loop median (s) | check median (s) | loop / check, pair by pair: median "
        "(range) | executor |"
    )
    print("|---|---|---|---|---|")
    names = {"mid": "mid", "tiny": "tiny", "tiny-warm": "tiny, after a mid check (pool running)"}
    for w, name in names.items():
        p = R[f"pairs-{w}"]
        rng = "-" if "error" in p else f"{p['ratio']:.2f}x ({p['low']:.2f}-{p['high']:.2f})"
        print(
            f"| {name} | {_f(p, 'loop')} | {_f(p, 'check')} | {rng} | "
            f"{p.get('executor', '')[:60]} |"
        )
    print("\n### n_jobs=2 vs n_jobs=1, mid MLP, second check of a process\n")
    print("| version | n_jobs=1 (s) | n_jobs=2 (s) | speed-up |")
    print("|---|---|---|---|")
    for v in ("before", "after"):
        one, two = R["jobs1"][v], R["jobs2"][v]
        print(
            f"| {v} | {_f(one, 'second')} | {_f(two, 'second')} | {_ratio(one.get('second'), two.get('second'))} |"
        )
    t_fwd = R["loop-mid"].get("t_forward")
    print(
        f"\n### Efficiency per path, mid MLP, second check (T_forward {_f(R['loop-mid'], 't_forward', '{:.2e}')} s, {cores} cores)\n"
    )
    print("| path | before (s) | after (s) | after E | entries |")
    print("|---|---|---|---|---|")
    for name in ("serial", "threads", "processes", "batched", "numba"):
        b, a = R[f"path-{name}"]["before"], R[f"path-{name}"]["after"]
        e = "-"
        if t_fwd and a.get("second") and name != "numba":
            e = f"{2 * a['entries'] * t_fwd / (cores * a['second']):.2f}"
        print(f"| {name} | {_f(b, 'second')} | {_f(a, 'second')} | {e} | {a.get('entries', '-')} |")
    print("\n### Engine cost per evaluation (tiny loss x @ x, 2,000 entries, every entry)\n")
    print("| version | loss (us) | engine (us) | engine share |")
    print("|---|---|---|---|")
    for v in ("before", "after"):
        e = R["engine"][v]
        print(
            f"| {v} | {_f(e, 'loss_us', '{:.2f}')} | {_f(e, 'engine_us', '{:.2f}')} | {_f(e, 'share', '{:.0%}')} |"
        )
    d, serial = R["dispatch"], R["path-serial"]["after"]
    if "error" not in d and t_fwd and serial.get("second"):
        # The whole plan is streamed (evaluate/ahead.py): N evaluations in chunks (at most 16
        # per evaluator, tapering to ~10 ms), each paying t_d. The check's own process is one
        # of the W evaluators: only the prefix before the first blocks are sent (base point,
        # gradient, first samples) is serial; the rest of its own work (pre-flight, verdicts)
        # shares the evaluators' time with the evaluations.
        n = serial["n_evaluations"]
        work = n * t_fwd
        rest = max(0.0, serial["second"] - work)  # the check's own work beside evaluating
        prefix = min(rest, serial.get("prefix") or rest)
        print(
            f"\n### Scaling model (t_d {d['t_d'] * 1e3:.2f} ms per chunk, t {t_fwd * 1e3:.2f} ms, "
            f"{n} evaluations streamed; the check's own work {rest:.3f} s, of which "
            f"{prefix:.3f} s before any block is sent)\n"
        )
        print("| evaluators | chunks each | evaluations: predicted speed-up | whole check |")
        print("|---|---|---|---|")
        for w in (2, 4, 8, 16):
            c = max(4, min(int(work / 0.01), 16 * w) / w)
            wall = work / w + c * d["t_d"]
            whole = prefix + (work + rest - prefix) / w + c * d["t_d"]
            print(f"| {w} | {c:.1f} | {work / wall:.1f}x | {(rest + work) / whole:.1f}x |")
    print("\n### Peak memory beyond the caller's data (x the parameters' size)\n")
    print("| model | n_jobs | before | after | after, largest worker |")
    print("|---|---|---|---|---|")
    for model in ("vector", "many"):
        for jobs in (1, 2):
            b, a = R[f"mem-{model}-{jobs}"]["before"], R[f"mem-{model}-{jobs}"]["after"]
            print(
                f"| {model} ({_f(a, 'mb', '{:.0f}')} MB) | {jobs} | {_f(b, 'x', '{:.1f}')} | {_f(a, 'x', '{:.1f}')} | {_f(a, 'worker_x', '{:.1f}')} |"
            )


if __name__ == "__main__":
    main()
