"""A stopped check keeps the finished entries of the parameter it was on; the planned cost."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.checking.plan import planned_evaluations
from gradprobe.examples import make_mlp

from ..helpers import assert_bitwise_unchanged, snapshot


def test_a_budget_keeps_the_finished_entries_of_the_unfinished_parameter():
    m = make_mlp()
    saved = snapshot(m.params)
    with pytest.raises(gradprobe.CheckAborted) as info:
        gradprobe.check(m.loss, m.grad, m.params, samples="all", budget=1500, n_jobs=1)
    assert_bitwise_unchanged(m.params, saved)
    partial = info.value.partial_report
    assert not partial.complete and not partial.passed
    w1 = partial.params["W1"]  # 2,048 entries: stopped inside it
    assert not w1.finished and not w1.passed and w1.n_checked > 500
    assert w1.n_checked < w1.n_total and w1.coverage.n_sampled == w1.n_checked
    assert "unfinished" in w1.coverage.statement
    assert partial.failures == ()  # unfinished is not a mismatch
    text = str(partial)
    assert "INCOMPLETE" in text and "unfinished" in text and "0 parameters finished" in text
    assert partial.n_finished == 0
    back = gradprobe.Report.from_dict(partial.to_dict())
    assert not back.params["W1"].finished


def test_an_unfinished_parameter_with_a_failed_entry_is_a_failure():
    m = make_mlp(bug="scale")
    with pytest.raises(gradprobe.CheckAborted) as info:
        gradprobe.check(m.loss, m.grad, m.params, samples="all", budget=1500, n_jobs=1)
    w1 = info.value.partial_report.params["W1"]
    assert not w1.finished and w1.n_failed > 0
    assert info.value.partial_report.failures == (w1,)


def test_finished_parameters_are_unaffected_by_a_later_stop():
    m = make_mlp()
    full = gradprobe.check(m.loss, m.grad, m.params, samples="all", n_jobs=1)
    budget = full.params["W1"].n_evaluations + 300
    with pytest.raises(gradprobe.CheckAborted) as info:
        gradprobe.check(m.loss, m.grad, m.params, samples="all", budget=budget, n_jobs=1)
    partial = info.value.partial_report
    assert partial.params["W1"].finished and partial.params["W1"].passed
    np.testing.assert_array_equal(partial.params["W1"].rel_errors, full.params["W1"].rel_errors)
    # W1 and b1 (32 entries, 64 evaluations) finished; W2 (1,024 entries) stopped part-way.
    assert partial.params["b1"].finished and not partial.params["W2"].finished
    assert 0 < partial.params["W2"].n_checked < 1024


def test_the_plan_is_in_the_settings_and_the_predicted_time_in_the_timings():
    m = make_mlp()
    report = gradprobe.check(m.loss, m.grad, m.params)
    plan = report.measured["planned_evaluations"]
    expected = sum(
        planned_evaluations(p.n_checked, p.n_total, 2, False, p.shape)
        for p in report.params.values()
    )
    assert plan == expected
    # A correct model: nothing disagreed, so the check spent the plan and the pre-flight.
    assert report.n_evaluations - plan < 30
    assert 0 < report.timings["predicted"] < 60


def test_planned_evaluations_counts_samples_probes_and_slices():
    assert planned_evaluations(10, 10, 2, False, (10,)) == 20  # in full: no probes
    assert planned_evaluations(48, 1000, 2, False, (100, 10)) == 96 + 4 + 4
    assert planned_evaluations(48, 1000, 2, True, (100, 10)) == 96 + 4 + 4 + 200
    assert planned_evaluations(48, 1000, 0, False, (100, 10)) == 96


def test_a_long_check_says_what_it_will_cost_on_a_terminal(monkeypatch):
    import io
    import sys

    from gradprobe.checking import run as run_module

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    m = make_mlp()
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(run_module, "ANNOUNCE_SECONDS", 0.0)  # every check counts as long here
    report = gradprobe.check(m.loss, m.grad, m.params, n_jobs=1)
    line = err.getvalue()
    planned = report.measured["planned_evaluations"]
    assert line.startswith("gradprobe: this check will take about")
    assert f"({planned:,} loss evaluations of ~" in line and "timeout=" in line
    # Not a terminal (a log, a pipe): silent.
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    gradprobe.check(m.loss, m.grad, m.params, n_jobs=1)
    assert quiet.getvalue() == ""


def test_a_time_limit_keeps_the_blocks_finished_before_it():
    import time

    x = np.linspace(-1.0, 1.0, 400)

    def slow(v):
        time.sleep(0.002)
        return float(np.sum(np.sin(v)))

    with pytest.raises(gradprobe.CheckAborted) as info:
        gradprobe.check(slow, np.cos, x, samples="all", timeout=1.0, n_jobs=1)
    assert info.value.reason == "timeout"
    p = info.value.partial_report.params["x"]
    # ~250 evaluations fit in the second: blocks sized from the time left keep most of them.
    assert not p.finished and p.passed is False and 16 <= p.n_checked < 400
    assert p.n_failed == 0 and "unfinished" in p.coverage.statement


def test_a_stopped_check_keeps_the_wrong_entries_bisection_found():
    # One wrong entry among 5,000: the probes' bisection names it before the budget runs out
    # in the growth step; the partial report must still fail on it (not "incomplete, 0 wrong").
    x = np.linspace(-1.0, 1.0, 5000)

    def bad(v):
        out = np.cos(v)
        out[1234] = -out[1234]
        return out

    full = gradprobe.check(lambda v: float(np.sum(np.sin(v))), bad, x, n_jobs=1)
    assert not full.passed and full.params["x"].bad_indices == ((1234,),)
    for budget in (400, 600, 900):
        with pytest.raises(gradprobe.CheckAborted) as info:
            gradprobe.check(lambda v: float(np.sum(np.sin(v))), bad, x, n_jobs=1, budget=budget)
        partial = info.value.partial_report
        p = partial.params["x"]
        assert not p.finished and (1234,) in p.bad_indices, budget
        assert partial.failures == (p,) and "FAILED" in partial.summary_line()
        assert "no bound" in p.coverage.statement and p.coverage.upper_bound == 1.0


def test_an_unfinished_parameter_spreads_its_finished_entries():
    # The bug is in the last rows only; a stopped check's finished entries must not all be
    # from the first rows (they run in a fixed pseudo-random order), and no bound is claimed.
    w = np.random.default_rng(0).standard_normal((100, 60))

    def bad(v):
        out = 2 * v
        out[60:] *= 1.5
        return out

    with pytest.raises(gradprobe.CheckAborted) as info:
        gradprobe.check(lambda v: float(np.sum(v**2)), bad, w, samples=4000, budget=1500, n_jobs=1)
    p = info.value.partial_report.params["x"]
    assert not p.finished and p.n_failed > 0 and p.coverage.upper_bound == 1.0


@pytest.mark.parametrize(("method", "per_entry"), [("central", 2), ("richardson", 4)])
def test_budget_blocks_and_the_plan_count_the_method(method, per_entry):
    x = np.linspace(-1.0, 1.0, 600)
    with pytest.raises(gradprobe.CheckAborted) as info:
        gradprobe.check(
            lambda v: float(np.sum(np.sin(v))), np.cos, x, samples="all", budget=700,
            method=method, n_jobs=1,
        )  # fmt: skip
    p = info.value.partial_report.params["x"]
    assert not p.finished and p.n_checked > 0  # a block that fitted the budget was kept
    report = gradprobe.check(lambda v: float(np.sum(np.sin(v))), np.cos, x[:100], method=method)
    assert report.measured["planned_evaluations"] == per_entry * 100


def test_every_entry_checked_one_way_or_another_reads_as_all():
    x = np.linspace(-1.0, 1.0, 300)

    def bad(v):
        out = np.cos(v)
        out[[3, 50, 120, 200, 290]] *= 3.0
        return out

    # 48 sampled, 5 bisected, then grown to the rest (300 - 53 < 512): every entry checked.
    p = gradprobe.check(lambda v: float(np.sum(np.sin(v))), bad, x, n_jobs=1).params["x"]
    assert p.n_failed == 5 and p.n_checked == 300 and p.sampling == "all"
    assert "all 300 entries compared one by one with finite differences: 5 wrong" in (
        p.coverage.statement
    )


@pytest.mark.parametrize(
    ("shape", "options"),
    [
        ((5000,), {"slice_probes": True}),  # 1-D: no rows to slice (was planned as 10,104)
        ((40, 30), {"slice_probes": True}),
        ((40, 30), {"probes": 3}),
        ((40, 30), {"probes": 0, "samples": 100}),
        ((12,), {"method": "richardson"}),
    ],
)
def test_the_plan_is_what_a_correct_check_spends(shape, options):
    """A correct quadratic: nothing disagrees, so what was spent beyond the base point and the
    pre-flight is the plan, and the progress total is the plan too."""
    x = np.random.default_rng(3).standard_normal(shape)
    totals = []
    report = gradprobe.check(
        lambda p: float(np.sum(p * p)),
        lambda p: 2 * p,
        x,
        n_jobs=1,
        progress=lambda done, total: totals.append(total),
        **options,
    )
    plan = report.measured["planned_evaluations"]
    assert report.passed
    preflight = report.n_evaluations - plan
    assert 0 <= preflight <= 2 + 2 * 8  # base, repeat, at most the noise estimate
    assert totals[0] == plan + 2
