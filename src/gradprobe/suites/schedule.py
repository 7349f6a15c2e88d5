"""Which check a free slot of ``gradprobe run --jobs N`` starts next: longest first, and where
the frameworks it needs are imported already.

A check's cost in a worker is its own time plus the imports it triggers: torch or jax take
1-2 s to import, often more than the check. :func:`frameworks_of` reads, without importing
anything, which of them a target's function needs (imports in its module, in its body, or in
the module-level functions it calls, and ``Problem.torch`` / ``Problem.jax``).
:func:`known_seconds` takes each check's own time from an earlier run (the ``--baseline``
file, or the ``--json`` file of the last run); otherwise :data:`DEFAULT_SECONDS` is assumed.

:class:`Planner` hands out the checks: a free slot starts, among the checks it runs at the
lowest cost (no slot has more of their frameworks imported), the one with the longest
estimate, so the long checks start first and the short ones fill in at the end; a check that
is cheaper where its framework is imported waits for that slot unless that slot would get to
it later than this one would finish it (its current check's time left, or overrun, and the
checks left). The estimates only order the checks: what runs, its
outcome and the order of the outputs do not depend on them.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import CheckSpec

#: Seconds a worker spends importing each framework (measured on a 2-core machine).
IMPORT_SECONDS = {"torch": 1.5, "jax": 1.3}
#: Seconds assumed for a check that has no time recorded from an earlier run.
DEFAULT_SECONDS = 0.5


def _source_path(spec: CheckSpec) -> str | None:
    target = spec.target
    if target.file is not None:
        return target.file
    if target.module is None or "." in target.module:  # a package's __init__ could run
        return None
    try:
        found = importlib.util.find_spec(target.module)
    except (ImportError, ValueError):
        return None
    return None if found is None else found.origin


def _framework_of_import(node: ast.AST) -> set[str]:
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] in IMPORT_SECONDS:
            found.add(parts[0])
        elif parts[0] == "gradprobe" and len(parts) > 1 and parts[1] in IMPORT_SECONDS:
            found.add(parts[1])
    return found


def _used_in(node: ast.AST) -> tuple[set[str], set[str]]:
    """Frameworks ``node`` imports or names as ``X.torch`` / ``X.jax``, and the plain names it
    calls."""
    frameworks: set[str] = set()
    called: set[str] = set()
    for sub in ast.walk(node):
        frameworks |= _framework_of_import(sub)
        if isinstance(sub, ast.Attribute) and sub.attr in IMPORT_SECONDS:
            frameworks.add(sub.attr)
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name):
            called.add(sub.func.id)
    return frameworks, called


def _frameworks_in_file(path: str, function: str) -> frozenset[str]:
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return frozenset()
    defs: dict[str, ast.AST] = {}
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defs[node.name] = node  # the last definition wins, as at import
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= _framework_of_import(node)
    todo, seen = [function], set()
    while todo:  # the function, and the module-level functions it calls
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        frameworks, called = _used_in(defs[name])
        found |= frameworks
        todo.extend(called)
    return frozenset(found)


def frameworks_of(
    spec: CheckSpec, _cache: dict[tuple[str, str], frozenset[str]] | None = None
) -> frozenset[str]:
    """The frameworks (``"torch"``, ``"jax"``) a check's target imports, read from its source
    (empty when it cannot be read)."""
    path = _source_path(spec)
    if path is None or not path.endswith(".py"):
        return frozenset()
    key = (path, spec.target.function)
    if _cache is not None and key in _cache:
        return _cache[key]
    found = _frameworks_in_file(path, spec.target.function)
    if _cache is not None:
        _cache[key] = found
    return found


def known_seconds(outcomes: Iterable[Any]) -> dict[str, float]:
    """Each check's own time in an earlier run (its report's ``timings["total"]``, which leaves
    out the imports of its target; else its wall ``duration``), by name."""
    seconds: dict[str, float] = {}
    for outcome in outcomes:
        report = getattr(outcome, "report", None)
        total = None if report is None else (report.timings or {}).get("total")
        value = total if total is not None else getattr(outcome, "duration", None)
        if isinstance(value, (int, float)) and value >= 0:
            seconds[str(outcome.name)] = float(value)
    return seconds


def last_run_seconds(path: str | None) -> dict[str, float]:
    """:func:`known_seconds` of the suite result at ``path`` (a ``--json`` file of an earlier
    run); empty when there is none or it cannot be read."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        checks = data["checks"]
        found = {}
        for c in checks:
            report = c.get("report") or {}
            value = (report.get("timings") or {}).get("total", c.get("duration"))
            if isinstance(value, (int, float)) and value >= 0:
                found[str(c["name"])] = float(value)
        return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


