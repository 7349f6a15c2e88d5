"""A nightly job that is killed, runs out of disk or meets odd input loses nothing and says
nothing false (issue 26), through real ``gradprobe`` subprocesses: SIGKILL and SIGTERM of the
parent while a loss is stuck in C code holding the GIL leave no process behind; SIGTERM writes
what finished and exits 143; a failed write keeps the previous file; files that are not UTF-8,
corrupted baselines and ``sys.exit`` in a loss get their own exit codes and messages."""

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

MODELS = textwrap.dedent(
    """
    import itertools
    import os
    import sys
    import time

    import numpy as np

    import gradprobe

    X = np.array([0.3, -0.7, 1.1])


    def _mark(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))


    def good():
        return gradprobe.Problem(
            loss=lambda v: float(v @ v), grad=lambda v: 2 * v, params=X.copy()
        )


    def wrong():
        return gradprobe.Problem(
            loss=lambda v: float(v @ v), grad=lambda v: -2 * v, params=X.copy()
        )


    def stuck(marker="started.txt"):
        # Stuck in C code that never releases the GIL: no Python signal handler, no thread
        # of the worker ever runs again.
        def loss(v):
            if not np.array_equal(v, X):
                _mark(marker)
                any(itertools.repeat(0))
            return float(v @ v)

        return gradprobe.Problem(loss=loss, grad=lambda v: 2 * v, params=X.copy())


    def slow(marker="started.txt"):
        def loss(v):
            if v.shape == (400,) and not np.array_equal(v, np.linspace(0, 1, 400)):
                _mark(marker)
                time.sleep(0.05)
            return float(v @ v)

        return gradprobe.Problem(
            loss=loss, grad=lambda v: 2 * v, params=np.linspace(0, 1, 400)
        )


    def exits(code=0):
        def loss(v):
            if not np.array_equal(v, X):
                sys.exit(code)
            return float(v @ v)

        return gradprobe.Problem(loss=loss, grad=lambda v: 2 * v, params=X.copy())


    def hard_exit():
        def loss(v):
            if not np.array_equal(v, X):
                os._exit(0)
            return float(v @ v)

        return gradprobe.Problem(loss=loss, grad=lambda v: 2 * v, params=X.copy())
    """
)


def _setup(folder: Path, suite: str) -> Path:
    (folder / "models.py").write_text(MODELS, encoding="utf-8")
    path = folder / "gradprobe.toml"
    path.write_text(textwrap.dedent(suite), encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "CI": "1"}


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradprobe", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=timeout,
    )


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gradprobe", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=_env(),
        start_new_session=True,  # a group of its own, as under a CI runner
    )


def _wait_for(marker: Path, proc: subprocess.Popen, limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while not (marker.exists() and marker.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the check never began"
        time.sleep(0.05)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


STUCK_SUITE = """
[checks.first]
target = "models.py:good"

[checks.stuck]
target = "models.py:stuck"
timeout = 600
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "how",
    [
        pytest.param(signal.SIGKILL, id="SIGKILL"),
        pytest.param(signal.SIGTERM, id="SIGTERM", marks=pytest.mark.slow),
    ],
)
def test_a_killed_parent_leaves_no_process_behind_even_with_a_gil_holding_loss(tmp_path, how):
    _setup(tmp_path, STUCK_SUITE)
    proc = _start("run", "gradprobe.toml", "--json", "out.json", cwd=tmp_path)
    family: list[psutil.Process] = []
    try:
        _wait_for(tmp_path / "started.txt", proc)
        worker = psutil.Process(int((tmp_path / "started.txt").read_text()))
        family = psutil.Process(proc.pid).children(recursive=True)
        assert worker in family
        time.sleep(0.3)  # inside any(itertools.repeat(0))
        os.kill(proc.pid, how)
        # The run's streams end: nothing still holds them open (the pipe reaches EOF).
        _, err = proc.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while _alive(family) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(family), f"outlived their parent: {_alive(family)}"
    finally:
        for p in _alive(family):  # a survivor is an error above: do not leave it running
            p.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if how == signal.SIGTERM:
        # Terminated as after Ctrl-C: the worker could not answer within 10 s and was killed;
        # what finished was written.
        assert proc.returncode == 143, err
        assert "interrupted (SIGTERM) during stuck" in err
        data = json.loads((tmp_path / "out.json").read_text())
        assert [(c["name"], c["status"]) for c in data["checks"]] == [
            ("first", "passed"),
            ("stuck", "interrupted"),
        ]
        assert data["exit_code"] == 143


SLOW_SUITE = """
[checks.first]
target = "models.py:good"

[checks.slow]
target = "models.py:slow"
samples = "all"
timeout = 600

[checks.third]
target = "models.py:good"
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "no-isolate"])
def test_sigterm_writes_what_finished_and_exits_143(tmp_path, isolate):
    _setup(tmp_path, SLOW_SUITE)
    (tmp_path / "out.json").write_text('{"stale": true}', encoding="utf-8")
    args = ["run", "gradprobe.toml", "--json", "out.json", "--junit", "out.xml"]
    proc = _start(*args, *([] if isolate else ["--no-isolate"]), cwd=tmp_path)
    try:
        _wait_for(tmp_path / "started.txt", proc)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "gradprobe: interrupted (SIGTERM) during slow: 2 of 3 checks ran, 1 not run" in err
    assert "Traceback" not in err
    assert "1 passed, 1 interrupted, 1 not run — exit code 143" in out
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["exit_code"] == 143
    assert [(c["name"], c["status"]) for c in data["checks"]] == [
        ("first", "passed"),
        ("slow", "interrupted"),
    ]
    assert 'type="Interrupted"' in (tmp_path / "out.xml").read_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "no-isolate"])
