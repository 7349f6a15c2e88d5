"""Coverage statements: the Clopper-Pearson bound and its wording."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.checking.verdict import build_coverage
from gradprobe.examples import make_mlp
from gradprobe.numerics.stats import upper_bound_wrong_fraction
from gradprobe.samples import FIRST_SAMPLE


@pytest.mark.parametrize(
    ("k", "f"), [(512, 0), (512, 1), (512, 7), (10, 9), (1000, 300), (200_000, 1000), (3, 1)]
)
def test_upper_bound_matches_scipy_beta_quantile(k, f):
    beta = pytest.importorskip("scipy.stats").beta
    assert upper_bound_wrong_fraction(k, f) == pytest.approx(beta.ppf(0.95, f + 1, k - f), rel=1e-9)


def test_upper_bound_edge_cases():
    assert upper_bound_wrong_fraction(0, 0) == 1.0
    assert upper_bound_wrong_fraction(5, 5) == 1.0
    # 0 of 512: 1 - 0.05**(1/512), the "fewer than 0.6%" of the docs.
    assert upper_bound_wrong_fraction(512, 0) == pytest.approx(1 - 0.05 ** (1 / 512))
    assert upper_bound_wrong_fraction(512, 0, confidence=0.99) > upper_bound_wrong_fraction(512, 0)
    # More failures, a larger bound; more samples, a smaller one.
    assert upper_bound_wrong_fraction(512, 2) > upper_bound_wrong_fraction(512, 1)
    assert upper_bound_wrong_fraction(2048, 1) < upper_bound_wrong_fraction(512, 1)


def test_statement_reads_as_documented():
    c = build_coverage(
        n_total=200_704,
        n_sampled=512,
        n_failed_sampled=0,
        strata={"edges": 2, "extremes": 2, "magnitude": 254, "position": 254},
        n_probed=200_704,
        n_probes=4,
    )
    assert c.statement == (
        "512 of 200,704 entries (a stratified sample) compared one by one with finite "
        "differences: all agree; 4 random-direction probes over all 200,704 entries agree; so "
        "fewer than 0.58% of the entries are wrong (at 95% confidence)"
    )
    assert c.strata == {"edges": 2, "extremes": 2, "magnitude": 254, "position": 254}
    assert c.upper_bound == pytest.approx(0.005834, rel=1e-3)
    full = build_coverage(n_total=32, n_sampled=32, n_failed_sampled=3, strata={"all": 32})
    assert full.upper_bound == pytest.approx(3 / 32) and full.statement == (
        "all 32 entries compared one by one with finite differences: 3 wrong, 29 agree"
    )


def test_the_bound_is_stated_for_a_passing_parameter_only():
    failing = build_coverage(
        n_total=1024, n_sampled=512, n_failed_sampled=494, strata={"edges": 2, "uniform": 510}
    )
    assert "fewer than" not in failing.statement and "494 wrong, 18 agree" in failing.statement
    # At the round-off floor: counted among those that agree, never among the wrong ones.
    floor = build_coverage(
        n_total=512, n_sampled=512, n_failed_sampled=495, strata={"all": 512}, n_unverified=400
    )
    assert floor.statement.endswith("495 wrong, 17 agree (only within round-off: unverified)")
    unverified = build_coverage(
        n_total=1024, n_sampled=48, n_failed_sampled=0, strata={"a": 24, "b": 24}, n_unverified=48
    )
    assert "all agree (only within round-off: unverified)" in unverified.statement
    assert unverified.upper_bound == 1.0 and "fewer than" not in unverified.statement


def test_report_carries_coverage_and_round_trips():
    m = make_mlp()
    report = gradprobe.check(m.loss, m.grad, m.params)
    w1 = report.params["W1"].coverage
    # The adaptive default: probes over every entry, a first sample of FIRST_SAMPLE that stays
    # small where everything agrees, parameters up to CHECK_ALL_UP_TO entries in full.
    assert w1.n_sampled == FIRST_SAMPLE and w1.n_probed == 2048 and w1.n_probes >= 3
    assert w1.n_failed_sampled == 0 and w1.upper_bound < 0.07
    assert sum(w1.strata.values()) == FIRST_SAMPLE
    assert report.params["b1"].coverage.n_probed == 0  # checked in full: no probes needed
    text = str(report)
    assert "coverage:" in text and "random-direction probes over all 2,048 entries agree" in text
    back = gradprobe.Report.from_dict(report.to_dict())
    assert back.params["W1"].coverage == report.params["W1"].coverage


def test_probes_can_be_turned_off_and_options_are_validated():
    m = make_mlp()
    report = gradprobe.check(m.loss, m.grad, m.params, probes=False)
    assert report.params["W1"].coverage.n_probed == 0
    assert report.settings["probes"] == 0
    for bad in (
        {"probes": -1},
        {"probes": 1.5},
        {"slice_probes": "yes"},
        {"probes": 0, "slice_probes": True},
    ):
        with pytest.raises(gradprobe.InvalidInputError, match="probes"):
            gradprobe.check(m.loss, m.grad, m.params, **bad)


def test_sample_failures_feed_the_bound():
    m = make_mlp(bug="missing-term")
    report = gradprobe.check(m.loss, m.grad, m.params, samples=64)
    w1 = report.params["W1"]
    assert not w1.passed
    cov = w1.coverage
    assert cov.n_failed_sampled > 0 and cov.n_sampled == 64
    assert cov.upper_bound == pytest.approx(upper_bound_wrong_fraction(64, cov.n_failed_sampled))
    assert np.all([len(i) == 2 for i in w1.bad_indices])
