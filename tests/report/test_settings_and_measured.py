"""``report.settings`` is what was asked, ``report.measured`` what the check measured; JSON
schema 2 writes both, and schema 1 files (one dict for both) are still read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import gradprobe
from gradprobe.report.jsonable import MEASUREMENT_KEYS, split_settings
from gradprobe.report.model import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, Report

DATA = Path(__file__).parent / "data"


def test_a_check_keeps_what_was_asked_apart_from_what_it_measured():
    report = gradprobe.check(
        lambda p: float(np.sum(np.sin(p["x"]))),
        lambda p: {"x": np.cos(p["x"])},
        {"x": np.linspace(0, 1, 8)},
        samples=4,
    )
    assert report.settings["samples"] == {"x": 4} and report.settings["n_jobs"] == "auto"
    assert not MEASUREMENT_KEYS & set(report.settings)
    assert {"loss_noise", "noise", "loss_precision", "executor"} <= set(report.measured)
    data = json.loads(report.to_json())
    assert data["schema_version"] == SCHEMA_VERSION
    assert set(data["measured"]) == set(report.measured)
    again = Report.from_dict(data)
    assert again.settings == report.settings and again.measured == report.measured


def test_a_measurement_written_into_settings_moves_to_measured():
    report = Report(params={}, passed=True, settings={"rtol": 1e-5, "executor": "serial"})
    assert report.settings == {"rtol": 1e-5} and report.measured == {"executor": "serial"}
    asked, measured = split_settings({"method": "central", "loss_noise": 1e-16})
    assert asked == {"method": "central"} and measured == {"loss_noise": 1e-16}


def test_check_vjp_records_its_measurement_apart():
    x = {"x": np.linspace(-1, 1, 6)}
    report = gradprobe.check_jvp(np.tanh, lambda p, t: (1 - np.tanh(p) ** 2) * t, x["x"])
    assert report.measured["jvp_calls"] == 6 + 1 and "jvp_calls" not in report.settings
    assert report.settings["cotangent"].startswith("standard normal, seed 0")


@pytest.mark.parametrize("name", ["report_schema_v1.json", "report_schema_v1_torch.json"])
def test_schema_1_files_still_load_with_the_measurements_apart(name):
    data = json.loads((DATA / name).read_text(encoding="utf-8"))
    assert data["schema_version"] == 1 and 1 in READABLE_SCHEMA_VERSIONS
    report = Report.from_dict(data)
    assert report.params and report.passed is data["passed"]
    assert report.measured["executor"] == data["settings"]["executor"]
    assert report.measured["loss_noise"] == data["settings"]["loss_noise"]
    assert not MEASUREMENT_KEYS & set(report.settings)
    assert report.settings["method"] == "central"
    if "framework" in data["settings"]:  # an adapter's report: how it ran was in "vectorize"
        assert report.measured["vectorization"] == data["settings"]["vectorize"]
        assert "vectorize" not in report.settings
        assert report.measured["framework"].startswith("torch")
    rewritten = json.loads(report.to_json())  # written back in the current schema
    assert rewritten["schema_version"] == SCHEMA_VERSION
    assert Report.from_dict(rewritten).measured == report.measured


def test_unknown_schema_versions_are_refused():
    with pytest.raises(ValueError, match="schema_version"):
        Report.from_dict({"schema_version": 99, "params": [], "passed": True})