def test_a_stop_after_the_outputs_are_written_keeps_the_exit_code_they_record(
    tmp_path, how, isolate
):
    # After the verdict line (the outputs written) the process still stops its workers and
    # the interpreter exits: a stop then changes nothing (it ended with SIGTERM's default or a
    # KeyboardInterrupt traceback, while out.json said 0).
    _setup(tmp_path, "[checks.first]\ntarget = 'models.py:good'\n")
    args = ["run", "gradprobe.toml", "--json", "out.json"]
    proc = _start(*args, *([] if isolate else ["--no-isolate"]), cwd=tmp_path)
    try:
        for line in proc.stdout:
            if "— exit code" in line:
                break
        os.kill(proc.pid, how)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads((tmp_path / "out.json").read_text())["exit_code"] == 0
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "interrupted" not in err


# -- outputs written whole or not at all -----------------------------------------------------
def _disk_full(monkeypatch, fail_on: str) -> None:
    """Make the write of any file whose name contains ``fail_on`` fail at the flush to disk,
    as a full disk does (ENOSPC), after part of it was written."""
    import errno

    from gradprobe.report import files

    real = files._fsync

    def fsync(path):
        if fail_on in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    monkeypatch.setattr(files, "_fsync", fsync)


def test_a_failed_write_keeps_the_previous_file_and_the_exit_code_says_2(
    tmp_path, monkeypatch, capsys
):
    from gradprobe.cli import main

    _setup(tmp_path, '[checks.first]\ntarget = "models.py:good"\n')
    monkeypatch.chdir(tmp_path)
    previous = '{"kind": "gradprobe.suite", "previous": true}'
    (tmp_path / "out.json").write_text(previous, encoding="utf-8")
    (tmp_path / "out.xml").write_text("<previous/>", encoding="utf-8")
    _disk_full(monkeypatch, "out.xml")
    code = main(
        ["run", "gradprobe.toml", "--no-isolate", "--json", "out.json", "--junit", "out.xml"]
    )
    out, err = capsys.readouterr()
    assert code == 2
    assert "--junit out.xml: could not be written: [Errno 28] No space left on device" in err
    assert out.rstrip().splitlines()[-1] == "1 passed — exit code 2"  # the process's code
    assert (tmp_path / "out.xml").read_text() == "<previous/>"  # untouched
    data = json.loads((tmp_path / "out.json").read_text())  # written after, with that code
    assert data["exit_code"] == 2 and data["checks"][0]["status"] == "passed"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    _disk_full(monkeypatch, "out.json")
    (tmp_path / "out.json").write_text(previous, encoding="utf-8")
    assert main(["run", "gradprobe.toml", "--no-isolate", "--json", "out.json"]) == 2
    assert (tmp_path / "out.json").read_text() == previous
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_reader_never_sees_a_torn_output(tmp_path):
    # Two writers and a reader polling: every read is one whole version or the other.
    import threading

    from gradprobe.report.files import write_text_atomic

    path = tmp_path / "out.json"
    versions = [json.dumps({"v": k, "pad": "x" * 200_000}) for k in range(2)]
    write_text_atomic(path, versions[0])
    stop = threading.Event()
    seen: set[str] = set()

    def read() -> None:
        while not stop.is_set():
            seen.add(path.read_text(encoding="utf-8")[-40:])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for k in range(40):
            write_text_atomic(path, versions[k % 2])
    finally:
        stop.set()
        reader.join()
    assert seen <= {v[-40:] for v in versions}
    assert json.loads(path.read_text()) == json.loads(versions[1])


# -- a loss cannot end the run ---------------------------------------------------------------
EXITS_SUITE = """
[checks.exits]
target = "models.py:{target}"
{isolate}

[checks.wrong]
target = "models.py:wrong"
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("target", "how"),
    [
        ("exits", "--no-isolate"),
        ("exits", "isolate = false"),
        ("exits", "isolated"),
        ("hard_exit", "isolated"),
    ],
)
def test_sys_exit_in_a_loss_is_that_checks_crash_and_the_others_run(tmp_path, target, how):
    isolate = "isolate = false" if how == "isolate = false" else ""
    _setup(tmp_path, EXITS_SUITE.format(target=target, isolate=isolate))
    extra = ["--no-isolate"] if how == "--no-isolate" else []
    proc = _cli("run", "gradprobe.toml", "--json", "out.json", *extra, cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    assert [(c["name"], c["status"]) for c in data["checks"]] == [
        ("exits", "crashed"),
        ("wrong", "failed"),
    ]
    assert data["exit_code"] == 3
    message = data["checks"][0]["message"]
    if target == "exits":
        assert "called sys.exit(0) (SystemExit)" in message
        assert "in loss" in message  # the user's frame
    else:
        assert "the worker process died (exit code 0)" in message
    assert "1 failed, 1 crashed — exit code 3" in proc.stdout


def test_sys_exit_in_gradprobe_check_no_isolate_exits_3(tmp_path):
    _setup(tmp_path, "")
    proc = _cli("check", "models.py:exits", "--arg", "code=0", "--no-isolate", cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "called sys.exit(0)" in proc.stdout


def test_a_worker_whose_parent_died_before_it_asked_exits_at_once():
    # The race: the parent ends before the child sets its parent-death signal. The child
    # compares its parent's pid with the one it was given and exits.
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    code = (
        "import os; from gradprobe.suites.parent_watch import die_with_parent; "
        "print(die_with_parent(os.getppid())); die_with_parent(os.getppid() + 1); print('alive')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert proc.returncode == 1 and proc.stdout.split() == ["True"], proc.stdout + proc.stderr
