"""A target file's module-level functions reach joblib's process workers by value: the file is
imported under a name no worker can import, and a check with ``n_jobs=2`` built from such a
function ended in an error ("A task has failed to un-serialize"), or did so at random with
``n_jobs="auto"`` when the machine was loaded; loading a target still imports no joblib."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from gradprobe.cli import main

MODELS = textwrap.dedent(
    """
    import numpy as np

    import gradprobe


    def _dense(p):
        return np.tanh(p["x"] @ p["W"])


    def vjp():
        rng = np.random.default_rng(0)
        point = {"x": rng.standard_normal((6, 4)), "W": rng.standard_normal((4, 4)) / 2}

        def dense_vjp(p, g):
            d = g * (1 - _dense(p) ** 2)
            return {"x": d @ p["W"].T, "W": p["x"].T @ d}

        return gradprobe.Problem.vjp(_dense, dense_vjp, point)


    class Quadratic:
        def loss(self, v):
            return float(v @ v)


    def method():
        q = Quadratic()
        return gradprobe.Problem(loss=q.loss, grad=lambda v: 2 * v, params=np.ones(5))
    """
)


def test_functions_of_a_target_file_run_on_process_workers(tmp_path, monkeypatch, capsys):
    (tmp_path / "models.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    for target in ("models.py:vjp", "models.py:method"):
        code = main(["check", target, "-q", "--no-isolate", "--n-jobs", "2"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "1 passed" in out


def test_loading_a_target_imports_no_joblib_and_its_functions_pickle_whole(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    script = (
        "import pickle, sys\n"
        "from gradprobe.suites.targets import parse_target\n"
        f"fn = parse_target({str(tmp_path / 'models.py')!r} + ':vjp').load_function()\n"
        "print('joblib' in sys.modules, 'cloudpickle' in sys.modules)\n"
        "import cloudpickle\n"
        "data = cloudpickle.dumps(fn)\n"
        "del sys.modules[fn.__module__]  # as in a worker, where no such module exists\n"
        "print(type(pickle.loads(data)()).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "Problem"]
