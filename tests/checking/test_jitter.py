"""Jitter and state: run-to-run jitter accepted up to nondet_tol and folded into the noise floor;
a random loss, a grad that keeps state, and a grad that changes the loss told apart."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import gradprobe
from gradprobe.errors import SuiteConfigError
from gradprobe.options import DEFAULT_NONDET_TOL
from gradprobe.suites.config import load_suite
from gradprobe.suites.runner import run_check

from ..helpers import SIN_X as X
from ..helpers import run_cli, write_suite
from ..helpers import sin_grad as grad
from ..helpers import sin_loss as loss
from ..helpers import sin_params as params

#: A constant added and removed again: its rounding makes the sum depend on the order (~1e-13).
BIG = 16.0


def permuted_sum_loss():
    """A sum whose order the call counter permutes (as atomics or a parallel reduction do):
    the terms plus BIG and -BIG, summed one by one."""
    calls = itertools.count()

    def f(p):
        terms = [*(np.sin(p["w"]) * X), *(0.5 * p["v"] ** 2), BIG, -BIG]
        order = np.random.default_rng(next(calls)).permutation(len(terms))
        total = 0.0
        for i in order:
            total += terms[i]
        return total

    return f


def relative_jitter(f, p, n=20):
    values = [f(p) for _ in range(n)]
    return (max(values) - min(values)) / abs(loss(p))


def test_permuted_sum_jitters_about_1e_13():
    jitter = relative_jitter(permuted_sum_loss(), params())
    assert 1e-14 < jitter < 5e-13


def test_jitter_passes_by_default_with_a_warning_and_raises_the_noise_floor():
    f = permuted_sum_loss()
    first, second = f(params()), f(params())
    report = gradprobe.check(permuted_sum_loss(), grad, params())
    assert report.passed, str(report)
    (line,) = [w for w in report.warnings if "run-to-run jitter" in w]
    assert "relative" in line and "treated as noise" in line
    assert "make the reduction deterministic" in line and "nondet_tol" in line
    # The repeat's difference is a noise sample: the tolerance's loss_noise covers it.
    assert report.measured["loss_noise"] >= abs(first - second) > 0
    assert report.settings["nondet_tol"] is None


def test_jitter_across_seeds_never_fails_a_correct_gradient():
    for seed in range(5):
        report = gradprobe.check(permuted_sum_loss(), grad, params(), seed=seed, samples="all")
        assert report.passed, str(report)


def test_deterministic_loss_gets_no_jitter_warning_and_same_noise():
    report = gradprobe.check(loss, grad, params())
    assert not any("jitter" in w for w in report.warnings)
    assert report.measured["noise"] != "jitter"


def test_dropout_like_difference_still_raises_with_measured_difference():
    rng = np.random.default_rng(0)

    def dropout_loss(p):
        return loss(p) * (1.0 + 1e-3 * rng.standard_normal())

    with pytest.raises(gradprobe.NondeterministicLossError) as info:
        gradprobe.check(dropout_loss, grad, params())
    text = str(info.value)
    assert not isinstance(info.value, gradprobe.StatefulGradientError)
    assert "dropout" in text and "relative" in text and "nondet_tol" in text


def test_nondet_tol_sets_the_bar():
    # Zero: only rounding (16 ulps) is accepted, the permuted sum's jitter is not.
    with pytest.raises(gradprobe.NondeterministicLossError, match=r"relative.*nondet_tol"):
        gradprobe.check(permuted_sum_loss(), grad, params(), nondet_tol=0)
    # Below the jitter: raises; above: accepted, and passing it silences the warning.
    with pytest.raises(gradprobe.NondeterministicLossError):
        gradprobe.check(permuted_sum_loss(), grad, params(), nondet_tol=1e-16)
    report = gradprobe.check(permuted_sum_loss(), grad, params(), nondet_tol=1e-10)
    assert report.passed and not any("jitter" in w for w in report.warnings)
    assert report.settings["nondet_tol"] == 1e-10
    # A large bar accepts even a dropout-sized difference, as noise (it is not called a bug).
    rng = np.random.default_rng(0)
    noisy = gradprobe.check(
        lambda p: loss(p) * (1.0 + 1e-6 * rng.standard_normal()), grad, params(), nondet_tol=1e-4
    )
    assert noisy.passed and noisy.measured["loss_noise"] > 1e-9


def test_default_bar_has_a_margin_from_jitter_and_dropout():
    assert 10 * 9e-14 < DEFAULT_NONDET_TOL < 1e-3 / 1e6


ACCUMULATED = {"w": np.zeros(5), "v": np.zeros(3)}


def accumulating_grad(p):
    """Accumulates into a module-level buffer that is never zeroed."""
    g = grad(p)
    for k in ACCUMULATED:
        ACCUMULATED[k] += g[k]
    return ACCUMULATED


def test_grad_accumulating_into_a_buffer_raises_stateful_with_the_factor():
    for buf in ACCUMULATED.values():
        buf[:] = 0.0
    with pytest.raises(gradprobe.StatefulGradientError) as info:
        gradprobe.check(loss, accumulating_grad, params())
    text = str(info.value)
    assert "while the loss was repeatable" in text
    assert "accumulates into a buffer: the second call returned 2x the first" in text
    assert "return a fresh array each call" in text
    assert isinstance(info.value, gradprobe.NondeterministicLossError)
    assert "dropout" not in text


def test_grad_scaling_the_callers_upstream_buffer_in_place_is_named():
    upstream = np.ones(5)  # the caller's upstream gradient dL/dy

    def g(p):
        upstream[:] *= 0.5  # in place: every call halves the caller's buffer
        return {"w": np.cos(p["w"]) * X * upstream, "v": p["v"].copy()}

    with pytest.raises(gradprobe.StatefulGradientError) as info:
        gradprobe.check(loss, g, params())
    text = str(info.value)
    assert "scales a buffer it was given in place" in text
    assert "0.5x (1/2) the first in every entry of 'w'" in text


def test_grad_with_state_the_loss_reads_is_told_apart_from_a_random_loss():
    scale = np.ones(1)

    def f(p):
        return loss(p) * scale[0]

    def g(p):
        out = grad(p)
        scale[0] *= 0.5
        return {k: v * scale[0] for k, v in out.items()}

    with pytest.raises(gradprobe.StatefulGradientError, match="calling it changed the loss"):
        gradprobe.check(f, g, params())


def test_loss_that_differs_only_on_its_first_call():
    cache = {}

    def f(p):
        value = loss(p)
        if not cache:
            cache["filled"] = True
            return value * 1.01
        return value

    with pytest.raises(gradprobe.NondeterministicLossError, match="first call") as info:
        gradprobe.check(f, grad, params())
    assert not isinstance(info.value, gradprobe.StatefulGradientError)


def test_grad_jitter_below_the_bar_is_accepted_with_a_warning():
    calls = itertools.count()

    def g(p):
        out = grad(p)
        out["w"] = out["w"] * (1.0 + 1e-14 * (next(calls) % 2))
        return out

    report = gradprobe.check(loss, g, params())
    assert report.passed
    assert any(w.startswith("grad differs between two calls") for w in report.warnings)


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), "1e-10", True, [1e-10]])
def test_nondet_tol_validation(value):
    with pytest.raises(gradprobe.InvalidInputError) as info:
        gradprobe.check(loss, grad, params(), nondet_tol=value)
    text = str(info.value)
    assert text.startswith("nondet_tol: expected a finite number >= 0")
    assert f"found {value!r}" in text and "e.g. 1e-10" in text


SUITE = """
[defaults]
seed = 3
isolate = false
nondet_tol = 1e-9

