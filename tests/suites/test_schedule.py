"""``gradprobe run --jobs N`` hands out the checks longest first, each where the frameworks it
needs are imported already, read from the targets' source without importing them; and an idle
worker told to stop ends at once (not after its interpreter's teardown), unless its checks left
processes of their own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from gradprobe.cli import main
from gradprobe.suites.config import load_suite
from gradprobe.suites.runner import CheckOutcome
from gradprobe.suites.schedule import (
    DEFAULT_SECONDS,
    IMPORT_SECONDS,
    Planner,
    frameworks_of,
    known_seconds,
    last_run_seconds,
)

# Never imported by these tests: only read. torch and jax need not be installed.
MODELS = textwrap.dedent(
    """
    import numpy as np
    import gradprobe


    def plain():
        return gradprobe.Problem(loss=lambda v: float(v @ v), grad=lambda v: 2 * v,
                                 params=np.ones(3))


    def _torch_layer(width):
        import torch

        return torch.nn.Linear(width, width)


    def torch_check(width=8):
        layer = _torch_layer(width)
        return gradprobe.Problem.torch(layer, np.ones(width))


    def torch_by_attribute():
        return gradprobe.Problem.torch(lambda x: x, np.ones(2))


    def jax_check():
        import jax.numpy as jnp

        return gradprobe.Problem.jax(jnp.sin, np.ones(3))
    """
)

SUITE = """
[checks.plain]
target = "models.py:plain"
[checks.torch_a]
target = "models.py:torch_check"
[checks.jax]
target = "models.py:jax_check"
[checks.torch_b]
target = "models.py:torch_check"
args = { width = 4 }
[checks.plain2]
target = "models.py:plain"
[checks.torch_attr]
target = "models.py:torch_by_attribute"
"""


def _suite(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "gradprobe.toml").write_text(SUITE)
    return load_suite(str(tmp_path / "gradprobe.toml"))


def test_frameworks_are_read_from_the_source(tmp_path):
    suite = _suite(tmp_path)
    needs = {c.name: set(frameworks_of(c)) for c in suite.checks}
    # torch where the function (or a module-level function it calls) imports or names it
    assert needs == {
        "plain": set(),
        "torch_a": {"torch"},
        "jax": {"jax"},
        "torch_b": {"torch"},
        "plain2": set(),
        "torch_attr": {"torch"},
    }
    # A framework imported at module level is needed by every function of the module.
    (tmp_path / "models.py").write_text("from gradprobe import jax as gjax\n" + MODELS)
    assert all(frameworks_of(c) >= {"jax"} for c in suite.checks)


def test_frameworks_of_an_unreadable_target_are_unknown(tmp_path):
    suite = _suite(tmp_path)
    (tmp_path / "models.py").write_text("def plain(:\n")  # a syntax error: nothing known
    assert frameworks_of(suite.checks[0]) == frozenset()


def _planner(tmp_path, seconds=None, slots=2):
    suite = _suite(tmp_path)
    names = [c.name for c in suite.checks]
    return Planner(suite.checks, slots, seconds or {}), names


def test_the_longest_start_first_and_a_framework_stays_in_one_slot(tmp_path):
    planner, names = _planner(tmp_path)
    first = names[planner.take(0)]
    second = names[planner.take(1)]
    # torch costs most to import: the first torch check goes to slot 0; the other torch checks
    # are cheaper there, so slot 1 takes jax, the next longest.
    assert (first, second) == ("torch_a", "jax")
    planner.finish(1)
    # Slot 1 has jax; what is left for it are the plain checks, in suite order.
    assert names[planner.take(1)] == "plain"
    planner.finish(0)
    # Slot 0 has torch: torch_b and torch_attr cost there what plain2 does, but 1.5 s more in
    # slot 1, so they go first.
    assert [names[planner.take(0)] for _ in range(2)] == ["torch_b", "torch_attr"]
    assert planner.loaded == [{"torch"}, {"jax"}]


def test_a_slot_waits_rather_than_import_a_framework_for_a_short_check(tmp_path):
    now = [0.0]
    planner, names = _planner(tmp_path)
    planner.clock = lambda: now[0]
    for name in ("plain", "jax", "plain2", "torch_attr"):  # leave torch_a and torch_b
        planner.upcoming.remove(names.index(name))
    assert names[planner.take(0)] == "torch_a"  # expected to take 0.5 + 1.5 s
    # torch_b runs in 0.5 s where torch is imported, 2 s here. Right away, slot 0 would get
    # to it in 2 s and finish it at 2.5: slot 1 takes it now.
    assert planner.busy_for(0) == 2.0 and planner.busy_for(1) == 0.0
    assert planner.take(1) is not None
    planner.finish(1, replaced=True)
    planner.upcoming.append(names.index("torch_b"))
    # 1.9 s in, slot 0 will be free in 0.1 s: slot 1 waits.
    now[0] = 1.9
    assert planner.take(1) is None
    # 10 s in, torch_a has overrun its estimate by 8 s (stuck until its timeout, maybe): slot
    # 1 stops waiting for it.
    now[0] = 10.0
    assert planner.busy_for(0) == 8.0
    assert names[planner.take(1)] == "torch_b"


def test_a_replaced_worker_has_imported_nothing(tmp_path):
    planner, names = _planner(tmp_path)
    for name in ("plain", "jax", "plain2", "torch_attr"):
        planner.upcoming.remove(names.index(name))
    planner.clock = lambda: 1.9
    planner.take(0)
    planner.finish(0, replaced=True)  # torch_a killed its worker: torch is gone from it
    assert planner.loaded[0] == set()
    assert planner.cost(names.index("torch_b"), 0) == planner.cost(names.index("torch_b"), 1)
    assert names[planner.take(1)] == "torch_b"
    assert planner.take(0) is None and planner.take(1) is None


def test_known_seconds_order_the_checks(tmp_path):
    planner, names = _planner(tmp_path, seconds={"plain2": 9.0, "torch_b": 5.0})
    assert planner.cost(names.index("plain"), 0) == DEFAULT_SECONDS
    assert planner.cost(names.index("torch_b"), 0) == 5.0 + IMPORT_SECONDS["torch"]
    assert [names[planner.take(0)], names[planner.take(1)]] == ["plain2", "torch_b"]
    assert planner.drop() and planner.take(0) is None  # Ctrl-C: nothing more starts


def test_seconds_come_from_a_baseline_or_the_last_json(tmp_path):
    assert last_run_seconds(None) == {} and last_run_seconds(str(tmp_path / "no.json")) == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert last_run_seconds(str(tmp_path / "bad.json")) == {}
    outcomes = [
        CheckOutcome(name="a", target="m.py:a", status="crashed", duration=1.5),
        CheckOutcome(name="b", target="m.py:b", status="error", duration=-1.0),
    ]
    assert known_seconds(outcomes) == {"a": 1.5}
    (tmp_path / "gradprobe.toml").write_text(SUITE.split("[checks.torch_a]")[0])
    (tmp_path / "models.py").write_text(MODELS)
    out = str(tmp_path / "r.json")
    code = main(["run", "-q", "--no-isolate", "--json", out, str(tmp_path / "gradprobe.toml")])
    assert code == 0
    data = json.loads((tmp_path / "r.json").read_text())
    own = data["checks"][0]["report"]["timings"]["total"]
    assert last_run_seconds(out) == {"plain": own}


LEAVE = textwrap.dedent(
    """
    import atexit, multiprocessing, sys, time
    from gradprobe.suites.worker_exit import leave


    class Teardown:
        def __del__(self):
            print("teardown ran", flush=True)


    if __name__ == "__main__":
        kept = Teardown()  # freed in the interpreter's teardown, which leave() skips
        atexit.register(lambda: print("atexit ran", flush=True))
        if sys.argv[1] == "child":
            child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(1,))
            child.start()
        leave()
        print("leave returned", flush=True)
    """
)


def test_an_idle_worker_told_to_stop_ends_at_once_unless_it_has_children(tmp_path):
    script = tmp_path / "leave.py"
    script.write_text(LEAVE)
    alone = subprocess.run([sys.executable, str(script), "alone"], capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.splitlines() == ["atexit ran"]
    kids = subprocess.run([sys.executable, str(script), "child"], capture_output=True, text=True)
    assert kids.returncode == 0, kids.stderr
    assert kids.stdout.splitlines() == ["leave returned", "atexit ran", "teardown ran"]


def test_jobs_reads_the_times_of_the_last_run_or_the_baseline(tmp_path, monkeypatch):
    import gradprobe.suites.pool as pool

    seen = []

    class Recording(Planner):
        def __post_init__(self):
            seen.append(dict(self.seconds))
            super().__post_init__()

    monkeypatch.setattr(pool, "Planner", Recording)
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "gradprobe.toml").write_text(
        '[defaults]\nisolate = false\n[checks.one]\ntarget = "models.py:plain"\n'
        '[checks.two]\ntarget = "models.py:plain"\n'
    )
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-q", "--jobs", "2", "--json", "r.json"]) == 0
    assert main(["run", "-q", "--jobs", "2", "--json", "r.json"]) == 0
    assert main(["run", "-q", "--jobs", "2", "--baseline", "r.json"]) == 0
    assert seen[0] == {}
    assert set(seen[1]) == set(seen[2]) == {"one", "two"}
