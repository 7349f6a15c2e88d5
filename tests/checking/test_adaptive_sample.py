"""The adaptive default sample: small where the evidence agrees, grown where it disagrees."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.examples import make_mlp
from gradprobe.samples import CHECK_ALL_UP_TO, DEFAULT_SAMPLES, FIRST_SAMPLE, SampleSpec


def test_the_plan_per_parameter_size():
    default = SampleSpec("default")
    assert default.plan(10, probes=True) == (10, None)
    assert default.plan(CHECK_ALL_UP_TO, probes=True) == (CHECK_ALL_UP_TO, None)
    assert default.plan(CHECK_ALL_UP_TO + 1, probes=True) == (FIRST_SAMPLE, CHECK_ALL_UP_TO + 1)
    assert default.plan(10**5, probes=True) == (FIRST_SAMPLE, DEFAULT_SAMPLES)
    # Without probes nothing covers the rest: the large sample from the start.
    assert default.plan(10**5, probes=False) == (DEFAULT_SAMPLES, None)
    # An explicit request is taken as given.
    assert SampleSpec("count", 64).plan(10**5, probes=True) == (64, None)
    assert SampleSpec("all").plan(300, probes=True) == (300, None)


def test_mid_mlp_default_check_covers_every_entry_in_at_most_800_evaluations():
    m = make_mlp((784, 256, 128, 10), batch=64, seed=0)
    report = gradprobe.check(m.loss, m.grad, m.params, n_jobs=1)
    assert report.passed, str(report)
    assert report.n_evaluations <= 800, report.n_evaluations
    for p in report.params.values():
        covered = p.sampling == "all" or p.coverage.n_probed == p.n_total
        assert covered, p.name
        assert p.n_checked == min(
            p.n_total, FIRST_SAMPLE if p.n_total > CHECK_ALL_UP_TO else p.n_total
        )
    assert report.settings["samples"]["W1"].startswith("adaptive")


@pytest.mark.parametrize("bug", ["scale", "sign", "missing-term", "zero", "activation"])
def test_a_disagreement_grows_the_sample_and_names_the_same_cause(bug):
    m = make_mlp(bug=bug, seed=1)
    adaptive = gradprobe.check(m.loss, m.grad, m.params, seed=2)
    assert not adaptive.passed
    for name in m.expected_failures:
        p = adaptive.params[name]
        assert not p.passed, name
        if p.n_total > CHECK_ALL_UP_TO:  # grown from FIRST_SAMPLE for the diagnosis
            assert p.n_checked >= min(p.n_total, DEFAULT_SAMPLES), (name, p.n_checked)
            assert sum(p.coverage.strata.values()) == p.coverage.n_sampled
    # The same diagnosis as the large fixed sample it grows to.
    fixed = gradprobe.check(m.loss, m.grad, m.params, seed=2, samples=DEFAULT_SAMPLES)
    for name, p in adaptive.params.items():
        q = fixed.params[name]
        assert p.passed == q.passed, name
        kinds = (
            p.diagnosis.kind if p.diagnosis else None,
            q.diagnosis.kind if q.diagnosis else None,
        )
        assert kinds[0] == kinds[1], (name, kinds)


def test_agreeing_parameters_do_not_grow_and_explicit_samples_are_kept():
    m = make_mlp(bug="zero", seed=0)  # breaks some parameters only
    report = gradprobe.check(m.loss, m.grad, m.params)
    for name, p in report.params.items():
        if name not in m.expected_failures and p.n_total > CHECK_ALL_UP_TO:
            assert p.passed and p.n_checked == FIRST_SAMPLE, name
    explicit = gradprobe.check(m.loss, m.grad, m.params, samples=64)
    assert all(p.n_checked >= min(64, p.n_total) for p in explicit.params.values())
    assert "W1" not in m.expected_failures and explicit.params["W1"].n_checked == 64


def test_a_single_bad_entry_in_a_large_parameter_is_still_localized():
    m = make_mlp(seed=3)
    target = (17, 5)

    def bad(p):
        out = m.grad(p)
        out["W1"][target] += 0.5 * np.abs(out["W1"]).max()
        return out

    report = gradprobe.check(m.loss, bad, m.params, seed=3)
    w1 = report.params["W1"]
    assert not w1.passed and target in w1.bad_indices
