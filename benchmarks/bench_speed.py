"""Before/after speed of gradprobe's default check, side by side in one run (issue 12).

Run: ``python benchmarks/bench_speed.py --before ../gp-before/src [--repeats 5] [--quick]
[--only tiny,mid,conv,batchnorm,rnn,latency,torch] [--json out.json]``. "Before" is main at
a04f0f1 (make its tree with ``git worktree add --detach ../gp-before a04f0f1``; without
``--before`` the script extracts that commit's ``src`` under /tmp with ``git archive`` and says
so); "after" is the ``src`` beside this script (``--after`` to change it). Every measurement
runs in a fresh subprocess with ``PYTHONPATH`` set to one version's ``src`` (this same script in
``--child`` mode, JSON in and out), so each version is imported fresh; a child makes one cold
call and then ``--repeats`` timed ones, and the tables quote the median of those (the cold call
in parentheses where shown: the first check in a process, after the import; before any
measurement one discarded ``python -c`` check per version fills the on-disk caches, bytecode and
numba, so no cold call compiles). The per-entry loops, T_forward and torch run once, with the after
tree's example models (the examples are the same in both trees). Workloads: tiny MLP
64-32-32-10 (batch 16), mid MLP 784-256-128-10 (batch 64), ``make_conv()``,
``make_batchnorm_mlp()``, ``make_rnn()``.

Tables printed (markdown), after the machine facts:

1. The mid MLP's default ``check()``: loss evaluations, entries checked one by one, passed,
   wall; after/before speed-up.
2a. *Same entries*: ``check(samples=N)`` (N per parameter, each version's default ``n_jobs``)
   against the classic perturb/evaluate/restore loop over N entries per parameter (every BLAS
   thread), with the efficiency ``E = 2 * entries * T_forward / (cores * wall)`` of each row
   (``T_forward``: one loss evaluation at one BLAS thread, in a tight loop).
2b. *Coverage*: the default check (every entry covered, by probes beyond the sample) against
   the loop over every entry, timed in full for small models and extrapolated from a timed
   random subset for big ones (the row says which).
3. Batched vs serial vs loop on the tiny and mid MLPs at N entries per parameter:
   ``check(batched_loss, ..., batched=True)``, ``check(..., n_jobs=1)`` and the loop.
4. First-check latency: median wall of ``--latency-runs`` fresh ``python -c`` runs of
   (``import gradprobe`` + the first default check of the tiny MLP) minus the median of
   ``python -c "import numpy"`` (runs interleaved; the whole process's wall, exit included).
5. ``torch.autograd.gradcheck`` (slow and fast mode, torch's default threads) on the tiny MLP
   beside the loop over every entry and both default checks; skipped without torch.

Ratios: "after/before" is before wall / after wall (above 1: after is faster); "vs loop" is loop
wall / check wall (above 1: the check is faster than the loop). ``--quick`` (smoke runs): one
repeat, three latency runs, and the mid MLP's every-entry loop extrapolated from the
same-entries loop instead of a larger timed subset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BEFORE_COMMIT = "a04f0f1"
WORKLOADS = ("tiny", "mid", "conv", "batchnorm", "rnn")
SECTIONS = (*WORKLOADS, "latency", "torch")
TINY = ((64, 32, 32, 10), 16)
MID = ((784, 256, 128, 10), 64)
LATENCY_CODE = (
    "import json, time\n"
    "t0 = time.perf_counter()\n"
    "import numpy\n"
    "t1 = time.perf_counter()\n"
    "import gradprobe\n"
    "t2 = time.perf_counter()\n"
    "from gradprobe.examples import make_mlp\n"
    f"m = make_mlp({TINY[0]!r}, batch={TINY[1]})\n"
    "t3 = time.perf_counter()\n"
    "r = gradprobe.check(m.loss, m.grad, m.params)\n"
    "t4 = time.perf_counter()\n"
    "print(json.dumps({'import_gradprobe': t2 - t1, 'first_check': t4 - t3,"
    " 'file': gradprobe.__file__}))\n"
)


# --------------------------------------------------------------------------- child side


def _model(workload: str) -> Any:
    from gradprobe import examples as ex

    if workload == "tiny":
        return ex.make_mlp(TINY[0], batch=TINY[1])
    if workload == "mid":
        return ex.make_mlp(MID[0], batch=MID[1])
    return {"conv": ex.make_conv, "batchnorm": ex.make_batchnorm_mlp, "rnn": ex.make_rnn}[
        workload
    ]()


def _timed(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """One cold call, then ``repeats`` timed calls: their median, and the last result."""
    times = []
    result = None
    for _ in range(1 + repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return {"cold": times[0], "median": statistics.median(times[1:]), "last": result}


def _entries(params: dict, per_param: int | None, subset: int | None, seed: int = 0) -> list:
    """(name, flat indices): ``per_param`` random entries of each parameter (None: all), or
    ``subset`` entries drawn uniformly over every entry."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = {k: int(np.size(v)) for k, v in params.items()}
    if subset is not None:
        starts = np.cumsum([0, *sizes.values()])
        picks = np.sort(rng.choice(int(starts[-1]), min(subset, int(starts[-1])), replace=False))
        return [
            (k, picks[(picks >= a) & (picks < b)] - a)
            for k, a, b in zip(sizes, starts[:-1], starts[1:], strict=True)
        ]
    if per_param is None:
        return [(k, np.arange(n)) for k, n in sizes.items()]
    return [(k, np.sort(rng.choice(n, min(per_param, n), replace=False))) for k, n in sizes.items()]


