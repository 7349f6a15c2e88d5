"""Shared test helpers: small problems with exact gradients, bit-exact snapshots, the
report minus what may differ between runs, worker processes, and the suite/CLI files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psutil


def quadratic_problem(n: int = 5, seed: int = 0):
    """L(x) = 0.5 x^T A x + b^T x with A symmetric; grad = A x + b."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    A = M @ M.T + n * np.eye(n)
    b = rng.standard_normal(n)
    x = rng.standard_normal(n)

    def loss(v):
        return 0.5 * v @ A @ v + b @ v

    def grad(v):
        return A @ v + b

    return loss, grad, x


def snapshot(params):
    """Bit-exact copies of every array in a params container."""
    if isinstance(params, np.ndarray):
        return [params.copy()]
    if isinstance(params, dict):
        return [v.copy() for v in params.values()]
    return [v.copy() for v in params]


def assert_bitwise_unchanged(params, saved):
    current = snapshot(params)
    assert len(current) == len(saved)
    for now, before in zip(current, saved, strict=True):
        assert now.dtype == before.dtype and now.shape == before.shape
        assert now.tobytes() == before.tobytes(), "caller's array was modified"


def report_core(report, *, drop=("n_jobs", "executor")):
    """The report's content without its timings and the settings and measurements that name
    how it ran."""
    d = report.to_dict()
    d.pop("timings", None)
    for part in ("settings", "measured"):
        d[part] = {k: v for k, v in d.get(part, {}).items() if k not in drop}
    return d


def live_workers() -> set[int]:
    """Worker processes below this one (loky's and multiprocessing's resource trackers excluded:
    one idle helper each per Python process, started once and exiting with it)."""
    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.NoSuchProcess:
            continue
        out.add(child.pid)
    return out


MODELS = textwrap.dedent(
    """
    import os
    import shutil
    import signal
    import time

    import numpy as np

    import gradprobe

    A = np.array([[3.0, 1.0, 0.5], [1.0, 2.0, 0.2], [0.5, 0.2, 4.0]])
    B = np.array([0.3, -0.7, 1.1])


    def _loss(p):
        return float(0.5 * p["x"] @ A @ p["x"] + B @ p["x"] + np.sum(p["w"] ** 2))


    def _grad(p):
        return {"x": A @ p["x"] + B, "w": 2 * p["w"]}


    def _params():
        rng = np.random.default_rng(0)
        return {"x": rng.standard_normal(3), "w": rng.standard_normal((2, 3))}


    def good(scale=1.0):
        return gradprobe.Problem(loss=_loss, grad=_grad, params=_params())


    def bad(scale=1.5):
        def grad(p):
            g = _grad(p)
            g["w"] = scale * g["w"]
            return g

        return gradprobe.Problem(loss=_loss, grad=grad, params=_params())


    def slightly_off():
        def grad(p):
            g = _grad(p)
            g["w"] = g["w"] * (1 + 1e-7)
            return g

        return gradprobe.Problem(loss=_loss, grad=grad, params=_params())


    def crashing():
        def loss(p):
            if p["w"][0, 0] != _params()["w"][0, 0]:
                raise RuntimeError("boom in the loss")
            return _loss(p)

        return gradprobe.Problem(loss=loss, grad=_grad, params=_params())


    def slow():
        def loss(p):
            time.sleep(0.2)
            return _loss(p)

        return gradprobe.Problem(loss=loss, grad=_grad, params=_params())


    def hangs():
        # Ignores SIGALRM so only the watchdog's kill can stop it, like a C call that never
        # returns.
        base = _params()

        def loss(p):
            if not all(np.array_equal(p[k], base[k]) for k in base):
                signal.signal(signal.SIGALRM, signal.SIG_IGN)
                while True:
                    time.sleep(0.05)
            return _loss(p)

        return gradprobe.Problem(loss=loss, grad=_grad, params=_params())


    def slow_marked(marker="started.txt", n=40, delay=0.05):
        # Writes `marker` at its first loss call, so a test knows the check is under way.
        rng = np.random.default_rng(1)
        params = {"a": rng.standard_normal(n), "b": rng.standard_normal(n)}

        def loss(p):
            if not os.path.exists(marker):
                with open(marker, "w") as fh:
                    fh.write("started")
            time.sleep(delay)
            return float(np.sum(p["a"] ** 2) + np.sum(np.sin(p["b"])))

        def grad(p):
            return {"a": 2 * p["a"], "b": np.cos(p["b"])}

        return gradprobe.Problem(loss=loss, grad=grad, params=params)


    def removes_folder(folder="out"):
        # Deletes an output folder while the run is under way: the final write then fails.
        shutil.rmtree(folder, ignore_errors=True)
        return good()


    def not_a_problem():
        return 42


    def bad_input():
        return gradprobe.Problem(
            loss=_loss, grad=_grad, params={"x": np.arange(3.0), "w": np.ones(2, dtype=complex)}
        )
    """
)


def write_models(folder: Path) -> Path:
    path = folder / "models.py"
    path.write_text(MODELS)
    return path


def write_suite(folder: Path, body: str, name: str = "gradprobe.toml") -> Path:
    write_models(folder)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120, env=None):
    return subprocess.run(
        [sys.executable, "-m", "gradprobe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def run_cli_script(*args: str, cwd: Path, timeout: float = 120, env=None):
    """Run the command line as the installed ``gradprobe`` script does: from a launcher file
    in another folder, so the current folder is not on ``sys.path`` (``python -m`` and
    ``python -c`` would put it there)."""
    launcher = Path(__file__).resolve().parent / "_launch_gradprobe.py"
    return subprocess.run(
        [sys.executable, str(launcher), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def interrupt_cli(*args: str, cwd: Path, marker: Path, group: bool = False, timeout: float = 120):
    """Start the command line, wait until ``marker`` exists (the check is under way), send
    SIGINT (to the process, or to its whole group as a terminal's Ctrl-C does) and return
    the finished process with its output."""
    import os
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "gradprobe", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        start_new_session=True,  # its own group: a background job's SIGINT is not ignored
    )
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            raise AssertionError(f"the check never started:\n{out}\n{err}")
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the check
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"no exit within 60 s of SIGINT:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_cli_tty(*args: str, cwd: Path | None = None, env=None, timeout: float = 120):
    """Run the command line with stdout on a pseudo-terminal; return (exit code, output)."""
    import os
    import pty

    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradprobe", *args],
        stdout=child,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    proc.wait(timeout=timeout)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


#: A two-parameter smooth problem for the pre-flight tests: sum(sin(w) * X) + 0.5 |v|^2.
SIN_X = np.random.default_rng(0).standard_normal(5)


def sin_loss(p):
    return float(np.sum(np.sin(p["w"]) * SIN_X) + 0.5 * np.sum(p["v"] ** 2))


def sin_grad(p):
    return {"w": np.cos(p["w"]) * SIN_X, "v": p["v"].copy()}


def sin_params():
    rng = np.random.default_rng(1)
    return {"w": rng.standard_normal(5), "v": rng.standard_normal(3)}
