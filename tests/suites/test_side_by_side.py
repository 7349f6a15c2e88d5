"""A mixed suite (a correct check, a planted bug, a timeout, a worker that dies) run one after
another, with ``--jobs 2``, and on a real 2-worker ``distributed.LocalCluster``: the same
statuses, numbers and exit code; a dying worker costs only its own check."""

from __future__ import annotations

import json
import os

import pytest

from gradprobe.cli import main
from gradprobe.errors import InvalidInputError
from gradprobe.suites.config import load_suite
from gradprobe.suites.pool import SHARED_ENV, divided_cores, validate_jobs

from .kinds import MIXED_SUITE, write_kinds

EXPECTED = {
    "correct": "passed",
    "planted": "failed",
    "times_out": "aborted",
    "dies": "crashed",
    "numpy": "passed",
}


def _run(folder, *flags):
    code = main(["run", "-q", "--json", "r.json", "--junit", "r.xml", *flags])
    data = json.loads((folder / "r.json").read_text())
    return code, data


def _numbers(data):
    """What must not depend on where a check ran: status, and for checks that finished their
    evaluations and worst errors (a timed-out check's count depends on the clock)."""
    out = {}
    for c in data["checks"]:
        report = c["report"]
        finished = report is not None and report["complete"]
        out[c["name"]] = (
            c["status"],
            report["n_evaluations"] if finished else None,
            {p["name"]: p["max_rel_error"] for p in report["params"]} if finished else None,
        )
    return out


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serial")
    write_kinds(folder, MIXED_SUITE)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return _run(folder)
    finally:
        os.chdir(cwd)


def test_serial_run_of_the_mixed_suite(serial):
    code, data = serial
    assert code == 3
    assert {c["name"]: c["status"] for c in data["checks"]} == EXPECTED


@pytest.mark.timeout(300)
def test_jobs_2_gives_the_serial_results_in_the_serial_order(serial, tmp_path, monkeypatch):
    write_kinds(tmp_path, MIXED_SUITE)
    monkeypatch.chdir(tmp_path)
    code, data = _run(tmp_path, "--jobs", "2")
    assert code == serial[0]
    assert [c["name"] for c in data["checks"]] == list(EXPECTED)
    assert _numbers(data) == _numbers(serial[1])
    # The suite key does the same (the flag wins over it).
    (tmp_path / "gradprobe.toml").write_text("[run]\njobs = 2\n" + MIXED_SUITE)
    assert load_suite("gradprobe.toml").run == {"jobs": 2}
    code, data = _run(tmp_path, "-k", "correct or planted")
    assert code == 1 and [c["status"] for c in data["checks"]] == ["passed", "failed"]


def test_jobs_values_and_the_divided_cores(tmp_path, monkeypatch):
    with pytest.raises(InvalidInputError, match=r"--jobs: expected an int >= 1"):
        validate_jobs(0)
    write_kinds(tmp_path, "[run]\njobs = 0\n" + MIXED_SUITE)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-q"]) == 2
    (tmp_path / "gradprobe.toml").write_text("[run]\nworkers = 2\n" + MIXED_SUITE)
    assert main(["run", "-q"]) == 2
    for name in SHARED_ENV:
        monkeypatch.delenv(name, raising=False)
    with divided_cores(10_000) as share:
        assert share == 1 and all(os.environ[name] == "1" for name in SHARED_ENV)
    assert not any(name in os.environ for name in SHARED_ENV)


# -- a real Dask cluster ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    import dask

    # A check that kills its worker is that check's crash at once (not retried elsewhere).
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"host": "127.0.0.1"},
        ) as local:
            yield local


@pytest.mark.timeout(300)
def test_local_cluster_gives_the_serial_results(serial, cluster, tmp_path, monkeypatch):
    write_kinds(tmp_path, MIXED_SUITE)
    monkeypatch.chdir(tmp_path)
    code, data = _run(tmp_path, "--scheduler", cluster.scheduler_address)
    assert code == serial[0]
    assert [c["name"] for c in data["checks"]] == list(EXPECTED)
    assert _numbers(data) == _numbers(serial[1])
    dies = next(c for c in data["checks"] if c["name"] == "dies")
    assert "Dask worker running this check died" in dies["message"]
    # The environment variable names the scheduler too.
    monkeypatch.setenv("GRADPROBE_SCHEDULER", cluster.scheduler_address)
    code, data = _run(tmp_path, "-k", "correct or numpy")
    assert code == 0 and [c["status"] for c in data["checks"]] == ["passed", "passed"]


