"""A suite's isolated checks share one worker process, replaced only when a check kills it: a
hanging or process-killing check still gets its own clean outcome and the checks after it
run; the worker is not a daemon (a check's n_jobs starts joblib workers) and nothing is left
running, even when the parent dies mid-check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from gradprobe.suites import isolation
from gradprobe.suites.config import load_suite
from gradprobe.suites.isolation import IsolatedWorker
from gradprobe.suites.runner import run_check

from ..helpers import live_workers

MODELS = textwrap.dedent(
    """
    import os
    import signal
    import time

    import numpy as np

    import gradprobe

    A = np.array([[3.0, 1.0, 0.5], [1.0, 2.0, 0.2], [0.5, 0.2, 4.0]])
    X = np.array([0.3, -0.7, 1.1])


    def _record(record):
        with open(record, "a") as fh:
            fh.write(f"{os.getpid()}\\n")


    def _at_base(v):
        return np.array_equal(v, X)


    def quadratic(record, scale=1.0):
        _record(record)
        return gradprobe.Problem(
            loss=lambda v: float(0.5 * v @ A @ v), grad=lambda v: scale * (A @ v), params=X.copy()
        )


    def raises(record):
        _record(record)

        def loss(v):
            if not _at_base(v):
                raise RuntimeError("boom in the loss")
            return float(0.5 * v @ A @ v)

        return gradprobe.Problem(loss=loss, grad=lambda v: A @ v, params=X.copy())


    def exits(record):
        # Ends its process at the first perturbed point, as a segfault in C code would.
        _record(record)

        def loss(v):
            if not _at_base(v):
                os._exit(7)
            return float(0.5 * v @ A @ v)

        return gradprobe.Problem(loss=loss, grad=lambda v: A @ v, params=X.copy())


    def hangs(record):
        # Ignores SIGALRM so only the watchdog's kill can stop it.
        _record(record)

        def loss(v):
            if not _at_base(v):
                signal.signal(signal.SIGALRM, signal.SIG_IGN)
                while True:
                    time.sleep(0.05)
            return float(0.5 * v @ A @ v)

        return gradprobe.Problem(loss=loss, grad=lambda v: A @ v, params=X.copy())


    def sleepy(record, n=60, delay=0.01):
        _record(record)
        w0 = np.linspace(-1.0, 1.0, n)

        def loss(w):
            time.sleep(delay)
            return float(np.sum(np.sin(w)))

        return gradprobe.Problem(loss=loss, grad=np.cos, params=w0)
    """
)


def _suite(tmp_path: Path, checks: list[tuple]) -> tuple[list, Path]:
    """Isolated checks ``(name, target[, args[, option lines]])`` of ``models.py``: their specs,
    and the file where each target records the pid of the process that built it."""
    (tmp_path / "models.py").write_text(MODELS)
    record = tmp_path / "pids.txt"
    body = ""
    for name, target, *rest in checks:
        args = {"record": str(record), **(rest[0] if rest else {})}
        table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in args.items())
        options = rest[1] if len(rest) > 1 else ""
        body += f'[checks.{name}]\ntarget = "models.py:{target}"\nargs = {{ {table} }}\n{options}\n'
    (tmp_path / "gradprobe.toml").write_text(body)
    return list(load_suite(tmp_path / "gradprobe.toml").checks), record


def _pids(record: Path) -> list[int]:
    return [int(line) for line in record.read_text().split()]


@pytest.mark.timeout(120)
def test_a_suite_runs_its_isolated_checks_in_one_worker(tmp_path):
    specs, record = _suite(
        tmp_path,
        [
            ("a", "quadratic"),
            ("b", "quadratic", {"scale": 1.5}),
            ("c", "raises"),
            ("d", "quadratic"),
        ],
    )
    with IsolatedWorker() as worker:
        outcomes = [run_check(spec, worker=worker) for spec in specs]
        assert len(worker.pids) == 1 and psutil.pid_exists(worker.pids[0])
    assert [o.status for o in outcomes] == ["passed", "failed", "crashed", "passed"]
    assert "boom in the loss" in outcomes[2].message
    assert _pids(record) == worker.pids * 4  # every check built in that one worker
    assert not live_workers()  # stopped at the end of the block


@pytest.mark.timeout(120)
def test_a_hanging_or_dying_check_gets_its_own_outcome_and_a_fresh_worker(tmp_path, monkeypatch):
    monkeypatch.setattr(isolation, "_grace", lambda timeout: 0.5)  # kill soon after `timeout`
    specs, record = _suite(
        tmp_path,
        [
            ("a", "quadratic"),
            ("hang", "hangs", {}, "timeout = 1"),
            ("b", "quadratic"),
            ("dies", "exits"),
            ("c", "quadratic"),
            ("d", "quadratic"),
        ],
    )
    with IsolatedWorker() as worker:
        outcomes = {s.name: run_check(s, worker=worker) for s in specs}
    statuses = {name: o.status for name, o in outcomes.items()}
    assert statuses == {
        "a": "passed",
        "hang": "aborted",
        "b": "passed",
        "dies": "crashed",
        "c": "passed",
        "d": "passed",
    }
    assert "the worker process was killed" in outcomes["hang"].message
    assert "died (exit code 7) before reporting" in outcomes["dies"].message
    first, second, third = worker.pids  # replaced after the hang and after the death
    assert _pids(record) == [first, first, second, second, third, third]
    assert not live_workers()


@pytest.mark.timeout(120)
def test_n_jobs_runs_on_joblib_workers_inside_an_isolated_check(tmp_path, monkeypatch):
    pytest.importorskip("joblib")
    killed: list[int] = []
    kill = isolation._kill
    monkeypatch.setattr(isolation, "_kill", lambda proc: (killed.append(proc.pid), kill(proc)))
    specs, _ = _suite(tmp_path, [("par", "sleepy", {}, "n_jobs = 2")])
    with IsolatedWorker() as worker:
        outcome = run_check(specs[0], worker=worker)
        assert outcome.status == "passed", outcome.message
        executor = outcome.report.measured["executor"]
        # A daemon worker would have fallen back to one job (joblib cannot start processes
        # there); the slow loss makes the calls worth dispatching.
        assert executor.startswith("joblib chunks (loky, 2 workers)"), executor
        assert "kept in process" not in executor
        assert not any("n_jobs=1" in w for w in outcome.report.warnings)
    assert not live_workers()
    # Asked to stop, the worker stops its joblib workers and exits by itself (it waited out
    # their idle timeout, past the grace, and was killed).
    assert not killed


PARENT = """
import sys
from gradprobe.suites.config import load_suite
from gradprobe.suites.isolation import IsolatedWorker
from gradprobe.suites.runner import run_check

spec = load_suite(sys.argv[1]).checks[0]
with IsolatedWorker() as worker:
    run_check(spec, worker=worker)  # hangs: the test kills this process meanwhile
"""


@pytest.mark.timeout(120)
def test_the_worker_exits_when_its_parent_is_killed_mid_check(tmp_path):
    _, record = _suite(tmp_path, [("hang", "hangs", {}, "timeout = 600")])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "gradprobe.toml")], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not (record.exists() and record.read_text().strip()):
            assert time.monotonic() < deadline and parent.poll() is None, "the check never began"
            time.sleep(0.05)
        (worker_pid,) = _pids(record)
        time.sleep(0.3)  # inside the hanging loss
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker_pid), "the worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
