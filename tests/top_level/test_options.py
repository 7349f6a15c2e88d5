"""gradprobe.options: one option list, one validator, the same words in every front end."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import gradprobe
from gradprobe import cli
from gradprobe.errors import InvalidInputError, SuiteConfigError
from gradprobe.options import (
    OPTION_NAMES,
    OPTIONS,
    SUITE_KEYS,
    CheckOptions,
    option_problem,
    settings,
    validate_options,
)
from gradprobe.suites.config import load_suite
from gradprobe.suites.outcome import EXIT_OK, EXIT_USAGE

from ..helpers import write_models, write_suite


def test_table_matches_the_signature_of_check():
    params = inspect.signature(gradprobe.check).parameters
    keyword = {n: p.default for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert tuple(keyword) == OPTION_NAMES
    assert keyword == {o.name: o.default for o in OPTIONS.values()}
    assert tuple(f.name for f in CheckOptions.__dataclass_fields__.values()) == OPTION_NAMES
    assert "progress" not in SUITE_KEYS and set(SUITE_KEYS) < set(OPTION_NAMES)


def test_defaults_validate_and_settings_keep_their_keys():
    options = validate_options(("w", "b"))
    assert options.samples.keys() == {"w", "b"} and options.probes == 2
    assert list(settings(options, "serial")) == [
        "method",
        "eps",
        "rtol",
        "atol",
        "samples",
        "n_jobs",
        "executor",
        "timeout",
        "budget",
        "probes",
        "slice_probes",
        "nondet_tol",
        "thread_safe",
    ]
    with pytest.raises(InvalidInputError, match="unknown option"):
        validate_options(("w",), sampels=3)
    with pytest.raises(InvalidInputError, match="progress: expected a callable"):
        validate_options(("w",), progress=3)


@pytest.mark.parametrize(
    ("name", "value", "flag_text"),
    [
        ("n_jobs", 0, "0"),
        ("budget", 0, "0"),
        ("timeout", -1.0, "-1"),
        ("seed", -1, "-1"),
        ("nondet_tol", -1.0, "-1"),
    ],
)
def test_one_message_for_check_suite_file_and_flag(tmp_path, capsys, name, value, flag_text):
    x = np.array([1.0, 2.0])
    with pytest.raises(InvalidInputError) as info:
        gradprobe.check(lambda v: float(v @ v), lambda v: 2 * v, x, **{name: value})
    message = str(info.value)
    problem = option_problem(name, value)
    assert message == f"{name}: {problem}."

    suite = write_suite(tmp_path, f'[checks.a]\ntarget = "models.py:good"\n{name} = {value}\n')
    with pytest.raises(SuiteConfigError) as info:
        load_suite(suite)
    assert f"gradprobe.toml:3: [checks.a] key '{name}': {problem}. Fix: write" in str(info.value)

    write_models(tmp_path)
    flag = OPTIONS[name].flag
    code = cli.main(["check", str(tmp_path / "models.py") + ":good", flag, flag_text])
    assert code == EXIT_USAGE
    assert f"gradprobe: error: {flag}: {problem}" in capsys.readouterr().err


def _quadratic():
    x = np.linspace(-1.0, 1.0, 600)  # above the default sample size: probes run
    return (lambda v: float(v @ v)), (lambda v: 2 * v), x


@pytest.mark.parametrize(("value", "expected"), [(True, 2), (False, 0), (5, 5), (0, 0)])
def test_probes_true_means_the_default_count_false_none(value, expected):
    loss, grad, x = _quadratic()
    report = gradprobe.check(loss, grad, x, probes=value)
    assert report.settings["probes"] == expected
    assert (report.params["x"].coverage.n_probes > 0) == (expected > 0)


def test_samples_zero_means_probes_only_in_check_suite_file_and_flag(tmp_path, capsys):
    loss, grad, x = _quadratic()
    report = gradprobe.check(loss, grad, x, samples=0)
    p = report.params["x"]
    assert report.passed and p.n_checked == 0 and p.coverage.n_probed == x.size

    suite = write_suite(tmp_path, '[checks.a]\ntarget = "models.py:good"\nsamples = 0\n')
    assert load_suite(suite).checks[0].options["samples"] == 0
    code = cli.main(["check", str(tmp_path / "models.py") + ":good", "--samples", "0", "-q"])
    assert code == EXIT_OK, capsys.readouterr()


def test_samples_zero_without_probes_checks_nothing_and_is_rejected_everywhere(tmp_path):
    loss, grad, x = _quadratic()
    with pytest.raises(InvalidInputError) as info:
        gradprobe.check(loss, grad, x, samples=0, probes=False)
    message = str(info.value)
    assert message.startswith("samples: 0 entries checked one by one with probes=0")
    with pytest.raises(InvalidInputError, match="would check nothing"):
        gradprobe.check(loss, grad, {"w": x, "b": x[:3].copy()}, samples={"w": 0}, probes=0)
    suite = write_suite(
        tmp_path, '[checks.a]\ntarget = "models.py:good"\nsamples = 0\nprobes = 0\n'
    )
    with pytest.raises(SuiteConfigError) as info:
        load_suite(suite)
    assert "gradprobe.toml:3: [checks.a] key 'samples'" in str(info.value)
    assert message.removesuffix(".").removeprefix("samples: ") in str(info.value)


def test_progress_must_be_callable_in_check():
    loss, grad, x = _quadratic()
    with pytest.raises(InvalidInputError, match=r"progress: expected a callable .* found int"):
        gradprobe.check(loss, grad, x, progress=5)