def _per_entry_loop(loss: Callable, params: dict, entries: list) -> int:
    """The classic check: perturb one entry, evaluate twice, restore (every BLAS thread)."""
    import numpy as np

    done = 0
    for name, idx in entries:
        flat = params[name].reshape(-1)
        eps = float(np.finfo(flat.dtype).eps) ** (1 / 3)
        for i in idx:
            saved = flat[i]
            h = eps * max(1.0, abs(saved))
            flat[i] = saved + h
            fp = loss(params)
            flat[i] = saved - h
            fm = loss(params)
            flat[i] = saved
            _ = (fp - fm) / (2 * h)
            done += 1
    return done


def _child_check(task: dict) -> dict:
    import numpy as np

    import gradprobe

    m = _model(task["workload"])
    kw: dict[str, Any] = {"seed": 0}
    if task.get("samples") is not None:
        kw["samples"] = task["samples"]
    if task.get("n_jobs") is not None:
        kw["n_jobs"] = task["n_jobs"]
    loss = m.loss
    if task.get("batched"):
        kw["batched"] = True
        loss = m.batched_loss
    out = _timed(lambda: gradprobe.check(loss, m.grad, m.params, **kw), task["repeats"])
    r = out.pop("last")
    return {
        **out,
        "n_evaluations": int(r.n_evaluations),
        "passed": bool(r.passed),
        "complete": bool(getattr(r, "complete", True)),
        "n_checked": int(sum(p.n_checked for p in r.params.values())),
        "n_params": int(sum(np.size(v) for v in m.params.values())),
        "executor": str(r.measured.get("executor", "")),
        "file": gradprobe.__file__,
    }


def _child_loop(task: dict) -> dict:
    import numpy as np
    from threadpoolctl import threadpool_limits

    import gradprobe

    m = _model(task["workload"])
    params = {k: np.array(v, copy=True) for k, v in m.params.items()}
    n_params = int(sum(v.size for v in params.values()))
    res: dict[str, Any] = {"n_params": n_params, "name": m.name, "file": gradprobe.__file__}
    for blas, key in ((1, "t_forward_1"), (None, "t_forward_all")):
        with threadpool_limits(blas, user_api="blas"):
            m.loss(params)
            times, start = [], time.perf_counter()
            while len(times) < 20 or time.perf_counter() - start < 0.3:
                t = time.perf_counter()
                m.loss(params)
                times.append(time.perf_counter() - t)
            res[key] = statistics.median(times)
    same = _entries(params, task["samples"], None)
    out = _timed(lambda: _per_entry_loop(m.loss, params, same), task["repeats"])
    res["same"] = {**out, "entries": out.pop("last")}
    big = n_params > task["full_loop_max"]
    if big and not task.get("subset"):
        return res  # the parent extrapolates from the same-entries loop
    every = _entries(params, None, task["subset"] if big else None, seed=1)
    out = _timed(lambda: _per_entry_loop(m.loss, params, every), task["repeats"])
    n = out.pop("last")
    scale = n_params / n
    res["all"] = {"cold": out["cold"] * scale, "median": out["median"] * scale, "entries": n_params}
    if n < n_params:
        res["all"]["extrapolated_from"] = n
    return res


