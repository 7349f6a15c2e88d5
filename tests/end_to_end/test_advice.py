"""Advice that works: each hint is given only where it applies, in the form that works there.

- a long check's predicted-time notice names only the limits not already set, and says so
  when a limit that is set will stop the check;
- that notice goes through the progress display (its own line above the bar), from an
  isolated worker too, instead of being written over the bar's line;
- the float32 warning recommends ``promote=True`` where it works and, for JAX without x64
  (where ``promote=True`` is refused), the x64 switch.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import gradprobe
from gradprobe.checking import run as run_module
from gradprobe.report.text import cost_notice
from gradprobe.suites.config import load_suite
from gradprobe.suites.runner import run_check


@pytest.mark.parametrize(
    ("timeout", "budget", "says", "not_says"),
    [
        (None, None, "pass samples=, timeout= or budget= to bound it.", "its "),
        (600.0, None, "pass samples= or budget= to bound it.", "timeout="),
        (None, 10**9, "pass samples= or timeout= to bound it.", "budget="),
        (600.0, 10**9, "pass samples= to bound it.", "timeout="),
        (30.0, None, "its timeout=30 stops it before then, with a partial report", "pass timeout"),
        (None, 100, "its budget=100 stops it before then, with a partial report", "pass budget"),
    ],
)
def test_the_cost_notice_names_only_the_limits_not_set(timeout, budget, says, not_says):
    notice = cost_notice(120.0, 5000, 0.024, timeout, budget)
    assert notice.startswith("gradprobe: this check will take about 2 min (5,000 loss")
    assert says in notice and not_says not in notice.split("); ")[1]


MODELS = """
import numpy as np

import gradprobe
from gradprobe.checking import run as run_module

run_module.ANNOUNCE_SECONDS = 0.0  # every check counts as long here (in the worker that imports this)


def quadratic():
    w = np.linspace(-1.0, 1.0, 6)
    return gradprobe.Problem(loss=lambda p: 0.5 * np.sum(p ** 2), grad=lambda p: p, params=w)
"""


class Recorder:
    """A progress display that records what a check tells it."""

    def __init__(self):
        self.notices: list[str] = []
        self.updates = 0

    def __call__(self, done, total):
        self.updates += 1

    def parameter(self, name, index, count):
        pass

    def notice(self, text):
        self.notices.append(text)


@pytest.mark.parametrize("isolate", [True, False])
def test_the_cost_notice_reaches_the_progress_display_not_the_bar_line(tmp_path, isolate):
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "gradprobe.toml").write_text(
        textwrap.dedent(
            f"""
            [checks.q]
            target = "models.py:quadratic"
            timeout = 30
            isolate = {str(isolate).lower()}
            """
        )
    )
    (spec,) = load_suite(tmp_path / "gradprobe.toml").checks
    bar = Recorder()
    saved = run_module.ANNOUNCE_SECONDS
    try:
        outcome = run_check(spec, progress=bar)
    finally:
        run_module.ANNOUNCE_SECONDS = saved
    assert outcome.status == "passed", outcome.message
    (notice,) = bar.notices
    assert notice.startswith("gradprobe: this check will take about")
    # timeout = 30 is set and far longer than the check: not advised again.
    assert notice.endswith("pass samples= or budget= to bound it."), notice


def test_the_float32_warning_recommends_promote_where_it_works():
    w = np.linspace(-1.0, 1.0, 6, dtype=np.float32)
    report = gradprobe.check(lambda p: np.sum(p**2), lambda p: 2 * p, w)
    (warning,) = [x for x in report.warnings if "lower than float64 precision" in x]
    assert "check(..., promote=True) casts them for the check" in warning


def test_the_float32_warning_in_jax_without_x64_gives_the_x64_switch():
    jax = pytest.importorskip("jax")
    import gradprobe.jax

    if jax.config.read("jax_enable_x64"):
        pytest.skip("x64 is on in this process")
    x = jax.numpy.linspace(-1.0, 1.0, 6)
    report = gradprobe.jax.check(jax.numpy.tanh, x)
    (warning,) = [w for w in report.warnings if "lower than float64 precision" in w]
    assert 'jax.config.update("jax_enable_x64", True)' in warning
    assert "check(..., promote=True)" not in warning
    # What the warning says is what gradprobe.jax refuses without it:
    with pytest.raises(gradprobe.InvalidInputError, match="jax_enable_x64"):
        gradprobe.jax.check(jax.numpy.tanh, x, promote=True)
