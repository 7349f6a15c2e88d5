"""The functions of a target file travel to joblib's process workers by value.

A target file is imported under a name of its own (``_gradprobe_target_<stem>_<digest>``, see
:mod:`.targets`) that no other process can import. cloudpickle sends a module-level function
of an importable module by reference, so a loss built from such a function (a check with
``n_jobs`` > 1, or ``"auto"`` deciding that workers pay) reached the workers as a name they
could not import, and the check ended in an error ("A task has failed to un-serialize").
:func:`pickle_by_value` registers the module with cloudpickle (the package joblib's loky and
dask use, and the copy older joblib versions carry) so that its functions travel whole, as a
script's do. joblib is
not imported for this: when it is not imported yet, a finder on ``sys.meta_path`` registers
the modules as soon as it is.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any

#: The cloudpickle modules that pickle a worker's tasks.
CLOUDPICKLES = ("cloudpickle", "joblib.externals.cloudpickle")

_modules: set[str] = set()


def _register(cloudpickle: Any) -> None:
    register = getattr(cloudpickle, "register_pickle_by_value", None)
    if register is None:  # pragma: no cover - cloudpickle < 2.0
        return
    for name in sorted(_modules):
        module = sys.modules.get(name)
        if module is not None:
            register(module)


class _WhenImported(importlib.abc.MetaPathFinder):
    """Registers the modules with each cloudpickle in :data:`CLOUDPICKLES` once it is
    imported (finds nothing itself: the other finders find the module)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in CLOUDPICKLES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _register(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def pickle_by_value(module_name: str) -> None:
    """Have cloudpickle send the functions of module ``module_name`` (in ``sys.modules``) by
    value, now for a cloudpickle imported already, else when it is imported."""
    _modules.add(module_name)
    for name in CLOUDPICKLES:
        if name in sys.modules:
            _register(sys.modules[name])
    if not any(isinstance(f, _WhenImported) for f in sys.meta_path):
        sys.meta_path.insert(0, _WhenImported())