def _child_torch(task: dict) -> dict:
    try:
        import torch
    except ImportError:
        return {"skipped": "torch not installed"}
    m = _model("tiny")
    X = torch.from_numpy(m.data["X"])
    y = torch.from_numpy(m.data["y"])
    names = list(m.params)
    tensors = [torch.from_numpy(m.params[k].copy()).requires_grad_() for k in names]
    n_layers = len(names) // 2
    l2 = m.data["l2"]

    def f(*ps: Any) -> Any:
        h = X
        for i in range(n_layers):
            z = h @ ps[2 * i] + ps[2 * i + 1]
            h = torch.tanh(z) if i < n_layers - 1 else z
        ce = torch.nn.functional.cross_entropy(h, y)
        return ce + 0.5 * l2 * sum((ps[2 * i] ** 2).sum() for i in range(n_layers))

    res: dict[str, Any] = {"version": torch.__version__, "threads": torch.get_num_threads()}
    for mode, fast in (("slow", False), ("fast", True)):
        out = _timed(
            lambda fast=fast: torch.autograd.gradcheck(f, tensors, fast_mode=fast), task["repeats"]
        )
        res[mode] = {**out, "passed": bool(out.pop("last"))}
    return res


def child_main() -> None:
    task = json.loads(sys.stdin.read())
    try:
        fn = {"check": _child_check, "loop": _child_loop, "torch": _child_torch}[task["kind"]]
        result = fn(task)
    except Exception as exc:  # reported as a row, not a crash of the whole run
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")


# --------------------------------------------------------------------------- parent side


