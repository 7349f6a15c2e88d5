"""Every kind of check in a suite: check, check_vjp, check_jvp, check_hvp, check_layer,
gradprobe.torch.check and gradprobe.jax.check, through `gradprobe check` and `gradprobe run`
with the same outcomes, outputs, baselines and reproduce lines."""

from __future__ import annotations

import importlib
import inspect
import json

import numpy as np
import pytest

import gradprobe
from gradprobe.cli import main
from gradprobe.errors import InvalidInputError
from gradprobe.suites.problem import KINDS
from gradprobe.suites.runner import SuiteResult

from .kinds import write_kinds

NUMPY_KINDS = ["numpy_check", "vjp_check", "jvp_check", "hvp_check", "layer_check"]
FRAMEWORKS = {"torch_check": "torch", "jax_check": "jax"}


def _needs(target):
    if target in FRAMEWORKS:
        pytest.importorskip(FRAMEWORKS[target])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("target", [*NUMPY_KINDS, *FRAMEWORKS])
def test_each_kind_passes_through_gradprobe_check(target, tmp_path, monkeypatch):
    _needs(target)
    write_kinds(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = main(["check", f"kinds_models.py:{target}", "--no-isolate", "-q", "--json", "o.json"])
    data = json.loads((tmp_path / "o.json").read_text())
    assert code == 0, data["checks"][0]["message"]
    (check,) = data["checks"]
    assert check["status"] == "passed" and check["report"]["params"]


@pytest.mark.timeout(300)
def test_planted_bugs_in_vjp_and_layer_fail_with_reproduce_lines(tmp_path, monkeypatch, capsys):
    write_kinds(
        tmp_path,
        """
        [defaults]
        isolate = false
        [checks.vjp_bug]
        target = "kinds_models.py:vjp_check"
        args = { bug = true }
        [checks.layer_bug]
        target = "kinds_models.py:layer_check"
        args = { bug = true }
        [checks.hvp]
        target = "kinds_models.py:hvp_check"
        """,
    )
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-q", "--json", "before.json"]) == 1
    out = capsys.readouterr().out
    assert "vjp_bug: gradprobe run gradprobe.toml --check vjp_bug --seed 0" in out
    assert "layer_bug: gradprobe run gradprobe.toml --check layer_bug --seed 0" in out
    result = SuiteResult.from_dict(json.loads((tmp_path / "before.json").read_text()))
    statuses = {o.name: o.status for o in result.outcomes}
    assert statuses == {"vjp_bug": "failed", "layer_bug": "failed", "hvp": "passed"}
    assert {p.name for p in result.by_name["vjp_bug"].report.failures} == {"W"}
    assert {p.name for p in result.by_name["layer_bug"].report.failures} == {"b"}
    assert result.by_name["layer_bug"].message.startswith("gradient mismatch in b")
    # The reproduce line reruns the one check, and a baseline of these kinds compares.
    assert main(["run", "--check", "vjp_bug", "--seed", "0", "-q"]) == 1
    assert main(["run", "-q", "-k", "hvp", "--baseline", "before.json"]) == 0


@pytest.mark.timeout(300)
def test_every_kind_in_one_isolated_suite_run(tmp_path, monkeypatch):
    targets = list(NUMPY_KINDS)
    for target, module in FRAMEWORKS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        targets.append(target)
    body = "".join(f'[checks.{t}]\ntarget = "kinds_models.py:{t}"\n' for t in targets)
    write_kinds(tmp_path, body)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-q", "--json", "r.json", "--junit", "r.xml"]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert [c["name"] for c in data["checks"]] == targets
    assert all(c["status"] == "passed" for c in data["checks"])


def test_problem_kinds_and_their_mistakes():
    f = lambda p: p  # noqa: E731
    vjp = gradprobe.Problem.vjp(f, f, np.ones(2), static={"a": 1}, samples=4)
    assert (vjp.kind, dict(vjp.keywords), dict(vjp.options)) == (
        "vjp",
        {"static": {"a": 1}},
        {"samples": 4},
    )
    assert vjp.loss is None and vjp.with_options(seed=3).options["seed"] == 3
    assert vjp.with_options(seed=3).kind == "vjp"
    assert gradprobe.Problem.of("check", f, f, np.ones(2)).kind == "check"
    with pytest.raises(InvalidInputError, match=r"kind: expected one of \['check', 'vjp'"):
        gradprobe.Problem.of("vjpp", f, f, np.ones(2))
    with pytest.raises(InvalidInputError, match=r"expected 3 positional.*found 2"):
        gradprobe.Problem.of("vjp", f, f)
    with pytest.raises(InvalidInputError, match=r"unknown keyword\(s\) \['statc'\].*'static'"):
        gradprobe.Problem.vjp(f, f, np.ones(2), statc={})
    with pytest.raises(InvalidInputError, match=r"Problem\.jvp f: expected a callable"):
        gradprobe.Problem.jvp(3, f, np.ones(2))
    with pytest.raises(AttributeError, match="immutable"):
        vjp.kind = "check"


def test_kind_keywords_are_the_check_functions_own():
    for kind in KINDS.values():
        module = FRAMEWORKS.get(f"{kind.name}_check")
        if module is not None:
            pytest.importorskip(module)
        sig = inspect.signature(kind.runner())
        own = [
            name
            for name, p in sig.parameters.items()
            if p.kind in (p.KEYWORD_ONLY,) and name != "seed"
        ]
        positional = [
            name
            for name, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        assert tuple(positional) == kind.positional, kind.name
        if kind.name != "check":
            assert tuple(own) == kind.keywords, kind.name
        has_varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
        assert has_varargs == kind.varargs, kind.name
