"""gradprobe.testing.assert_gradients_ok and the pytest plugin (--gradprobe-seed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradprobe
from gradprobe.testing import assert_gradients_ok


def _problem(scale=1.0):
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}

    def loss(p):
        return float(np.sum(np.sin(p["w"])) + p["b"] @ p["b"])

    def grad(p):
        return {"w": np.cos(p["w"]), "b": scale * 2 * p["b"]}

    return loss, grad, params


def test_passes_and_returns_report():
    report = assert_gradients_ok(*_problem())
    assert report.passed and report.seed == 0


def test_mismatch_raises_assertion_error_numpy_style():
    with pytest.raises(AssertionError) as info:
        assert_gradients_ok(*_problem(scale=-1.0), seed=5)
    exc = info.value
    assert isinstance(exc, gradprobe.GradientMismatchError)
    msg = str(exc)
    assert msg.startswith("Gradients not equal to finite differences")
    assert "b: Not equal to tolerance" in msg and "Mismatched elements: 4 / 4" in msg
    assert "analytic=" in msg and "numeric=" in msg and "likely cause" in msg
    assert "seed=5" in msg and "w: Not equal" not in msg


PLUGIN_TEST = textwrap.dedent(
    """
    import numpy as np
    from gradprobe.testing import assert_gradients_ok

    def test_seed(gradprobe_seed, request):
        x = np.linspace(0.5, 1.5, 600)
        report = assert_gradients_ok(lambda v: float(np.sum(v ** 3)), lambda v: 3 * v ** 2, x)
        print("SEED", gradprobe_seed, report.seed)
        assert report.seed == gradprobe_seed
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("flag", "seed"), [((), 0), (("--gradprobe-seed", "17"), 17)])
def test_plugin_sets_seed(tmp_path, flag, seed):
    (tmp_path / "test_x.py").write_text(PLUGIN_TEST)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *flag, "test_x.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SEED {seed} {seed}" in proc.stdout


@pytest.mark.timeout(120)
def test_plugin_rejects_bad_seed(tmp_path):
    (tmp_path / "test_x.py").write_text(PLUGIN_TEST)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--gradprobe-seed", "abc", "test_x.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode != 0 and "--gradprobe-seed" in proc.stderr


def test_plugin_import_does_not_load_the_engine():
    """The plugin loads at every pytest start in an environment with gradprobe: it must not
    pull in numba and the engine (about 0.4 s) until a check runs."""
    import subprocess
    import sys

    code = (
        "import sys, gradprobe.pytest_plugin, gradprobe.testing; "
        "print('numba' in sys.modules, 'gradprobe.api' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


FAILING_TEST = textwrap.dedent(
    """
    import numpy as np
    from gradprobe.testing import assert_gradients_ok

    def test_wrong_gradient():
        x = np.linspace(0.5, 1.5, 6)
        assert_gradients_ok(lambda v: float(np.sum(v ** 3)), lambda v: 2 * v ** 2, x)
    """
)


@pytest.mark.timeout(120)
def test_pytest_shows_the_message_not_the_helpers_source(tmp_path):
    (tmp_path / "test_x.py").write_text(FAILING_TEST)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_x.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Gradients not equal to finite differences" in out
    # __tracebackhide__: the helper's own lines (its docstring, its body) are not printed.
    assert "options.setdefault" not in out and "def assert_gradients_ok" not in out
    assert "assert_gradients_ok(lambda v" in out  # the user's line still is