@dataclasses.dataclass
class Planner:
    """Hands the checks of ``specs`` to ``slots`` workers (see the module).

    ``seconds`` maps check names to their own time in an earlier run. Call :meth:`take` for a
    free slot and :meth:`finish` when its check ends.
    """

    specs: Sequence[CheckSpec]
    slots: int
    seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        cache: dict[tuple[str, str], frozenset[str]] = {}
        self.needs = [frameworks_of(s, cache) for s in self.specs]
        self.own = [float(self.seconds.get(s.name, DEFAULT_SECONDS)) for s in self.specs]
        self.upcoming = list(range(len(self.specs)))
        self.loaded: list[set[str]] = [set() for _ in range(self.slots)]
        self.running: list[int | None] = [None] * self.slots
        self.started = [0.0] * self.slots
        self.expected = [0.0] * self.slots

    def busy_for(self, slot: int) -> float:
        """Seconds until ``slot`` is free, as far as one can tell: what is left of its check's
        estimate, or once the check runs past it, the time it has overrun (a check stuck
        until its timeout must not hold back the checks waiting for that slot's imports)."""
        if self.running[slot] is None:
            return 0.0
        return abs(self.expected[slot] - (self.clock() - self.started[slot]))

    def _regret(self, index: int, slot: int) -> float:
        """How much more check ``index`` would cost in the cheapest other slot."""
        others = [self.cost(index, s) for s in range(self.slots) if s != slot]
        return min(others) - self.cost(index, slot) if others else 0.0

    def _elsewhere(self, index: int, slot: int) -> bool:
        """Whether check ``index``'s target function runs in another slot (whose worker, having
        imported its module, had better run it next)."""
        target = self.specs[index].target
        key = (target.file, target.module, target.function)
        for other, running in enumerate(self.running):
            if other != slot and running is not None:
                t = self.specs[running].target
                if (t.file, t.module, t.function) == key:
                    return True
        return False

    def cost(self, index: int, slot: int) -> float:
        """Estimated seconds of check ``index`` in ``slot``'s worker."""
        missing = self.needs[index] - self.loaded[slot]
        return self.own[index] + sum(IMPORT_SECONDS[f] for f in missing)

    def take(self, slot: int) -> int | None:
        """The check ``slot`` should start now (removed from the upcoming ones), or None: no
        check left, or those left run sooner in another slot."""
        if not self.upcoming:
            return None
        best = {i: min(self.cost(i, s) for s in range(self.slots)) for i in self.upcoming}
        here = {i: self.cost(i, slot) for i in self.upcoming}
        mine = [i for i in self.upcoming if here[i] <= best[i] + 1e-9]
        if mine:
            # The longest first; of equals, the one that would cost most more elsewhere (it
            # needs what this worker imported), then one whose function runs nowhere else,
            # then the first in the suite.
            chosen = max(
                mine,
                key=lambda i: (here[i], self._regret(i, slot), not self._elsewhere(i, slot), -i),
            )
        else:
            # Each check left runs cheaper elsewhere; take the one that loses least here, if
            # this slot would finish it before the others get through what is left.
            chosen = min(self.upcoming, key=lambda i: (here[i] - best[i], i))
            slots = [s for s in range(self.slots) if s != slot]
            cheapest = min(slots, key=lambda s: (self.cost(chosen, s), self.busy_for(s)))
            if here[chosen] >= self.busy_for(cheapest) + sum(best.values()):
                return None
        self.upcoming.remove(chosen)
        self.expected[slot] = here[chosen]
        self.loaded[slot] |= self.needs[chosen]
        self.running[slot] = chosen
        self.started[slot] = self.clock()
        return chosen

    def finish(self, slot: int, *, replaced: bool = False) -> None:
        """``slot``'s check ended; ``replaced``: its worker is gone, with what it imported."""
        self.running[slot] = None
        if replaced:
            self.loaded[slot] = set()

    def drop(self) -> list[int]:
        """Give up the checks not started (Ctrl-C); returns them."""
        left, self.upcoming = self.upcoming, []
        return left
