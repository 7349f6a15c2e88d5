"""A suite's checks side by side on one machine: ``gradprobe run --jobs N``.

Up to ``N`` checks run at once, each in an :class:`~gradprobe.suites.isolation.IsolatedWorker`
of its own (one per slot, reused by the slot's next check, replaced after a kill), driven by
one thread per slot; the main thread only hands out the checks, waits, counts Ctrl-C and
reports each outcome as it ends. The cores are divided so the machine is not oversubscribed:
each worker process sees ``cores // N`` cores (``LOKY_MAX_CPU_COUNT``, ``OMP_NUM_THREADS``), so
a check's ``n_jobs="auto"`` or ``-1`` starts that many joblib workers and a framework's thread
pool as many threads; an explicit ``n_jobs = K`` is kept as written.

The longest checks start first, each in the slot whose worker has imported the frameworks it
needs (:mod:`.schedule`: torch and jax take longer to import than many checks take to run),
and a worker that will get no more checks is stopped at once, while the others run. The
order of the outcomes printed and written does not change.

Each check keeps the semantics of a serial run: its own ``timeout`` and the watchdog's kill,
a crash that is its own, and Ctrl-C, which stops the checks under way (each keeps its partial
report), starts no more, and leaves the rest as not run. Outcomes do not depend on what runs
beside them: the evaluations are the same bit for bit whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from ..errors import InvalidInputError
from ..evaluate.policy import available_cores
from .config import CheckSpec
from .isolation import IsolatedWorker
from .runner import CheckOutcome, run_check
from .schedule import Planner
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


def run_side_by_side(
    specs: Sequence[CheckSpec],
    jobs: int,
    on_done: OnDone,
    seconds: Mapping[str, float] | None = None,
) -> tuple[dict[int, CheckOutcome], bool]:
    """Run ``specs`` up to ``jobs`` at once, each isolated; ``on_done(index, outcome)`` is
    called in this thread as each ends. ``seconds``: each check's own time in an earlier run,
    by name, to start the longest first (:mod:`.schedule`).

    Returns the outcomes by index in ``specs`` (those never started are missing) and whether
    Ctrl-C stopped the run. Never raises for a failing, crashing or hanging check.
    """
    jobs = validate_jobs(jobs)
    specs = [dataclasses.replace(s, isolate=True) for s in specs]
    workers = [IsolatedWorker() for _ in range(min(jobs, len(specs)))]
    planner = Planner(specs, len(workers), dict(seconds or {}))
    outcomes: dict[int, CheckOutcome] = {}

    def one(slot: int, index: int, ctrl_c: Any) -> CheckOutcome:
        return run_check(specs[index], None, worker=workers[slot], interrupts=ctrl_c)

    with (
        CtrlC() as ctrl_c,
        divided_cores(jobs),
        ThreadPoolExecutor(
            max_workers=len(workers) or 1, thread_name_prefix="gradprobe-job"
        ) as pool,
    ):
        running: dict[Future[CheckOutcome], tuple[int, int]] = {}
        free = list(range(len(workers)))
        closing: list[Future[None]] = []
        try:
            while True:
                if ctrl_c.count:
                    planner.drop()
                for slot in list(free):
                    index = planner.take(slot)
                    if index is not None:
                        free.remove(slot)
                        running[pool.submit(one, slot, index, ctrl_c)] = (slot, index)
                if not planner.upcoming:  # idle workers will get no more checks
                    closing += [pool.submit(workers[slot].close) for slot in free]
                    free = []
                if not running:
                    break
                done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    slot, index = running.pop(future)
                    free.append(slot)
                    # A worker killed or stopped is replaced by a fresh one at the next check.
                    planner.finish(slot, replaced=not workers[slot].started)
                    outcomes[index] = future.result()
                    on_done(index, outcomes[index])
        finally:
            wait(closing)
            _close_all(workers)
    return outcomes, bool(ctrl_c.count)


def _close_all(workers: Sequence[IsolatedWorker]) -> None:
    """Stop the workers at once (each ends in a few ms after a check, or is killed)."""
    threads = [
        threading.Thread(target=w.close, name="gradprobe-close") for w in workers if w.started
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