def test_unreachable_scheduler_is_a_usage_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("distributed")
    write_kinds(tmp_path, MIXED_SUITE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("gradprobe.suites.cluster.CONNECT_TIMEOUT", "1s")
    assert main(["run", "-q", "-k", "numpy", "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "cannot reach a Dask scheduler" in capsys.readouterr().err


@pytest.fixture(scope="module")
def process_cluster():
    """Workers that may start processes: each check then runs in a process of its own."""
    distributed = pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.worker.daemon": False}):
        with distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"host": "127.0.0.1"},
        ) as local:
            yield local


@pytest.mark.slow  # ~10 s: a second cluster, and a process started per check
@pytest.mark.timeout(300)
def test_checks_isolated_on_cluster_workers_keep_the_workers_alive(
    serial, process_cluster, tmp_path, monkeypatch
):
    write_kinds(tmp_path, MIXED_SUITE)
    monkeypatch.chdir(tmp_path)
    workers = set(process_cluster.scheduler_info["workers"])
    code, data = _run(tmp_path, "--scheduler", process_cluster.scheduler_address)
    assert code == serial[0] and _numbers(data) == _numbers(serial[1])
    dies = next(c for c in data["checks"] if c["name"] == "dies")
    assert "the worker process died (exit code 17)" in dies["message"]
    assert set(process_cluster.scheduler_info["workers"]) == workers  # none was lost


# -- Ctrl-C ------------------------------------------------------------------------------------
INTERRUPTED = """
[checks.first]
target = "models.py:good"
[checks.second]
target = "models.py:slow_marked"
args = { n = 200 }
[checks.third]
target = "models.py:slow_marked"
args = { marker = "third.txt", n = 200 }
[checks.fourth]
target = "models.py:good"
[checks.fifth]
target = "models.py:slow_marked"
args = { marker = "fifth.txt", n = 200 }
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("group", [False, True], ids=["SIGINT to the parent", "Ctrl-C"])
def test_ctrl_c_with_jobs_keeps_partial_reports_and_lists_the_rest(tmp_path, group):
    import xml.etree.ElementTree as ET

    from gradprobe.suites.runner import SuiteResult

    from ..helpers import interrupt_cli, write_suite

    write_suite(tmp_path, INTERRUPTED)
    args = ["run", "--jobs", "2", "--json", "r.json", "--junit", "j.xml"]
    proc = interrupt_cli(*args, cwd=tmp_path, marker=tmp_path / "third.txt", group=group)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    result = SuiteResult.from_dict(json.loads((tmp_path / "r.json").read_text()))
    # Two slots: first and second start; third waits while second (the same target function)
    # runs, so fourth goes before it; third starts when first and fourth are done, and the
    # interrupt comes while second and third run, before fifth.
    statuses = {o.name: o.status for o in result.outcomes}
    assert statuses == {
        "first": "passed",
        "second": "interrupted",
        "third": "interrupted",
        "fourth": "passed",
    }
    assert [o.name for o in result.outcomes] == ["first", "second", "third", "fourth"]
    assert result.not_run == ("fifth",)
    for name in ("second", "third"):
        partial = result.by_name[name].report
        assert partial is not None and not partial.complete
    assert "2 passed, 2 interrupted, 1 not run — exit code 130" in proc.stdout
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase")}
    assert cases["fifth"].find("skipped") is not None


# -- backend= in the Python API ----------------------------------------------------------------
def _quadratic():
    from ..helpers import quadratic_problem

    return quadratic_problem(n=30, seed=2)


def test_backend_dask_uses_the_active_client(cluster):
    import distributed

    import gradprobe

    from ..helpers import report_core

    loss, grad, x = _quadratic()
    serial = gradprobe.check(loss, grad, x, n_jobs=1, samples="all")
    with distributed.Client(cluster) as client:
        assert distributed.get_client() is client
        report = gradprobe.check(loss, grad, x, n_jobs=2, backend="dask", samples="all")
    assert "dask" in report.measured["executor"]
    assert report_core(report) == report_core(serial)  # bit for bit


def test_backend_names_and_mistakes(tmp_path, monkeypatch):
    import gradprobe

    loss, grad, x = _quadratic()
    threads = gradprobe.check(loss, grad, x, n_jobs=2, backend="threading")
    assert "threading" in threads.measured["executor"]
    with pytest.raises(InvalidInputError, match=r"backend: expected one of \['loky', 'threading'"):
        gradprobe.check(loss, grad, x, backend="daks")
    distributed = pytest.importorskip("distributed")
    try:
        distributed.get_client()
        pytest.skip("a distributed.Client is active in this process")
    except ValueError:
        pass
    with pytest.raises(InvalidInputError, match=r"no active distributed\.Client"):
        gradprobe.check(loss, grad, x, backend="dask")
    # A suite key and a flag of `gradprobe check`, checked before anything runs.
    write_kinds(tmp_path, '[checks.a]\ntarget = "kinds_models.py:numpy_check"\nbackend = "thr"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-q"]) == 2
    assert main(["check", "kinds_models.py:numpy_check", "-q", "--backend", "threading"]) == 0
    assert main(["check", "kinds_models.py:numpy_check", "-q", "--backend", "thr"]) == 2


@pytest.mark.slow  # the hard limit is timeout + 5 s grace, then a worker restart
@pytest.mark.timeout(300)
def test_a_loss_call_that_never_returns_on_the_cluster_is_stopped(cluster, tmp_path, monkeypatch):
    write_kinds(
        tmp_path,
        """
        [checks.hangs]
        target = "kinds_models.py:hangs_check"
        timeout = 1
        [checks.good]
        target = "kinds_models.py:numpy_check"
        """,
    )
    monkeypatch.chdir(tmp_path)
    code, data = _run(tmp_path, "--scheduler", cluster.scheduler_address)
    assert code == 3
    statuses = {c["name"]: c["status"] for c in data["checks"]}
    assert statuses == {"hangs": "aborted", "good": "passed"}
    hangs = data["checks"][0]
    assert "did not return" in hangs["message"] and "was restarted" in hangs["message"]
