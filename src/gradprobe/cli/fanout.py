"""``gradprobe run --jobs N`` and ``--scheduler ADDRESS``: where a suite's checks run at once.

:func:`fan_out_of` reads the choice (the flag, else ``GRADPROBE_SCHEDULER`` for the
scheduler, else the suite's ``[run]`` table) and checks it before anything runs (exit code 2);
:func:`run_fanned_out` runs the checks side by side (:mod:`gradprobe.suites.pool`) or on a Dask
cluster (:mod:`gradprobe.suites.cluster`) and prints each outcome in suite order as soon as
those before it have ended, so the text, the summary and the outputs read as a serial run's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import InvalidInputError
from .console import Console
from .summary import outcome_text

#: The environment variable naming a Dask scheduler for ``gradprobe run``.
SCHEDULER_ENV = "GRADPROBE_SCHEDULER"


@dataclasses.dataclass(frozen=True)
class FanOut:
    """How the checks of a run are spread: ``jobs`` at once here, or on ``scheduler``."""

    jobs: int = 1
    scheduler: str | None = None
    source: str = "--jobs"

    def describe(self) -> str:
        if self.scheduler is not None:
            return f"on the Dask cluster at {self.scheduler} ({self.source})"
        return f"{self.jobs} checks at once ({self.source})"


def fan_out_of(args: argparse.Namespace, suite: Any) -> FanOut | None:
    """The run's :class:`FanOut`, or None for one check after another (raise
    :class:`InvalidInputError`, exit code 2, for a bad value)."""
    from ..suites.pool import validate_jobs

    keys = dict(getattr(suite, "run", None) or {})
    jobs, source = getattr(args, "jobs", None), "--jobs"
    if jobs is None:
        jobs, source = keys.get("jobs", 1), "[run] jobs"
    jobs = validate_jobs(jobs, source)
    scheduler = getattr(args, "scheduler", None)
    where = "--scheduler"
    if scheduler is None and os.environ.get(SCHEDULER_ENV):
        scheduler, where = os.environ[SCHEDULER_ENV], SCHEDULER_ENV
    if scheduler is None and keys.get("scheduler"):
        scheduler, where = keys["scheduler"], "[run] scheduler"
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise InvalidInputError(
                f"{where}: expected a Dask scheduler address such as tcp://host:8786, found "
                f"{scheduler!r}."
            )
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise InvalidInputError(
                f'{where} needs dask.distributed: pip install "gradprobe[dask]" (or leave out '
                f"{where})."
            ) from None
        return FanOut(jobs=jobs, scheduler=scheduler.strip(), source=where)
    if jobs > 1:
        return FanOut(jobs=jobs, source=source)
    return None


def run_fanned_out(
    console: Console,
    specs: Sequence[Any],
    fan_out: FanOut,
    reproduce: Callable[[Any], str],
    seconds: Mapping[str, float] | None = None,
) -> tuple[list[Any], bool]:
    """Run ``specs`` as ``fan_out`` says; returns the outcomes in suite order (those that ran)
    and whether Ctrl-C stopped the run. ``seconds``: each check's time in an earlier run, by
    name, so that ``--jobs`` starts the longest first."""
    n = len(specs)
    done: dict[int, Any] = {}
    printed = [0]  # specs[:printed] are printed

    with console.progress() as bar:

        def show(i: int) -> None:
            text = outcome_text(console, done[i], i + 1, n)
            if console.quiet:
                return
            if getattr(bar, "active", False):
                bar.print(text)
            else:
                console.out(text)

        def on_done(index: int, outcome: Any) -> None:
            done[index] = dataclasses.replace(outcome, reproduce=reproduce(outcome))
            while printed[0] in done:
                show(printed[0])
                printed[0] += 1
            bar.start(f"[{len(done)}/{n}] checks done")

        bar.start(f"[0/{n}] checks done")
        if fan_out.scheduler is not None:
            from ..suites.cluster import run_on_cluster

            _, interrupted = run_on_cluster(specs, fan_out.scheduler, on_done)
        else:
            from ..suites.pool import run_side_by_side

            _, interrupted = run_side_by_side(specs, fan_out.jobs, on_done, seconds)
        for i in sorted(done):  # after Ctrl-C, those that ended after a gap
            if i >= printed[0]:
                show(i)
    return [done[i] for i in sorted(done)], interrupted