class Runner:
    """Starts children with one version's ``src`` on ``PYTHONPATH`` in a neutral directory;
    a child runs ``script --child`` (a subclass in another benchmark names its own file)."""

    script = Path(__file__).resolve()

    def __init__(self, python: str, trees: dict[str, Path], timeout: float) -> None:
        self.python, self.trees, self.timeout = python, trees, timeout
        self.cwd = tempfile.mkdtemp(prefix="bench_speed_")

    def env(self, version: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if version is not None:
            env["PYTHONPATH"] = str(self.trees[version])
        return env

    def child(self, version: str, task: dict) -> dict:
        label = f"{version}: {task['kind']} {task.get('workload', '')} {task.get('tag', '')}"
        print(f"  running {label.strip()} ...", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(
                [self.python, str(self.script), "--child"],
                input=json.dumps(task),
                capture_output=True,
                text=True,
                env=self.env(version),
                cwd=self.cwd,
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {self.timeout:.0f} s"}
        lines = done.stdout.strip().splitlines()
        if done.returncode or not lines:
            return {"error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
        res = json.loads(lines[-1])
        where = res.get("file")
        if where and not Path(where).resolve().is_relative_to(self.trees[version].resolve()):
            return {"error": f"imported gradprobe from {where}, not {self.trees[version]}"}
        return res

    def wall(self, version: str | None, code: str) -> tuple[float, dict]:
        t = time.perf_counter()
        done = subprocess.run(
            [self.python, "-c", code],
            capture_output=True,
            text=True,
            env=self.env(version),
            cwd=self.cwd,
            timeout=self.timeout,
        )
        wall = time.perf_counter() - t
        if done.returncode:
            raise RuntimeError(f"{version}: {done.stderr.strip()[-300:]}")
        out = done.stdout.strip().splitlines()
        return wall, (json.loads(out[-1]) if out else {})


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def extract_src(repo: Path, rev: str) -> tuple[Path, str]:
    """``rev``'s ``src`` under the temporary folder (``git archive``, reused once there), and
    a note saying which."""
    full = _git(repo, "rev-parse", rev)
    root = Path(tempfile.gettempdir()) / f"gradprobe-before-{full[:12]}"
    if (root / "src" / "gradprobe").is_dir():
        return root / "src", f"git archive {full[:12]} src, reused"
    root.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", full, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root / "src", f"extracted now: git archive {full[:12]} src"


def resolve_trees(args: argparse.Namespace) -> tuple[dict[str, Path], list[str]]:
    """The two ``src`` directories, and lines saying where each came from."""
    here = Path(__file__).resolve().parents[1]

    def src_of(p: Path) -> Path:
        return p / "src" if (p / "src" / "gradprobe").is_dir() else p

    after = src_of(Path(args.after).resolve()) if args.after else here / "src"
    notes = []
    if args.before:
        before = src_of(Path(args.before).resolve())
        notes.append(f"before: {before} (given)")
    else:
        before, note = extract_src(here, BEFORE_COMMIT)
        notes.append(f"before: {before} ({note})")
    for name, src in (("before", before), ("after", after)):
        if not (src / "gradprobe" / "__init__.py").is_file():
            raise SystemExit(f"--{name}: no gradprobe package under {src}")
    try:
        head = _git(after, "log", "-1", "--format=%h")
        dirty = _git(after, "status", "--porcelain", "--", ".")
        notes.append(f"after: {after} (HEAD {head}{'; uncommitted changes' if dirty else ''})")
    except (subprocess.CalledProcessError, FileNotFoundError):
        notes.append(f"after: {after}")
    return {"before": before, "after": after}, notes


def machine_facts() -> str:
    from bench_engine import machine_facts as facts  # the benchmarks' one description

    return facts()


def _s(res: dict | None, cold: bool = True) -> str:
    if not res:
        return "-"
    if "error" in res:
        return f"error ({res['error'][:60]})"
    return f"{res['median']:,.3f} ({res['cold']:,.3f})" if cold else f"{res['median']:,.3f}"


def _ratio(num: dict | None, den: dict | None) -> str:
    ok = num and den and "error" not in num and "error" not in den
    return f"{num['median'] / den['median']:.2f}x" if ok else "-"


def _e(entries: int, t1: float, wall: dict | None, cores: int) -> str:
    if not wall or "error" in wall:
        return "-"
    return f"{2 * entries * t1 / (cores * wall['median']):.2f}"


def _n(res: dict | None, key: str) -> str:
    return f"{res[key]:,}" if res and key in res else "-"


def run_all(args: argparse.Namespace, runner: Runner, only: list[str]) -> dict:
    base = {"repeats": args.repeats}
    R: dict[str, Any] = {"workloads": {}}
    for w in (w for w in WORKLOADS if w in only):
        print(f"[{w}]", file=sys.stderr, flush=True)
        loop = runner.child(
            "after",
            {
                **base,
                "kind": "loop",
                "workload": w,
                "samples": args.samples,
                "full_loop_max": args.full_loop_max,
                "subset": None if args.quick else args.subset,
            },
        )
        if "error" not in loop and "all" not in loop:  # --quick: from the same-entries loop
            scale = loop["n_params"] / loop["same"]["entries"]
            loop["all"] = {
                "cold": loop["same"]["cold"] * scale,
                "median": loop["same"]["median"] * scale,
                "entries": loop["n_params"],
                "extrapolated_from": loop["same"]["entries"],
            }
        W: dict[str, Any] = {"loop": loop}
        configs = {"default": {}, "same": {"samples": args.samples}}
        if w in ("tiny", "mid"):
            configs["serial"] = {"samples": args.samples, "n_jobs": 1}
            configs["batched"] = {"samples": args.samples, "batched": True}
        for key, kw in configs.items():
            for v in ("before", "after"):
                W[f"{v}_{key}"] = runner.child(
                    v, {**base, "kind": "check", "workload": w, "tag": key, **kw}
                )
        R["workloads"][w] = W
    if "latency" in only:
        R["latency"] = latency(runner, args.latency_runs)
    if "torch" in only:
        R["torch"] = runner.child("after", {**base, "kind": "torch", "workload": "tiny"})
    return R


def latency(runner: Runner, runs: int) -> dict:
    print("[latency]", file=sys.stderr, flush=True)
    out: dict[str, Any] = {
        "numpy": [],
        "before": [],
        "after": [],
        "inside": {"before": [], "after": []},
    }
    for i in range(runs):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        out["numpy"].append(runner.wall(None, "import numpy")[0])
        for v in order:
            wall, inside = runner.wall(v, LATENCY_CODE)
            out[v].append(wall)
            out["inside"][v].append(inside)
    return out


def report(R: dict, args: argparse.Namespace, cores: int) -> None:
    ws = R["workloads"]
    label = {
        "tiny": "tiny MLP 64-32-32-10, batch 16",
        "mid": "mid MLP 784-256-128-10, batch 64",
        "conv": "make_conv()",
        "batchnorm": "make_batchnorm_mlp()",
        "rnn": "make_rnn()",
    }
    print("\nWall times in seconds: median over repeats, the first (cold) call in parentheses.")
    if "mid" in ws:
        W = ws["mid"]
        print("\n### 1. Default check() of the mid MLP\n")
        print("| version | loss evaluations | entries checked one by one | passed | wall (s) |")
        print("|---|---|---|---|---|")
        for v in ("before", "after"):
            r = W[f"{v}_default"]
            passed = "-" if "error" in r else ("yes" if r["passed"] else "no")
            print(f"| {v} | {_n(r, 'n_evaluations')} | {_n(r, 'n_checked')} | {passed} | {_s(r)} |")
        print(
            f"\nSpeed-up after/before: {_ratio(W['before_default'], W['after_default'])} "
            "(median wall)."
        )
    if ws:
        print(f"\n### 2a. Same entries: check(samples={args.samples}) vs the per-entry loop\n")
        print(
            f"{args.samples} entries per parameter (fewer where a parameter is smaller); each "
            "version's default n_jobs; the loop perturbs, evaluates and restores one entry at "
            "a time with every BLAS thread. E = 2 * entries * T_forward / (cores * wall), "
            f"cores = {cores}.\n"
        )
        print(
            "| workload | params | entries | T_forward 1 / all BLAS threads (us) | loop (s) "
            "| before (s) | after (s) | after/before | before vs loop | after vs loop "
            "| E loop / before / after |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for w, W in ws.items():
            L = W["loop"]
            if "error" in L:
                print(f"| {label[w]} | loop error: {L['error'][:80]} |")
                continue
            same, b, a = L["same"], W["before_same"], W["after_same"]
            n, t1 = same["entries"], L["t_forward_1"]
            es = " / ".join(_e(n, t1, x, cores) for x in (same, b, a))
            print(
                f"| {label[w]} | {L['n_params']:,} | {n:,} | {t1 * 1e6:,.0f} / "
                f"{L['t_forward_all'] * 1e6:,.0f} | {_s(same)} | {_s(b)} | {_s(a)} "
                f"| {_ratio(b, a)} | {_ratio(same, b)} | {_ratio(same, a)} | {es} |"
            )
        print(
            "\nEntries checked one by one (before / after) and the after executor: "
            + "; ".join(
                f"{w}: {_n(W['before_same'], 'n_checked')} / {_n(W['after_same'], 'n_checked')}, "
                f"{W['after_same'].get('executor', '?')}"
                for w, W in ws.items()
            )
        )
        print("\n### 2b. Coverage: the default check vs the loop over every entry\n")
        print(
            "| workload | params | loop over every entry (s) | before default (s) "
            "| before evals | after default (s) | after evals | after/before "
            "| before vs loop | after vs loop |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for w, W in ws.items():
            L = W["loop"]
            if "error" in L:
                continue
            A, b, a = L.get("all"), W["before_default"], W["after_default"]
            how = (
                f" (extrapolated from {A['extrapolated_from']:,} timed entries)"
                if A and "extrapolated_from" in A
                else " (all timed)"
            )
            print(
                f"| {label[w]} | {L['n_params']:,} | {_s(A)}{how if A else ''} | {_s(b)} "
                f"| {_n(b, 'n_evaluations')} | {_s(a)} | {_n(a, 'n_evaluations')} "
                f"| {_ratio(b, a)} | {_ratio(A, b)} | {_ratio(A, a)} |"
            )
    batched = {w: W for w, W in ws.items() if "before_batched" in W and "error" not in W["loop"]}
    if batched:
        print(f"\n### 3. Batched vs serial vs loop, {args.samples} entries per parameter\n")
        print(
            "| workload | what | before (s) | after (s) | after/before "
            "| before vs loop | after vs loop |"
        )
        print("|---|---|---|---|---|---|---|")
        for w, W in batched.items():
            same = W["loop"]["same"]
            print(
                f"| {label[w]} | per-entry loop (loss, every BLAS thread) | {_s(same)} "
                f"| {_s(same)} | - | 1.00x | 1.00x |"
            )
            for key, what in (
                ("serial", "check(n_jobs=1)"),
                ("batched", "check(batched_loss, batched=True)"),
            ):
                b, a = W[f"before_{key}"], W[f"after_{key}"]
                print(
                    f"| {label[w]} | {what} | {_s(b)} | {_s(a)} | {_ratio(b, a)} "
                    f"| {_ratio(same, b)} | {_ratio(same, a)} |"
                )
    if "latency" in R:
        lat = R["latency"]
        med = statistics.median
        base = med(lat["numpy"])
        print(f"\n### 4. First-check latency in a fresh process ({len(lat['numpy'])} runs each)\n")
        print(f'`python -c "import numpy"` alone: median {base:.3f} s.\n')
        print(
            "| version | import gradprobe + first check of the tiny MLP, whole process (s) "
            "| minus import numpy (s) | inside: import gradprobe (s) | inside: first check (s) |"
        )
        print("|---|---|---|---|---|")
        for v in ("before", "after"):
            ins = lat["inside"][v]
            print(
                f"| {v} | {med(lat[v]):.3f} | {med(lat[v]) - base:.3f} "
                f"| {med(i['import_gradprobe'] for i in ins):.3f} "
                f"| {med(i['first_check'] for i in ins):.3f} |"
            )
        lb, la = med(lat["before"]) - base, med(lat["after"]) - base
        print(f"\nSpeed-up after/before: {lb / la:.2f}x." if la > 0 else "")
    if "torch" in R:
        T = R["torch"]
        print("\n### 5. torch.autograd.gradcheck on the tiny MLP\n")
        if "skipped" in T or "error" in T:
            print(f"Skipped: {T.get('skipped') or T.get('error')}.")
            return
        print(
            f"torch {T['version']}, {T['threads']} threads. Slow mode differences every "
            "entry; fast mode checks one random projection.\n"
        )
        W = ws.get("tiny", {})
        A = W.get("loop", {}).get("all")
        print("| what | wall (s) | vs loop over every entry |")
        print("|---|---|---|")
        rows = [
            ("per-entry loop over every entry", A),
            ("gradprobe before, default check", W.get("before_default")),
            ("gradprobe after, default check", W.get("after_default")),
            ("torch gradcheck slow mode", T["slow"]),
            ("torch gradcheck fast mode", T["fast"]),
        ]
        for what, r in rows:
            if r:
                print(f"| {what} | {_s(r)} | {_ratio(A, r)} |")


def main() -> None:
    if "--child" in sys.argv[1:]:
        child_main()
        return
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--before", help=f"src (or tree) of gradprobe at {BEFORE_COMMIT}")
    ap.add_argument("--after", help="src (or tree) of the version to compare (default: this one)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls after the cold one (default 5; 1 with --quick)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: fewer repeats, no extra timed subset for the mid MLP's every-entry loop",
    )
    ap.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    ap.add_argument("--samples", type=int, default=64, help="entries per parameter, tables 2a/3")
    ap.add_argument(
        "--subset",
        type=int,
        default=4000,
        help="timed entries to extrapolate the every-entry loop of a big model from",
    )
    ap.add_argument(
        "--full-loop-max",
        type=int,
        default=20000,
        help="models with more entries get the every-entry loop extrapolated",
    )
    ap.add_argument("--latency-runs", type=int, default=None, help="default 5; 3 with --quick")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.latency_runs = args.latency_runs or (3 if args.quick else 5)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(only) - set(SECTIONS))
    if bad:
        ap.error(f"--only: unknown {', '.join(bad)}; expected some of {', '.join(SECTIONS)}")
    trees, notes = resolve_trees(args)
    start = time.perf_counter()
    cores = os.cpu_count() or 1
    print(f"# gradprobe speed, before ({BEFORE_COMMIT}) and after, one run\n")
    print(machine_facts())
    print()
    for line in notes:
        print(f"- {line}")
    print(
        f"- python {sys.executable}; repeats {args.repeats} after one cold call, each "
        f"measurement in a fresh process{'; --quick' if args.quick else ''}"
    )
    if hasattr(os, "getloadavg"):
        print(f"- load average at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    runner = Runner(sys.executable, trees, args.timeout)
    for v in trees:  # fills each tree's bytecode and numba caches, so no cold call compiles
        runner.wall(v, LATENCY_CODE)
    R = run_all(args, runner, only)
    report(R, args, cores)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
