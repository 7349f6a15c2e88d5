"""A suite's checks side by side on one machine: ``gradprobe run --jobs N``.

Up to ``N`` checks run at once, each in an :class:`~gradprobe.suites.isolation.IsolatedWorker`
of its own (one per slot, reused by the slot's next check, replaced after a kill), driven by
one thread per slot; the main thread only waits, counts Ctrl-C and reports each outcome as it
ends. The cores are divided so the machine is not oversubscribed: each worker process sees
``cores // N`` cores (``LOKY_MAX_CPU_COUNT``, ``OMP_NUM_THREADS``), so a check's
``n_jobs="auto"`` or ``-1`` starts that many joblib workers and a framework's thread pool as
many threads; an explicit ``n_jobs = K`` is kept as written.

Checks start in suite order, except that a check whose target function is running in another
slot waits for a later check to go first, when there is one: checks of one function (a torch
model with several sizes) then tend to share a worker and its imports. The order of the
outcomes printed and written does not change.

Each check keeps the semantics of a serial run: its own ``timeout`` and the watchdog's kill,
a crash that is its own, and Ctrl-C, which stops the checks under way (each keeps its partial
report), starts no more, and leaves the rest as not run. Outcomes do not depend on what runs
beside them: the evaluations are the same bit for bit whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import os
import queue
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from ..errors import InvalidInputError
from .config import CheckSpec
from .isolation import IsolatedWorker
from .runner import CheckOutcome, run_check
from .stopping import CtrlC

#: Environment variables that cap the cores a check's worker process uses.
SHARED_ENV = ("LOKY_MAX_CPU_COUNT", "OMP_NUM_THREADS")

OnDone = Callable[[int, CheckOutcome], None]


def validate_jobs(value: Any, where: str = "--jobs") -> int:
    """``jobs`` as an int >= 1 (raise :class:`InvalidInputError` naming ``where``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(
            f"{where}: expected an int >= 1 (checks run at once), found {value!r}; e.g. "
            f"--jobs 2 or [run] jobs = 2."
        )
    return value


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


@contextmanager
def divided_cores(jobs: int) -> Iterator[int]:
    """While the block runs, worker processes started from here see ``cores // jobs`` cores
    (at least one; a smaller cap already set in the environment is kept). Yields the share."""
    share = max(1, available_cores() // max(1, jobs))
    saved = {name: os.environ.get(name) for name in SHARED_ENV}
    for name, old in saved.items():
        try:
            current = int(old) if old is not None else None
        except ValueError:
            current = None
        os.environ[name] = str(share if current is None else min(current, share))
    try:
        yield share
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _affinity(spec: CheckSpec) -> tuple[str | None, str | None, str]:
    """Checks of one target function import the same things (a framework takes seconds)."""
    return spec.target.file, spec.target.module, spec.target.function


def _next(upcoming: list[int], specs: Sequence[CheckSpec], busy: set[Any]) -> int:
    """The position in ``upcoming`` of the check to start now: the first whose target
    function is not running in another slot (so that the slot running it, whose worker has
    its imports, runs it next), else the first."""
    for k, index in enumerate(upcoming):
        if _affinity(specs[index]) not in busy:
            return k
    return 0


def run_side_by_side(
    specs: Sequence[CheckSpec], jobs: int, on_done: OnDone
) -> tuple[dict[int, CheckOutcome], bool]:
    """Run ``specs`` up to ``jobs`` at once, each isolated; ``on_done(index, outcome)`` is
    called in this thread as each ends.

    Returns the outcomes by index in ``specs`` (those never started are missing) and whether
    Ctrl-C stopped the run. Never raises for a failing, crashing or hanging check.
    """
    jobs = validate_jobs(jobs)
    specs = [dataclasses.replace(s, isolate=True) for s in specs]
    slots: queue.SimpleQueue[IsolatedWorker] = queue.SimpleQueue()
    workers = [IsolatedWorker() for _ in range(min(jobs, len(specs)))]
    for w in workers:
        slots.put(w)
    outcomes: dict[int, CheckOutcome] = {}

    def one(spec: CheckSpec, ctrl_c: Any) -> CheckOutcome:
        worker = slots.get()
        try:
            return run_check(spec, None, worker=worker, interrupts=ctrl_c)
        finally:
            slots.put(worker)

    with (
        CtrlC() as ctrl_c,
        divided_cores(jobs),
        ThreadPoolExecutor(
            max_workers=len(workers) or 1, thread_name_prefix="gradprobe-job"
        ) as pool,
    ):
        running: dict[Future[CheckOutcome], int] = {}
        upcoming = list(range(len(specs)))
        try:
            while True:
                while not ctrl_c.count and upcoming and len(running) < len(workers):
                    busy = {_affinity(specs[i]) for i in running.values()}
                    index = upcoming.pop(_next(upcoming, specs, busy))
                    running[pool.submit(one, specs[index], ctrl_c)] = index
                if not running:
                    break
                done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    outcomes[index] = future.result()
                    on_done(index, outcomes[index])
        finally:
            for w in workers:
                w.close()
    return outcomes, bool(ctrl_c.count)
