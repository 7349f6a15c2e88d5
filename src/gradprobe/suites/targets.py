"""Check targets: ``path/to/models.py:make_mlp`` or ``pkg.mod:make_mlp``.

A target names a module-level function that returns a :class:`gradprobe.Problem`. A target
before the colon that ends in ``.py`` or contains a path separator is a file (relative paths
resolve against a base directory: the suite file's, or the current one); otherwise it is an
importable module.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .problem import Problem

__all__ = ["Target", "parse_target"]


@dataclass(frozen=True)
class Target:
    """A resolved target.

    Attributes
    ----------
    text : str
        The target as written.
    file : str or None
        Absolute path of the file, for file targets.
    module : str or None
        Dotted module name, for module targets.
    function : str
        The function returning a :class:`Problem`.
    """

    text: str
    file: str | None
    module: str | None
    function: str

    def find_problem(self) -> None:
        """Check, without importing anything, that the target exists (raise otherwise)."""
        if self.file is not None:
            path = Path(self.file)
            if not path.is_file():
                raise InvalidInputError(
                    f"target {self.text!r}: file {self.file} does not exist; give a path "
                    "relative to the suite file (or the current directory for `gradprobe check`)."
                )
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            except SyntaxError as exc:
                raise InvalidInputError(
                    f"target {self.text!r}: {self.file} line {exc.lineno}: syntax error: {exc.msg}"
                ) from None
            names = _module_level_names(tree)
            if self.function not in names:
                raise InvalidInputError(
                    f"target {self.text!r}: {self.file} defines no module-level "
                    f"{self.function!r}; functions there: {sorted(names) or 'none'}."
                )
            return
        assert self.module is not None
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise InvalidInputError(
                f"target {self.text!r}: module {self.module!r} cannot be found; install it or "
                "use a file path ('path/to/models.py:function')."
            )

    def load_function(self) -> Any:
        """Import the module and return the function (raise :class:`InvalidInputError`)."""
        if self.file is not None:
            module = _import_file(self.file)
        else:
            assert self.module is not None
            module = importlib.import_module(self.module)
        func = getattr(module, self.function, None)
        if func is None or not callable(func):
            raise InvalidInputError(
                f"target {self.text!r}: {self.function!r} is not a callable in "
                f"{self.file or self.module}; define `def {self.function}(): return "
                "gradprobe.Problem(...)` at module level."
            )
        return func

    def problem(self, args: dict[str, Any] | None = None) -> Problem:
        """Call the function with ``args`` and return the :class:`Problem` it builds."""
        func = self.load_function()
        value = func(**(args or {}))
        if not isinstance(value, Problem):
            raise InvalidInputError(
                f"target {self.text!r}: expected the function to return a gradprobe.Problem, "
                f"found {type(value).__name__}; return gradprobe.Problem(loss=..., grad=..., "
                "params=...)."
            )
        return value


def _module_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _import_file(file: str) -> Any:
    # A stable, unique module name per file, so two suites' "models.py" do not collide.
    digest = hashlib.sha1(file.encode()).hexdigest()[:10]
    name = f"_gradprobe_target_{Path(file).stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise InvalidInputError(f"target file {file}: cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    # The file's folder goes on sys.path so it can import its sibling modules.
    folder = str(Path(file).parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def parse_target(text: Any, base_dir: str | os.PathLike[str] | None = None) -> Target:
    """Parse ``"path/to/file.py:function"`` or ``"pkg.mod:function"``.

    Raises
    ------
    InvalidInputError
        The text is not of that form.
    """
    if not isinstance(text, str) or text.count(":") < 1:
        raise InvalidInputError(
            f"target: expected 'path/to/models.py:function' or 'pkg.module:function', "
            f"found {text!r}."
        )
    where, _, function = text.rpartition(":")
    if not where or not function.isidentifier():
        raise InvalidInputError(
            f"target: expected 'path/to/models.py:function' or 'pkg.module:function' with a "
            f"function name after the colon, found {text!r}."
        )
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    if is_file:
        path = Path(where).expanduser()
        if not path.is_absolute():
            path = Path(base_dir or os.getcwd()) / path
        return Target(text=text, file=str(path.resolve()), module=None, function=function)
    if not all(part.isidentifier() for part in where.split(".")):
        raise InvalidInputError(
            f"target: {where!r} is neither a .py file nor a dotted module name (in {text!r})."
        )
    return Target(text=text, file=None, module=where, function=function)
