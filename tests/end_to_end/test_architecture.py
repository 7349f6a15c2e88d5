"""The package's shape: layers whose imports only point down, one job per module."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

import pytest

import gradprobe

ROOT = Path(gradprobe.__file__).resolve().parent
MAX_LINES = 450


def test_imports_only_point_down():
    pytest.importorskip("importlinter")
    # The contracts live in pyproject.toml ([tool.importlinter]); run from the repository root.
    repo = ROOT.parents[1]
    if not (repo / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run(
        [str(lint)], cwd=repo, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _contracts() -> list[dict]:
    repo = ROOT.parents[1]
    if not (repo / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    with open(repo / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]["contracts"]


def _layered(contract: dict) -> list[str]:
    return [m.strip() for layer in contract["layers"] for m in layer.split("|")]


@pytest.mark.parametrize(
    "package",
    [
        "gradprobe",
        *sorted(f"gradprobe.{p.name}" for p in ROOT.iterdir() if (p / "__init__.py").exists()),
    ],
)
def test_every_module_has_its_place_in_a_layer_contract(package):
    """Each folder has a layers contract naming each of its modules once: a module left out
    of the list could import anything in its folder without ``lint-imports`` noticing."""
    contracts = [c for c in _contracts() if c["type"] == "layers" and package in c["containers"]]
    assert len(contracts) == 1, f"{package}: {len(contracts)} layers contracts (want one)"
    named = _layered(contracts[0])
    folder = ROOT if package == "gradprobe" else ROOT / package.split(".")[1]
    modules = {
        p.stem if p.is_file() else p.name
        for p in folder.iterdir()
        if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").exists()
    }
    assert sorted(named) == sorted(set(named)), f"{package}: a module named twice: {named}"
    assert set(named) == modules, (
        f"{package}: modules missing from its contract {sorted(modules - set(named))}, "
        f"named but absent {sorted(set(named) - modules)}"
    )


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_says_its_job_and_stays_small(path):
    text = path.read_text()
    n = text.count("\n")
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)}: {n} lines (at most {MAX_LINES})"
    if path.name != "_version.py":
        assert ast.get_docstring(ast.parse(text)), (
            f"{path.relative_to(ROOT)} has no module docstring saying its job"
        )


_REFERENCE = re.compile(r"(?<![\w.])(gradprobe(?:\.\w+)+)|:\w+:`~?(\.[\w.]+)`")


def _resolves(name: str) -> bool:
    """``name`` (dotted, from ``gradprobe``) is a module or an attribute of one."""
    parts = name.rstrip(".").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _docstrings(tree: ast.Module) -> list[str]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, _WITH_DOCS))]
    return [doc for n in nodes if (doc := ast.get_docstring(n))]


_FILES = (".toml", ".json", ".md", ".py")
#: Dotted words in prose that are not Python names (suites/junit.py: a JUnit class name).
_NOT_NAMES = {"gradprobe.gradprobe"}
_WITH_DOCS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_OPTIONAL = (
    "gradprobe.torch",
    "gradprobe.jax",
    "gradprobe.frameworks.torch",
    "gradprobe.frameworks.jax",
)


def test_docstring_references_name_what_exists():
    """Every ``gradprobe.…`` name in a docstring, and every relative ``:mod:`.x``` role,
    resolves (a reference to a module that moved is caught here)."""
    dead = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if rel.name == "__init__" else module.rpartition(".")[0]
        for doc in _docstrings(ast.parse(path.read_text(encoding="utf-8"))):
            for absolute, relative in _REFERENCE.findall(doc):
                name = absolute or package + relative
                if name.endswith(_FILES) or name in _NOT_NAMES:  # a file name, a JUnit class
                    continue
                if name.startswith(_OPTIONAL) and not all(
                    importlib.util.find_spec(m) for m in ("torch", "jax")
                ):
                    continue
                if not _resolves(name):
                    dead.append(f"{module}: {absolute or relative}")
    assert not dead, "docstrings name what does not exist:\n" + "\n".join(dead)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports anywhere (typing-only and lazy imports too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            stem = ".".join([*base, *([node.module] if node.module else [])])
            targets = [stem, *(f"{stem}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def test_no_import_circle_even_through_typing_or_lazy_imports():
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {m: _imports(p, set(paths)) for m, p in paths.items()}
    # A package's __init__ importing its own submodules is how a package re-exports: skip those.
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                circles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles:\n" + "\n".join(circles)


#: Modules whose names are the public API (``gradprobe.__init__``'s docstring): only these
#: define ``__all__``; an internal module defines none.
_PUBLIC = {
    "gradprobe",
    "gradprobe.torch",
    "gradprobe.jax",
    "gradprobe.testing",
    "gradprobe.examples",
    "gradprobe.examples.batchnorm",
    "gradprobe.examples.conv",
    "gradprobe.examples.jitted",
    "gradprobe.examples.mlp",
    "gradprobe.examples.planted",
    "gradprobe.examples.rnn",
}


def _defines_all(tree: ast.Module) -> bool:
    return any(
        isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign))
        and any(
            isinstance(t, ast.Name) and t.id == "__all__"
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
        for node in tree.body
    )


def test_only_public_modules_define_all():
    trees = {_module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in ROOT.rglob("*.py")}
    defining = {m for m, tree in trees.items() if _defines_all(tree)}
    internal = sorted(defining - _PUBLIC)
    assert not internal, f"internal modules defining __all__: {internal}"
    assert not _PUBLIC - defining, f"public modules without __all__: {sorted(_PUBLIC - defining)}"
    # gradprobe's own code imports names, never `*` (so no __all__ is load-bearing)
    stars = [
        m
        for m, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names)
    ]
    assert not stars, f"modules importing *: {stars}"


def test_no_submodule_is_named_like_a_public_name():
    """``import gradprobe.x`` binds ``gradprobe.x`` to the module: a submodule named like a
    public function (``sweep``) would turn ``gradprobe.sweep(...)`` into a module call."""
    submodules = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()}
    assert not submodules & set(gradprobe.__all__)