[checks.good]
target = "models.py:good"

[checks.bad]
target = "models.py:bad"
args = { scale = 2.0 }
"""


def test_suite_key_round_trips(tmp_path):
    suite = load_suite(write_suite(tmp_path, SUITE))
    good = suite.checks[0]
    assert good.options["nondet_tol"] == 1e-9
    assert run_check(good).report.settings["nondet_tol"] == 1e-9
    write_suite(tmp_path, SUITE.replace("1e-9", "-1.0"))
    with pytest.raises(SuiteConfigError, match=r"key 'nondet_tol': expected") as info:
        load_suite(tmp_path / "gradprobe.toml")
    assert "found -1.0. Fix: write e.g. nondet_tol = 1e-10" in str(info.value)


@pytest.mark.timeout(120)
def test_cli_flag_reaches_the_report_and_the_reproduce_command(tmp_path):
    write_suite(tmp_path, SUITE)
    args = ("check", "models.py:bad", "--arg", "scale=2.0", "--seed", "3", "--no-isolate")
    proc = run_cli(*args, "--nondet-tol", "1e-10", "--json", "out.json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("bad: gradprobe"))
    assert "--seed 3 --nondet-tol 1e-10" in line
    (check,) = json.loads((tmp_path / "out.json").read_text())["checks"]
    assert check["report"]["settings"]["nondet_tol"] == 1e-10
    bad = run_cli(*args, "--nondet-tol", "nan", cwd=tmp_path)
    assert bad.returncode == 2 and "--nondet-tol: expected a finite number >= 0" in bad.stderr
