"""Known analytic functions pass; containers of every kind; report contents."""

from __future__ import annotations

import json
from typing import NamedTuple

import joblib
import numpy as np
import pytest

import gradprobe
from gradprobe.examples import make_mlp
from gradprobe.numerics.tolerances import NOISE_HALF_POINTS
from gradprobe.samples import FIRST_SAMPLE

from ..helpers import quadratic_problem


def test_quadratic_single_array_passes():
    loss, grad, x = quadratic_problem()
    report = gradprobe.check(loss, grad, x)
    assert report.passed
    assert list(report.params) == ["x"]
    p = report.params["x"]
    assert p.n_checked == p.n_total == 5
    assert p.max_rel_error < 1e-8
    assert p.sampling == "all"
    assert report.complete


def test_tanh_elementwise_passes():
    x = np.linspace(-2, 2, 50)
    report = gradprobe.check(
        lambda v: np.sum(np.tanh(v) ** 2), lambda v: 2 * np.tanh(v) * (1 - np.tanh(v) ** 2), x
    )
    assert report.passed, str(report)


def test_softmax_cross_entropy_passes():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4, 6))
    y = np.array([0, 3, 5, 1])

    def loss(p):
        logits = p["z"] - p["z"].max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -logp[np.arange(4), y].mean()

    def grad(p):
        e = np.exp(p["z"] - p["z"].max(axis=1, keepdims=True))
        s = e / e.sum(axis=1, keepdims=True)
        s[np.arange(4), y] -= 1
        return {"z": s / 4}

    report = gradprobe.check(loss, grad, {"z": z})
    assert report.passed, str(report)


def test_sequence_params_named_by_position_and_passed_as_list():
    seen_types = []
    a, b = np.arange(3.0), np.ones((2, 2))

    def loss(ps):
        seen_types.append(type(ps))
        return float(np.sum(ps[0] ** 2) + np.sum(ps[1] ** 3))

    report = gradprobe.check(loss, lambda ps: [2 * ps[0], 3 * ps[1] ** 2], [a, b])
    assert report.passed
    assert list(report.params) == ["0", "1"]
    assert set(seen_types) == {list}


def test_tuple_params_passed_back_as_tuple():
    seen_types = set()

    def loss(ps):
        seen_types.add(type(ps))
        return float(np.sum(ps[0] ** 2))

    gradprobe.check(loss, lambda ps: (2 * ps[0],), (np.arange(3.0),))
    assert seen_types == {tuple}


class _Params(NamedTuple):
    W: np.ndarray
    b: np.ndarray


def test_namedtuple_params_reach_the_loss_as_the_same_namedtuple():
    seen_types = set()

    def loss(p):
        seen_types.add(type(p))
        return float(np.sum(p.W**2) + np.sum(np.sin(p.b)))  # attribute access, as written

    def grad(p):
        return _Params(W=2 * p.W, b=np.cos(p.b))

    params = _Params(W=np.arange(6.0).reshape(2, 3), b=np.array([0.3, -0.2]))
    report = gradprobe.check(loss, grad, params)
    assert report.passed and list(report.params) == ["0", "1"]
    assert seen_types == {_Params}
    # Parallel calls rebuild the container the same way.
    seen_types.clear()
    with joblib.parallel_config(backend="threading"):
        report = gradprobe.check(loss, grad, params, n_jobs=2)
    assert report.passed and seen_types == {_Params}


def test_precomputed_gradient_container_is_accepted():
    loss, grad, x = quadratic_problem()
    report = gradprobe.check(loss, grad(x), x)
    assert report.passed


def test_example_mlp_passes_and_report_fields():
    m = make_mlp()
    report = gradprobe.check(m.loss, m.grad, m.params)
    assert report.passed, str(report)
    assert list(report.params) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    w1 = report.params["W1"]
    assert w1.shape == (64, 32) and w1.n_total == 2048
    assert w1.n_checked == FIRST_SAMPLE and w1.sampling == "stratified"  # nothing disagreed
    assert report.params["b1"].sampling == "all"
    assert isinstance(w1.worst_index, tuple) and len(w1.worst_index) == 2
    assert w1.diagnosis is None
    # base + pre-flight + noise estimate, 2 per checked entry, 2 per directional probe (correct
    # model: no bisection)
    assert report.n_evaluations == 2 + 2 * NOISE_HALF_POINTS + 2 * sum(
        p.n_checked + (p.coverage.n_probes if p.coverage else 0) for p in report.params.values()
    )
    assert report.timings["total"] > 0


