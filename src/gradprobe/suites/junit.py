"""JUnit XML for CI systems: one ``<testcase>`` per check.

The layout follows the common schema that Jenkins, GitLab, GitHub test reporters and pytest's
``--junitxml`` share: ``<testsuites>`` around one ``<testsuite>`` with ``tests``, ``failures``,
``errors``, ``skipped`` and ``time`` counts, and per check a ``<testcase classname name time>``
holding ``<failure>`` (a gradient mismatch or a regression) or ``<error>`` (a crash, a timeout,
a bad input, Ctrl-C) with the full report as its text, or, for a passing check, the full report in
``<system-out>``. A check that never started (Ctrl-C came first) is a testcase holding
``<skipped>``. The ``classname`` is ``gradprobe.<suite stem>`` (``gradprobe`` alone for a
``gradprobe.toml`` suite or a ``gradprobe check`` run, not ``gradprobe.gradprobe``).
"""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..report.files import write_text_atomic
from .runner import CheckOutcome, SuiteResult

# XML 1.0 forbids most control characters; tracebacks and user messages may contain them.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: str) -> str:
    return _INVALID_XML.sub("?", text)


def _details(o: CheckOutcome) -> str:
    parts = []
    if o.message:
        parts.append(o.message)
    if o.report is not None:
        parts.append(str(o.report))
    if o.reproduce:
        parts.append(f"reproduce: {o.reproduce}")
    return _clean("\n\n".join(parts))


def _short(o: CheckOutcome) -> str:
    if o.status == "failed" and o.report is not None:
        names = [p.name for p in o.report.failures]
        return _clean(
            f"gradient mismatch in {', '.join(names)}" if names else o.report.summary_line()
        )
    first = (o.message or o.status).strip().splitlines()
    return _clean(first[-1] if o.status == "crashed" and first else first[0] if first else o.status)


def junit_xml(
    result: SuiteResult,
    *,
    name: str = "gradprobe",
    regressions: dict[str, list[str]] | None = None,
) -> str:
    """The JUnit XML text of ``result``.

    Parameters
    ----------
    result : SuiteResult
        The run.
    name : str
        The testsuite name (the suite file's stem is a good one).
    regressions : dict, optional
        Check name -> lines describing its regressions against a baseline; a passing check
        with regressions becomes a ``<failure type="regression">``.
    """
    regressions = regressions or {}
    doubled = name == "gradprobe" or name.startswith("gradprobe.")
    classname = name if doubled else f"gradprobe.{name}"
    root = ET.Element("testsuites", name="gradprobe")
    suite = ET.SubElement(root, "testsuite", name=name)
    props = ET.SubElement(suite, "properties")
    for key, value in result.versions.items():
        ET.SubElement(props, "property", name=f"{key}_version", value=_clean(str(value)))
    if result.suite:
        ET.SubElement(props, "property", name="suite", value=_clean(result.suite))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for o in result.outcomes:
        counts["tests"] += 1
        total_time += o.duration
        case = ET.SubElement(
            suite, "testcase", classname=classname, name=o.name, time=f"{o.duration:.3f}"
        )
        attrs: dict[str, Any]
        if o.status == "failed":
            counts["failures"] += 1
            attrs = {"message": _short(o), "type": "GradientMismatch"}
            ET.SubElement(case, "failure", attrs).text = _details(o)
        elif o.status in ("error", "crashed", "aborted", "interrupted"):
            counts["errors"] += 1
            kind = {
                "error": "InvalidInput",
                "crashed": "Crash",
                "aborted": "Timeout",
                "interrupted": "Interrupted",
            }[o.status]
            if o.status == "aborted" and "budget" in o.message:
                kind = "BudgetExhausted"
            attrs = {"message": _short(o), "type": kind}
            ET.SubElement(case, "error", attrs).text = _details(o)
        elif o.name in regressions:
            counts["failures"] += 1
            lines = regressions[o.name]
            attrs = {"message": _clean(lines[0]), "type": "Regression"}
            ET.SubElement(case, "failure", attrs).text = _clean(
                "\n".join(lines) + "\n\n" + _details(o)
            )
        if o.report is not None and o.status == "passed":
            ET.SubElement(case, "system-out").text = _details(o)
    for skipped in result.not_run:
        counts["tests"] += 1
        counts["skipped"] += 1
        case = ET.SubElement(suite, "testcase", classname=classname, name=skipped, time="0.000")
        ET.SubElement(
            case, "skipped", message="not run: the run was interrupted (Ctrl-C) before it started"
        )
    suite.set("tests", str(counts["tests"]))
    suite.set("failures", str(counts["failures"]))
    suite.set("errors", str(counts["errors"]))
    suite.set("skipped", str(counts["skipped"]))
    suite.set("time", f"{total_time:.3f}")
    if result.created:
        suite.set("timestamp", result.created)
    suite.set("hostname", _clean(socket.gethostname()))
    for key in ("tests", "failures", "errors", "skipped", "time"):
        root.set(key, suite.get(key, "0"))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: str | Path, result: SuiteResult, **kwargs: Any) -> None:
    """Write :func:`junit_xml` to ``path`` (UTF-8)."""
    write_text_atomic(path, junit_xml(result, **kwargs))
