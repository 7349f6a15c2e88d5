"""Every planted bug is detected, localized to the right parameters and given the right kind."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gradprobe
from gradprobe.examples import (
    BATCHNORM_BUGS,
    CONV_BUGS,
    MLP_BUGS,
    RNN_BUGS,
    make_batchnorm_mlp,
    make_conv,
    make_mlp,
    make_rnn,
)

# Bugs with no simple pattern are diagnosed "mismatch"; the others by their own name.
MISMATCH = {"activation", "flip", "truncated", "batch-stats"}

CASES = (
    [("mlp", bug, make_mlp, {}) for bug in MLP_BUGS]
    + [("conv", bug, make_conv, {}) for bug in CONV_BUGS]
    + [("rnn", bug, make_rnn, {}) for bug in RNN_BUGS]
    + [("batchnorm", bug, make_batchnorm_mlp, {}) for bug in BATCHNORM_BUGS]
    + [
        ("batchnorm-relu", bug, make_batchnorm_mlp, {"activation": "relu"})
        for bug in BATCHNORM_BUGS
    ]
)


def _check_kinds(model, report, unexplained=False):
    failed = {p.name for p in report.failures}
    assert failed == set(model.expected_failures), str(report)
    want = "mismatch" if model.bug in MISMATCH or unexplained else model.bug
    for p in report.failures:
        assert p.diagnosis is not None, p.name
        assert p.diagnosis.kind == want, (p.name, p.diagnosis)
        assert 0.0 < p.diagnosis.confidence <= 1.0
        assert p.diagnosis.detail
    for p in report.params.values():
        if p.passed:
            assert p.diagnosis is None


@pytest.mark.parametrize(
    ("label", "bug", "make", "kw"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_planted_bug_gets_its_kind(label, bug, make, kw):
    m = make(bug=bug, **kw)
    report = gradprobe.check(m.loss, m.grad, m.params)
    _check_kinds(m, report)


F32_CASES = (
    [("mlp", bug, make_mlp) for bug in MLP_BUGS if bug != "missing-term"]
    + [("rnn", bug, make_rnn) for bug in RNN_BUGS if bug != "missing-term"]
    + [("conv", bug, make_conv) for bug in CONV_BUGS if bug != "missing-term"]
)


@pytest.mark.parametrize(
    ("label", "bug", "make"), F32_CASES, ids=[f"{c[0]}-{c[1]}" for c in F32_CASES]
)
def test_planted_bug_gets_its_kind_in_float32(label, bug, make):
    m = make(bug=bug, dtype=np.float32)
    report = gradprobe.check(m.loss, m.grad, m.params)
    if (label, bug) in F32_UNEXPLAINED:
        # float32 steps cross ReLU kinks the rule cannot see at this precision: a quarter of
        # K's entries leave c * n by 10-35 allowances, so no relation is named for K (c, a
        # bias of four entries, still gets its kind).
        d = report.params["K"].diagnosis
        assert d is not None and d.kind == "mismatch", d
        assert {p.name for p in report.failures} == set(m.expected_failures)
        return
    _check_kinds(m, report)


#: float32 cases where the evidence does not hold a relation entry by entry (see the test).
F32_UNEXPLAINED = {("conv", "sign"), ("conv", "scale")}


def test_float32_missing_term_resolvable_when_the_term_is_large_enough():
    # l2=1e-3 is below what float32 central differences resolve; 0.05 is not.
    m = make_rnn(bug="missing-term", dtype=np.float32, l2=0.05)
    report = gradprobe.check(m.loss, m.grad, m.params)
    _check_kinds(m, report)
    assert report.params["Wh"].diagnosis.evidence["coefficient"] == pytest.approx(-0.05, rel=0.1)


def test_relu_mlp_bugs_without_probes():
    for bug in MLP_BUGS:
        m = make_mlp(bug=bug, activation="relu")
        _check_kinds(m, gradprobe.check(m.loss, m.grad, m.params, probes=0))


def test_scale_reports_the_batch_size():
    m = make_mlp(bug="scale", batch=16)
    report = gradprobe.check(m.loss, m.grad, m.params)
    d = report.params["b3"].diagnosis
    assert d.evidence["c"] == pytest.approx(16.0, rel=1e-6)
    assert "batch size" in d.detail


def test_missing_term_reports_the_coefficient():
    m = make_mlp(bug="missing-term", l2=1e-3)
    report = gradprobe.check(m.loss, m.grad, m.params)
    for name in ("W1", "W2", "W3"):
        assert report.params[name].diagnosis.evidence["coefficient"] == pytest.approx(
            -1e-3, rel=1e-2
        )


def test_swapped_names_the_other_parameter():
    m = make_mlp(bug="swapped")
    report = gradprobe.check(m.loss, m.grad, m.params)
    assert report.params["b1"].diagnosis.evidence["other"] == "b2"
    assert report.params["b2"].diagnosis.evidence["other"] == "b1"


def _full_relative_error(m, name):
    """||a - n|| / ||n|| over every entry of ``name``, n by central differences."""
    x = m.params[name]
    num = np.zeros(x.shape)
    for i in np.ndindex(x.shape):
        old = x[i]
        h = 1e-6 * max(1.0, abs(old))
        x[i] = old + h
        up = m.loss(m.params)
        x[i] = old - h
        down = m.loss(m.params)
        x[i] = old
        num[i] = (up - down) / (2 * h)
    return np.linalg.norm(m.grad(m.params)[name] - num) / np.linalg.norm(num)


def test_mismatch_hint_starts_with_the_largest_relative_error():
    m = make_mlp(bug="activation")
    report = gradprobe.check(m.loss, m.grad, m.params)
    failing = [p.name for p in report.failures]
    for p in report.failures:
        ev = p.diagnosis.evidence
        # The hint names a failing parameter: the one whose checked entries have the largest
        # ||a - n|| / ||n||, and says so.
        assert set(ev["relative_errors"]) == set(failing)
        assert ev["start_with"] == max(failing, key=ev["relative_errors"].get)
        assert "one layer at a time" in p.diagnosis.detail
        assert "largest relative error" in p.diagnosis.detail
    # b1's error (1.03) is well above b2's (0.90), W1's and W2's (0.71) over every entry too.
    full = {name: _full_relative_error(m, name) for name in failing}
    assert max(full, key=full.get) == "b1" == report.failures[0].diagnosis.evidence["start_with"]


def test_diagnosis_in_text_and_dict():
    m = make_mlp(bug="transpose")
    report = gradprobe.check(m.loss, m.grad, m.params)
    text = str(report)
    assert "likely cause: transpose" in text and "confidence" in text
    d = json.loads(report.to_json())
    # The schema lists parameters in layout order, each with its name.
    assert [q["name"] for q in d["params"]] == list(m.params)
    w2 = d["params"][list(m.params).index("W2")]
    assert w2["diagnosis"]["kind"] == "transpose"
    back = gradprobe.Report.from_dict(d)
    assert back.params["W2"].diagnosis.kind == "transpose"