def test_same_seed_same_report_different_seed_different_sample():
    m = make_mlp()
    r1 = gradprobe.check(m.loss, m.grad, m.params, seed=3)
    r2 = gradprobe.check(m.loss, m.grad, m.params, seed=3)
    r3 = gradprobe.check(m.loss, m.grad, m.params, seed=4)
    d1, d2, d3 = r1.to_dict(), r2.to_dict(), r3.to_dict()
    for d in (d1, d2, d3):
        d.pop("timings")
    assert d1 == d2
    assert d1["params"][0]["worst_entries"] != d3["params"][0]["worst_entries"]


@pytest.mark.parametrize(
    ("samples", "expected"),
    [("all", 2048), (100, 100), (0.25, 512), ({"W1": 10}, 10), (5000, 2048)],
)
def test_samples_option(samples, expected):
    m = make_mlp()
    report = gradprobe.check(m.loss, m.grad, m.params, samples=samples)
    assert report.params["W1"].n_checked == expected


def test_sample_includes_first_and_last_entry():
    x = np.ones(1000)
    grad = np.full(1000, 2.0)
    grad[0] = 0.0  # wrong at the first entry
    report = gradprobe.check(lambda v: 2 * v.sum(), grad, x, samples=3)
    assert not report.passed
    assert report.params["x"].worst_index == (0,)
    grad = np.full(1000, 2.0)
    grad[-1] = 0.0
    report = gradprobe.check(lambda v: 2 * v.sum(), grad, x, samples=3)
    assert report.params["x"].worst_index == (999,)


def test_to_dict_and_json_round_trip():
    m = make_mlp(bug="zero")
    report = gradprobe.check(m.loss, m.grad, m.params)
    text = report.to_json()
    data = json.loads(text)
    assert data["schema_version"] == 2 and "executor" in data["measured"]
    assert data["passed"] is False
    assert [p["name"] for p in data["params"]] == list(report.params)
    back = gradprobe.Report.from_dict(data)
    assert back.to_dict() == report.to_dict()


def test_str_report_table_and_failure_block():
    m = make_mlp(bug="transpose")
    text = str(gradprobe.check(m.loss, m.grad, m.params))
    assert "FAILED" in text
    assert "parameter" in text and "max rel err" in text and "verdict" in text
    assert "W2: Not equal to tolerance rtol=1e-05" in text
    assert "Mismatched elements:" in text
    block = text.split("W2: Not equal")[1]
    entry_lines = [ln for ln in block.splitlines() if "analytic=" in ln]
    assert 1 <= len(entry_lines) <= 5
    assert entry_lines[0].lstrip().startswith("[")
    assert "numeric=" in entry_lines[0] and "rel_err=" in entry_lines[0]


def test_raise_for_failures():
    m = make_mlp()
    report = gradprobe.check(m.loss, m.grad, m.params)
    assert report.raise_for_failures() is report
    bad = make_mlp(bug="sign")
    report = gradprobe.check(bad.loss, bad.grad, bad.params)
    with pytest.raises(gradprobe.GradientMismatchError) as info:
        report.raise_for_failures()
    message = str(info.value)
    assert "W1" in message and "b1" in message and "analytic=" in message
    assert "W2:" not in message
    assert info.value.report is report
    assert isinstance(info.value, gradprobe.GradCheckError)


def test_float32_params_warn_and_pass():
    m = make_mlp(dtype=np.float32)
    report = gradprobe.check(m.loss, m.grad, m.params, promote=False)
    assert report.passed, str(report)
    assert any("float64" in w for w in report.warnings)
    assert report.params["W1"].rtol > 1e-5


def test_zero_gradient_both_ways_passes():
    p = {"used": np.arange(3.0), "unused": np.ones(4)}
    report = gradprobe.check(
        lambda q: float(np.sum(q["used"] ** 2)),
        lambda q: {"used": 2 * q["used"], "unused": np.zeros(4)},
        p,
    )
    assert report.passed


def test_eps_option_sets_relative_step():
    loss, grad, x = quadratic_problem()
    report = gradprobe.check(loss, grad, x, eps=1e-4)
    assert report.params["x"].step == 1e-4
    entry = report.params["x"].worst_entries[0]
    assert entry.step == pytest.approx(1e-4 * max(1, abs(x[entry.index])), rel=1e-6)
