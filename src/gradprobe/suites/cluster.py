"""A suite's checks on a Dask ``distributed`` cluster: ``gradprobe run --scheduler ADDRESS``.

Each check is one task (:func:`run_task`, given the :class:`CheckSpec`: the target is
imported on the worker, so the target's files must be readable there at the same path, or its
module importable). On the worker the check runs

- in a process of its own (:func:`~gradprobe.suites.isolation.run_isolated`), when the Dask
  worker may start processes (workers started with ``distributed.worker.daemon: false``): the
  same timeout, watchdog kill and crash handling as a serial run, and the Dask worker survives
  whatever the check does;
- else in the Dask worker itself (``run_here``): its own ``timeout`` stops it cleanly with a
  partial report, and a check that kills its process kills that Dask worker, which is reported
  as that check's crash (the scheduler's ``allowed-failures`` decides how often the task is
  retried on another worker before; 0 reports it at once).

Ctrl-C in the command line sets a :class:`distributed.Event` the tasks watch: a check under
way stops with its partial report (status ``"interrupted"``), one not yet started returns at
once as not run, and after :data:`~gradprobe.suites.isolation.INTERRUPT_GRACE` seconds (or a
second Ctrl-C) those still out are cancelled and reported interrupted. Nothing is lost from the
outputs: every check that ended has its outcome, and each worker death costs only the check it
was running. A check whose task gives no result within its ``timeout`` plus the grace after it
started (a loss call stuck in C code) is cancelled, its Dask worker restarted, and reported
``"aborted"`` (timeout), as the watchdog of a serial run kills its worker.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidInputError
from .config import CheckSpec
from .inprocess import pack_report, run_here, unpack_report
from .isolation import INTERRUPT_GRACE, STARTUP_LIMIT, run_isolated
from .runner import CheckOutcome, outcome_of
from .stopping import CtrlC

OnDone = Callable[[int, CheckOutcome], None]

#: What :func:`run_task` returns for a check it did not start (Ctrl-C came first).
NOT_RUN = "not run"
#: How long to wait for the scheduler to answer before the run stops (exit code 2).
CONNECT_TIMEOUT = "20s"
#: Seconds between looks at the stop event while a check runs on a worker.
POLL = 0.25


class _Count:
    """A Ctrl-C count set by the stop event (what the isolated runner watches)."""

    def __init__(self) -> None:
        self.count = 0


def run_task(
    spec: CheckSpec, stop_name: str, started_name: str = "", index: int = 0
) -> tuple[str, str, Any, float]:
    """On a Dask worker: run one check; ``(status, message, packed report, seconds)``.

    Tells the client it started (``(index, worker address, mode)`` on the queue
    ``started_name``), so the client can restart a worker whose check never returns. Never
    raises for a failing, crashing or hanging check (a check that kills this process is seen
    by the client as the worker's death).
    """
    from distributed import Event, Queue, get_worker

    stop = Event(stop_name)
    if stop.is_set():
        return NOT_RUN, "", None, 0.0
    isolated = not multiprocessing.current_process().daemon
    if started_name:
        try:
            Queue(started_name).put((index, get_worker().address, isolated))
        except Exception:  # the client is gone: nobody is waiting for the result
            pass
    start = time.monotonic()
    count = _Count()
    finished = threading.Event()

    def watch() -> None:
        while not finished.is_set():
            try:
                if stop.wait(POLL):
                    count.count += 1
                    return
            except Exception:  # the client is gone: nobody will ask to stop
                return

    watcher = threading.Thread(target=watch, name="gradprobe-stop-watch", daemon=True)
    watcher.start()
    try:
        if isolated:
            status, message, report = run_isolated(spec, None, count)
        else:

            def progress(done: int, total: int) -> None:
                if count.count:  # the engine keeps what finished, as at Ctrl-C
                    count.count = 0
                    raise KeyboardInterrupt

            status, message, report = run_here(spec, progress)
    finally:
        finished.set()
    return status, message, pack_report(report), time.monotonic() - start


def connect(address: Any) -> tuple[Any, bool]:
    """A :class:`distributed.Client` for ``address`` (a scheduler address, or a Client used
    as it is) and whether it was made here (and is closed by the caller)."""
    from distributed import Client

    if isinstance(address, Client):
        return address, False
    try:
        return Client(address, timeout=CONNECT_TIMEOUT), True
    except (OSError, TimeoutError) as exc:
        raise InvalidInputError(
            f"--scheduler {address}: cannot reach a Dask scheduler there ({exc}); start one "
            "(`dask scheduler`, then `dask worker ADDRESS --nthreads 1`) or fix the address."
        ) from None


def _died(spec: CheckSpec, exc: BaseException, seconds: float) -> CheckOutcome:
    name = type(exc).__name__
    if name == "KilledWorker":
        what = (
            "the Dask worker running this check died (its process was killed, or the loss "
            "or grad ended it)"
        )
    else:
        what = f"the task failed on the Dask worker ({name}: {exc})"
    return outcome_of(
        spec,
        "crashed",
        f"{what}; the other checks went on. Run it alone with `gradprobe run --check "
        f"{spec.name}` to see the error in this machine's process.",
        None,
        seconds,
    )


def _cut_off(spec: CheckSpec, seconds: float) -> CheckOutcome:
    return outcome_of(
        spec,
        "interrupted",
        "interrupted (Ctrl-C); the task was cancelled before it reported, no parameter "
        "had finished.",
        None,
        seconds,
    )


def run_on_cluster(
    specs: Sequence[CheckSpec], address: Any, on_done: OnDone
) -> tuple[dict[int, CheckOutcome], bool]:
    """Run ``specs`` as tasks on the cluster at ``address`` (or a Client); ``on_done(index,
    outcome)`` is called in this thread as each ends.

    Returns the outcomes by index (checks never started are missing) and whether Ctrl-C
    stopped the run.
    """
    from distributed import Event

    client, own = connect(address)
    run_id = uuid.uuid4().hex[:10]
    stop = Event(f"gradprobe-stop-{run_id}", client=client)
    watchdog = _Watchdog(client, f"gradprobe-started-{run_id}", specs)
    outcomes: dict[int, CheckOutcome] = {}
    started = time.monotonic()
    try:
        futures = {
            client.submit(
                run_task,
                spec,
                stop.name,
                watchdog.queue.name,
                i,
                key=f"gradprobe-check-{spec.name}-{run_id}-{i}",
                pure=False,
            ): i
            for i, spec in enumerate(specs)
        }
        pending = dict(futures)
        cut_at: float | None = None
        with CtrlC() as ctrl_c:
            while pending:
                if ctrl_c.count and cut_at is None:
                    stop.set()
                    cut_at = time.monotonic() + INTERRUPT_GRACE
                if cut_at is not None and (ctrl_c.count > 1 or time.monotonic() > cut_at):
                    for future, i in pending.items():
                        future.cancel()
                        outcomes[i] = _cut_off(specs[i], time.monotonic() - started)
                        on_done(i, outcomes[i])
                    break
                for future, i in list(pending.items()):
                    if not future.done() and watchdog.overdue(i):
                        del pending[future]
                        outcomes[i] = watchdog.stop(future, i, time.monotonic() - started)
                        on_done(i, outcomes[i])
                ready = [f for f in pending if f.done()]
                if not ready:
                    time.sleep(0.05)
                    continue
                for future in ready:
                    i = pending.pop(future)
                    outcome = _outcome(specs[i], future, time.monotonic() - started)
                    if outcome is not None:
                        outcomes[i] = outcome
                        on_done(i, outcome)
        return outcomes, bool(ctrl_c.count)
    finally:
        try:
            stop.clear()
        except Exception:  # the scheduler is gone
            pass
        if own:
            client.close()


class _Watchdog:
    """The hard limit of a check on the cluster: ``timeout`` plus the isolated runner's grace
    after the task started (plus the start-up allowance when the check runs in a process of
    its own, whose own watchdog should have answered first). A task past it is cancelled and
    its Dask worker restarted (a loss call that never returns holds the worker otherwise)."""

    def __init__(self, client: Any, name: str, specs: Sequence[CheckSpec]) -> None:
        from distributed import Queue

        self.client, self.specs = client, specs
        self.queue = Queue(name, client=client)
        self.started: dict[int, tuple[float, str, bool]] = {}
        self._last = 0.0

    def _drain(self) -> None:
        now = time.monotonic()
        if now - self._last < POLL:
            return
        self._last = now
        try:
            items = self.queue.get(batch=True)
        except Exception:  # the scheduler is gone: the futures will say so
            return
        for index, worker, isolated in items:
            self.started[int(index)] = (now, str(worker), bool(isolated))

    def limit(self, index: int) -> float | None:
        if index not in self.started:
            return None
        at, _, isolated = self.started[index]
        timeout = self.specs[index].timeout
        return at + timeout + 5.0 + 0.25 * timeout + (STARTUP_LIMIT if isolated else 0.0)

    def overdue(self, index: int) -> bool:
        self._drain()
        limit = self.limit(index)
        return limit is not None and time.monotonic() > limit

    def stop(self, future: Any, index: int, seconds: float) -> CheckOutcome:
        spec = self.specs[index]
        _, worker, _ = self.started[index]
        future.cancel()
        try:
            self.client.restart_workers([worker], raise_for_error=False)
            what = f"the Dask worker {worker} was restarted"
        except Exception as exc:  # an older scheduler, or the worker is gone already
            what = f"restarting the Dask worker {worker} failed ({type(exc).__name__})"
        return outcome_of(
            spec,
            "aborted",
            f"stopped early (timeout): no result {spec.timeout:g} s (+ grace) after the check "
            f"started on the cluster: a loss or grad call did not return; {what}. Make each "
            "loss call return in time or raise `timeout`.",
            None,
            seconds,
        )


def _outcome(spec: CheckSpec, future: Any, seconds: float) -> CheckOutcome | None:
    if future.status == "cancelled":
        return _cut_off(spec, seconds)
    exc = future.exception()
    if exc is not None:
        return _died(spec, exc, seconds)
    status, message, packed, took = future.result()
    if status == NOT_RUN:
        return None
    return outcome_of(spec, status, message, unpack_report(packed), float(took))
