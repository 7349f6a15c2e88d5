"""Check targets: ``path/to/models.py:make_mlp`` or ``pkg.mod:make_mlp``.

A target names a module-level function that returns a :class:`gradprobe.Problem`. A target
before the colon that ends in ``.py`` or contains a path separator is a file (relative paths
resolve against a base directory: the suite file's, or the current one); otherwise it is a
module, imported with that base directory first on ``sys.path`` (as ``python -m`` and pytest
put the current folder there), so ``gradprobe check models:make_mlp`` works from the folder
holding ``models.py``.

Mistakes are found before anything runs and without importing the user's code: the file or
module exists, defines the function, and the function accepts the keyword arguments given
(read from its ``def`` with :mod:`ast`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .by_value import pickle_by_value
from .problem import Problem


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
    folder : str or None
        For module targets, the folder put first on ``sys.path`` to import it (the suite
        file's folder, or the current one).
    """

    text: str
    file: str | None
    module: str | None
    function: str
    folder: str | None = None

    def _importable(self) -> None:
        if self.folder is not None and self.folder not in sys.path:
            sys.path.insert(0, self.folder)

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
                # Bytes: decoded as Python does at import (a coding declaration, a BOM, else
                # UTF-8).
                tree = ast.parse(path.read_bytes(), filename=str(path))
            except SyntaxError as exc:
                fix = (
                    "; save it as UTF-8 or declare its encoding on its first line "
                    "(# -*- coding: latin-1 -*-)"
                    if "unicode error" in str(exc.msg)
                    else ""
                )
                raise InvalidInputError(
                    f"target {self.text!r}: {self.file} line {exc.lineno}: syntax error: "
                    f"{exc.msg}{fix}"
                ) from None
            except (UnicodeDecodeError, ValueError) as exc:  # bytes its coding cannot decode
                raise InvalidInputError(
                    f"target {self.text!r}: {self.file} cannot be decoded as Python source "
                    f"({exc}); save it as UTF-8 or declare its encoding on its first line "
                    "(# -*- coding: latin-1 -*-)."
                ) from None
            if self.function not in _module_level_names(tree):
                functions = _module_level_functions(tree)
                raise InvalidInputError(
                    f"target {self.text!r}: {self.file} defines no module-level "
                    f"{self.function!r}; functions there: {functions or 'none'}."
                )
            return
        assert self.module is not None
        self._importable()
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
            self._importable()
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
        args = args or {}
        try:
            inspect.signature(func).bind(**args)
        except TypeError as exc:
            raise InvalidInputError(
                f"target {self.text!r}: the arguments {sorted(args)} do not fit "
                f"{self.function}{_signature_text(func)}: {exc}; fix `args` (--arg)."
            ) from None
        except ValueError:  # no signature to read (a builtin): let the call decide
            pass
        value = func(**args)
        if not isinstance(value, Problem):
            raise InvalidInputError(
                f"target {self.text!r}: expected the function to return a gradprobe.Problem, "
                f"found {type(value).__name__}; return gradprobe.Problem(loss=..., grad=..., "
                "params=...)."
            )
        return value

    def args_problem(self, args: dict[str, Any]) -> str | None:
        """What is wrong with the keyword ``args`` for the target function, read from its
        ``def`` without importing it; None when they fit or the ``def`` cannot be read (the
        call then decides)."""
        found = self._definition()
        if found is None:
            return None
        node, path = found
        if node.decorator_list:  # a decorator may change what it accepts
            return None
        a = node.args
        accepted = [x.arg for x in (*a.args, *a.kwonlyargs)]
        unknown = [k for k in args if k not in accepted]
        where = f"{self.function}() (defined at {_shown(path)}:{node.lineno})"
        if unknown and a.kwarg is None:
            return (
                f"{where} takes no argument {', '.join(map(repr, unknown))}; its arguments: "
                f"{accepted or 'none'}"
            )
        required = [x.arg for x in a.args[: len(a.args) - len(a.defaults)]]
        required += [x.arg for x, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is None]
        missing = [k for k in required if k not in args]
        if missing:
            return f"{where} needs the argument(s) {missing} (no default)"
        return None

    def args_example(self, style: str = "toml") -> str:
        """How to pass the target function's own keyword arguments, from its ``def`` (each
        with its default where that is a literal): ``args = { scale = 1.5 }`` (``style``
        "toml") or ``--arg scale=1.5`` ("cli"); a neutral text when the ``def`` cannot be
        read or takes no arguments."""
        found = self._definition()
        pairs: list[tuple[str, Any]] = []
        if found is not None:
            a = found[0].args
            positional = [*a.args]
            defaults: list[Any] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
            pairs = list(zip((x.arg for x in positional), defaults, strict=True))
            pairs += list(zip((x.arg for x in a.kwonlyargs), a.kw_defaults, strict=True))
        if not pairs:
            return "no args (the function takes none)" if found is not None else "its own names"
        shown = [(name, _literal(node)) for name, node in pairs]
        if style == "cli":
            return " ".join(f"--arg {name}={value}" for name, value in shown)
        return "args = { " + ", ".join(f"{name} = {value}" for name, value in shown) + " }"

    def _definition(self) -> tuple[ast.FunctionDef | ast.AsyncFunctionDef, str] | None:
        path = self.file
        if path is None and self.module is not None:
            self._importable()
            try:
                spec = importlib.util.find_spec(self.module)
            except (ImportError, ValueError):
                return None
            path = spec.origin if spec is not None else None
        if path is None or not path.endswith(".py") or not Path(path).is_file():
            return None
        try:
            tree = ast.parse(Path(path).read_bytes())  # decoded as at import
        except (SyntaxError, ValueError):
            return None
        found = None
        for node in tree.body:  # the last definition wins, as at import
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name == self.function:
                    found = node
        return None if found is None else (found, path)


def _shown(path: str) -> str:
    """``path`` relative to the current folder when it lies below it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return path if rel.startswith("..") else rel


def _signature_text(func: Any) -> str:
    try:
        return str(inspect.signature(func))
    except (TypeError, ValueError):
        return "(...)"


def _literal(node: ast.expr | None) -> str:
    """A TOML/JSON-ready text of a default value (a placeholder when it is not a literal)."""
    import json

    if node is None:
        return "..."
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return "..."
    if isinstance(value, (bool, int, float, str)) or value is None:
        return "..." if value is None else json.dumps(value)
    return "..."


def _module_level_functions(tree: ast.Module) -> list[str]:
    """The functions defined at module level (what a target may name), sorted."""
    return sorted(
        {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    )


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
    pickle_by_value(name)  # no other process can import it by that name
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
    folder = str(Path(base_dir or os.getcwd()).resolve())
    return Target(text=text, file=None, module=where, function=function, folder=folder)
