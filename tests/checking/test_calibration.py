"""The confidence is calibrated (issue 22): measured on the planted-bug corpus."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

import gradprobe
from gradprobe.checking.calibration import TABLE, calibrated
from gradprobe.examples.planted import BUG_KINDS, planted_cases

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_calibration", ROOT / "benchmarks/bench_calibration.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_corpus_is_deterministic_and_covers_every_kind():
    a = [(c.label, c.truth) for c in planted_cases(2)]
    b = [(c.label, c.truth) for c in planted_cases(2)]
    assert a == b and len(a) == 2 * len(BUG_KINDS)
    first = next(planted_cases(1, ("scale",)))
    again = next(planted_cases(1, ("scale",)))
    for name in first.params:
        np.testing.assert_array_equal(first.params[name], again.params[name])
    with pytest.raises(ValueError, match="kinds: expected names"):
        next(planted_cases(1, ("nope",)))


def test_small_corpus_no_false_alarm_no_miss_and_confident_diagnoses_right():
    rows, false_alarms, misses = _bench().judge(3)
    assert false_alarms == [] and misses == []
    confident = [r for r in rows if r[2] >= 0.9]
    assert confident and all(r[3] for r in confident), [r for r in confident if not r[3]]
    # No bug no relation describes is given a relation's name.
    assert not [r for r in rows if r[5] == "mismatch" and r[0] in ("scale", "sign", "missing-term")]


def test_every_kind_a_diagnosis_can_give_has_a_measured_rate():
    kinds = {"nonfinite", "zero", "unused", "clipped", "missing-term", "sign", "scale"}
    kinds |= {"transpose", "swapped", "shifted", "partial-factor", "confined", "ties"}
    kinds |= {"mismatch", "ambiguous"}
    assert kinds <= set(TABLE)
    assert all(0.5 < r < 1.0 for rates in TABLE.values() for r in rates)
    assert calibrated("no-such-kind", 3) == 0.5


def test_the_printed_confidence_is_the_table_rate():
    x = np.random.default_rng(2).standard_normal((6, 5))
    r = gradprobe.check(
        lambda p: float(np.sum(np.tanh(p["x"]))),
        lambda p: {"x": 1.01 * (1.0 - np.tanh(p["x"]) ** 2)},
        {"x": x},
    )
    d = r.params["x"].diagnosis
    assert d.confidence == calibrated("scale", 30) and d.evidence["support"] == 30
    assert f"(confidence {d.confidence:.0%})" in str(r)


@pytest.mark.slow
def test_table_is_what_the_benchmark_measures():
    bench = _bench()
    rows, false_alarms, misses = bench.judge(40)
    assert false_alarms == [] and misses == []
    measured = bench.calibration_table(rows)
    assert set(measured) == set(TABLE)
    for key, rates in measured.items():
        assert rates == pytest.approx(TABLE[key], abs=0.02), key
