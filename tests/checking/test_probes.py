"""Directional probes and bisection: detection, localization, cost, no false alarms."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradprobe
from gradprobe.checking.context import ParamCheck
from gradprobe.checking.entries import evaluate_entries
from gradprobe.checking.probes import WIDESPREAD_CHECKS, run_probes
from gradprobe.evaluate import SerialEvaluator
from gradprobe.examples import make_mlp
from gradprobe.layout import normalize_params
from gradprobe.numerics.steps import default_relative_step
from gradprobe.numerics.tolerances import loss_epsilon, tolerance_for

from ..helpers import assert_bitwise_unchanged, snapshot


def _bound(n: int) -> float:
    return 2 * (2 * math.log2(n) + 8)


def _smooth_problem(n: int, seed: int = 0):
    """A separable smooth loss with a cubic term; exact gradient."""
    rng = np.random.default_rng(seed)
    a, b, x = rng.uniform(0.5, 2, n), rng.standard_normal(n), rng.standard_normal(n)

    def loss(v):
        return float(0.5 * np.sum(a * v * v) + b @ v + 0.1 * np.sum(v**3))

    def grad(v):
        return a * v + b + 0.3 * v * v

    return loss, grad, x


def _probe(loss, params, analytic, name, seed=0, checked_entries=None, **kw):
    layout, base, _ = normalize_params(params)
    p = layout.names.index(name)
    tol = tolerance_for(layout.dtypes[p], loss_epsilon(layout.dtypes))
    ev = SerialEvaluator(loss, layout, base)
    step = default_relative_step(layout.dtypes[p])
    ctx = ParamCheck(ev, p, analytic.reshape(-1), tol, step)
    if checked_entries is not None:
        kw["checked"] = evaluate_entries(ctx, checked_entries)
    return run_probes(ctx, np.random.default_rng(seed), **kw)


@pytest.mark.parametrize("n", [4096, 4097, 65_537])
def test_single_wrong_entry_localized_within_the_cost_bound(n):
    loss, grad, x = _smooth_problem(n)
    g = grad(x)
    for bad in (0, n // 3, n - 1):
        wrong = g.copy()
        wrong[bad] *= 1.05
        out = _probe(loss, x, wrong, "x")
        assert not out.passed and not out.widespread
        assert out.localized.tolist() == [bad]
        assert out.n_evaluations <= _bound(n)


def test_correct_gradient_passes_probes_without_bisection():
    loss, grad, x = _smooth_problem(65_537)
    out = _probe(loss, x, grad(x), "x")
    assert out.passed and out.localized.size == 0 and out.bisection_depth == 0
    assert out.n_evaluations == 2 * out.n_probes == 8  # pilot (2 probes) + 2 directions


def test_mid_mlp_w1_single_entry_off_by_5_percent_is_localized():
    m = make_mlp(sizes=(784, 256, 128, 10), batch=64)
    g = m.grad(m.params)["W1"]
    n = g.size
    order = np.argsort(np.abs(g).reshape(-1))
    # A typical entry, a small-gradient one (1st percentile), the largest, and an edge.
    for flat in (int(order[n // 2]), int(order[n // 100]), int(order[-1]), n - 1):
        wrong = g.copy()
        wrong.reshape(-1)[flat] *= 1.05
        out = _probe(m.loss, m.params, wrong, "W1")
        assert out.localized.tolist() == [flat]
        assert out.n_evaluations <= _bound(n)


def test_widespread_failure_stops_early():
    m = make_mlp(sizes=(100, 50, 10), batch=8, bug="scale")
    g = m.grad(m.params)["W1"]
    # With a sample checked one by one (most of it failing), widespread costs no more checks.
    out = _probe(m.loss, m.params, g, "W1", checked_entries=np.arange(0, 5000, 157))
    assert out.widespread and not out.passed
    # pilot 4, 2 directions 4, the base loss 1 and the directions' retries at a smaller step 4
    # (kink rule), 2 levels
    assert out.bisection_depth == 2 and out.n_evaluations <= 4 + 4 + 1 + 4 + 2 * 3
    assert out.n_retried == 2 and out.n_kinks == 0
    assert out.localized.size == 0
    # Without a sample, the claim rests on WIDESPREAD_CHECKS entries checked one by one.
    spot = _probe(m.loss, m.params, g, "W1")
    assert spot.widespread and spot.leaves is not None
    assert spot.leaves.size == WIDESPREAD_CHECKS and spot.leaves.failed.mean() > 0.5


def test_slice_probes_cover_each_row():
    m = make_mlp(sizes=(40, 30, 5), batch=8)
    g = m.grad(m.params)["W1"]
    wrong = g.copy()
    wrong[17, 3] *= 1.05
    out = _probe(m.loss, m.params, wrong, "W1", slice_probes=True)
    assert len(out.probes) == 2 + 40
    failing_rows = [p.lo // 30 for p in out.probes if not p.passed and p.hi - p.lo == 30]
    assert failing_rows == [17]
    assert out.localized.tolist() == [17 * 30 + 3]


def test_check_reports_localized_index_and_leaves_params_untouched():
    m = make_mlp(sizes=(100, 50, 10), batch=8)
    saved = snapshot(m.params)

    def grad(p):
        g = m.grad(p)
        g["W1"][63, 21] *= 1.05
        return g

    report = gradprobe.check(m.loss, grad, m.params, seed=3)
    w1 = report.params["W1"]
    assert not w1.passed and w1.bad_indices == ((63, 21),)
    assert [n for n, r in report.params.items() if not r.passed] == ["W1"]
    assert "[63, 21]" in str(report) and "bisection localized 1 wrong entry" in str(report)
    assert_bitwise_unchanged(m.params, saved)


def test_no_false_alarms_on_a_correct_tanh_mlp_under_20_seeds():
    for seed in range(20):
        m = make_mlp(sizes=(60, 40, 10), batch=8, seed=seed)
        report = gradprobe.check(m.loss, m.grad, m.params, seed=seed, samples=64)
        assert report.passed, str(report)
        assert all(
            r.coverage.n_probed == r.n_total for r in report.params.values() if r.n_total > 64
        )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_mid_mlp_default_check_localizes_a_5_percent_entry():
    m = make_mlp(sizes=(784, 256, 128, 10), batch=64)
    bad = (517, 200)

    def grad(p):
        g = m.grad(p)
        g["W1"][bad] *= 1.05
        return g

    report = gradprobe.check(m.loss, grad, m.params)
    assert [n for n, r in report.params.items() if not r.passed] == ["W1"]
    assert report.params["W1"].bad_indices == (bad,)
