"""A process worker stuck in C code that holds the GIL still ends when its parent is killed
(issue 26): on Linux the kernel's parent-death signal, armed in the worker's initializer. It
fires when the parent *thread* that started the worker ends, so a pool started from a thread
that then ends must not die with that thread, and must still die with the process, the thread
running or not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import gradprobe
from gradprobe.evaluate import pool

SRC = str(Path(gradprobe.__file__).resolve().parents[1])

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's"
)

PARENT = textwrap.dedent(
    """
    import itertools, os, sys, threading, time
    from dataclasses import replace
    import joblib, numpy as np, psutil
    import gradprobe
    from gradprobe.evaluate import parallel

    # Every call to the workers, however small (as the tests' conftest does).
    parallel.DEFAULT_POLICY = replace(
        parallel.DEFAULT_POLICY, min_dispatch_seconds=0.0, process_start_seconds=0.0
    )
    PARENT = os.getpid()
    X = np.linspace(0.0, 1.0, 40)
    MARKER = sys.argv[2]


    def smooth(v):
        if os.getpid() == PARENT:
            time.sleep(0.01)  # the check's own process evaluates too: leave work to workers
        return float(v @ v)


    def stuck(v):
        # In a worker only: stuck in C code that never lets go of the GIL (no Python signal
        # handler, no thread of the worker runs again).
        if os.getpid() != PARENT:
            with open(MARKER, "w") as fh:
                fh.write(str(os.getpid()))
            any(itertools.repeat(0))
        time.sleep(0.05)
        return float(v @ v)


    def check(loss):
        # Three evaluators: this process and two worker processes.
        with joblib.parallel_config(backend="loky"):
            gradprobe.check(loss, lambda v: 2 * v, X.copy(), n_jobs=3, samples="all")


    def workers():
        return sorted(
            c.pid for c in psutil.Process().children()
            if "resource_tracker" not in " ".join(c.cmdline())
        )


    def guards():
        return sum(len(psutil.Process(w).children()) for w in workers())


    if sys.argv[1] == "thread":
        # The pool is started by a thread that ends; it must outlive that thread.
        starter = threading.Thread(target=check, args=(smooth,))
        starter.start()
        starter.join()
        print(*workers(), flush=True)
        time.sleep(1.0)  # longer than a worker's poll of its starting thread
        print(*workers(), flush=True)
        check(smooth)  # the same workers, reused from the main thread
        print(*workers(), guards(), flush=True)
    if sys.argv[1] == "running thread":
        # Killed while the thread that started the pool still runs (waiting on the stuck loss).
        starter = threading.Thread(target=check, args=(stuck,))
        starter.start()
        starter.join()
    check(stuck)
    """
)


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "started_by",
    [
        "main",
        pytest.param("thread", marks=pytest.mark.slow),
        pytest.param("running thread", marks=pytest.mark.slow),
    ],
)
def test_a_killed_parent_leaves_no_worker_even_with_a_gil_holding_loss(tmp_path, started_by):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    marker = tmp_path / "stuck.txt"
    proc = subprocess.Popen(
        [sys.executable, str(script), started_by, str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    family: list[int] = []
    try:
        if started_by == "thread":
            seen = [proc.stdout.readline().split() for _ in range(3)]
            assert len(seen[0]) == 2 and seen[0] == seen[1] == seen[2][:2], (
                f"the workers the ended thread started did not last and serve: {seen}",
                proc.stderr.read() if proc.poll() is not None else "",
            )
            # Their guard processes were stopped once the kernel's signal was armed.
            assert seen[2][2:] == ["0"], seen
        deadline = time.monotonic() + 120
        while not marker.exists() or not marker.read_text():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no worker reached the stuck loss"
            time.sleep(0.05)
        family = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert int(marker.read_text()) in family
        time.sleep(0.3)  # inside any(itertools.repeat(0)), the GIL held
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while _alive(family) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(family), f"outlived their killed parent: {_alive(family)}"
    finally:
        for pid in _alive(family):  # a survivor is an error above: do not leave it running
            psutil.Process(pid).kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_initializer_argument_records_the_thread_that_starts_the_worker():
    import pickle
    import threading

    spawner = pool._Spawner(os.getpid())
    here = pickle.loads(pickle.dumps(spawner))
    assert (here.pid, here.thread, here.lasting) == (os.getpid(), threading.get_native_id(), True)
    box = {}
    thread = threading.Thread(target=lambda: box.update(s=pickle.loads(pickle.dumps(spawner))))
    thread.start()
    thread.join()
    assert box["s"].lasting is False and box["s"].thread != here.thread
    # One parent, one key: joblib keeps reusing the executor whichever thread calls.
    assert box["s"] == spawner == here and hash(box["s"]) == hash(spawner)
