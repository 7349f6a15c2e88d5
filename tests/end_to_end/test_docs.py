"""Docs that cannot drift: every code block of README.md and docs/*.md runs here.

A small runner for the fenced blocks of each file, in order, in a fresh folder holding a copy
of ``examples/``:

- ```` ```python ````: executed in one namespace per file (later blocks see earlier names);
  ``test_*`` functions a block defines are called. A block whose first line is ``# NAME.py``
  is a file: written to the folder under that name (and compiled), for the commands below it.
- ```` ```bash ````: every line is a ``gradprobe`` command, run in a subprocess; the exit code
  must be the one its comment documents (``# ... exit 1``), else 0.
- ```` ```toml ````: parsed, written to the folder (under ``NAME.toml`` when its first line
  is ``# NAME.toml``) and, for a suite (``[checks.NAME]``), loaded by
  ``gradprobe.suites.config.load_suite`` next to the files written above; ``toml error``
  is an example of a mistake, which must raise ``SuiteConfigError``.
- ```` ```text output ```` is what the block before it printed; ```` ```text
  output="gradprobe demo --bug sign" ```` what that command prints (stdout, then stderr). Each line must match an
  output line, in order, with ``…`` standing for text that varies (timings, counts, digits
  at round-off level); runs of spaces count as one. Without ``abridged`` the block has as
  many lines as the output (blank lines aside).
- ``skip`` after the language (```` ```bash skip ````) for what must not run here
  (``pip install``); ``slow`` marks a block that takes more than a few seconds.
- A python block that imports an optional framework (torch, jax) that is not installed is
  skipped (``ModuleNotFoundError`` naming it), and so is nothing else.

Any other block is an error: a report example is either generated or not in the docs.
References to tests (``tests/...py::test_name``) must name tests that exist.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
LANGUAGES = {"python", "bash", "toml", "text"}
BLOCK_SECONDS = 60  # a generous ceiling for one command (the suite runs of the examples)
#: Frameworks a python block may import without them being installed: the block is skipped.
OPTIONAL_MODULES = {"torch", "jax", "jaxlib"}


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    language: str
    attrs: dict[str, str]
    body: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def _blocks(doc: Path) -> list[Block]:
    text = doc.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        words = shlex.split(m.group("info"))
        language = words[0] if words else ""
        attrs = {}
        for word in words[1:]:
            key, _, value = word.partition("=")
            attrs[key] = value
        line = text.count("\n", 0, m.start()) + 1
        found.append(Block(doc, line, language, attrs, m.group("body")))
    return found


ALL_BLOCKS = [b for doc in DOC_FILES for b in _blocks(doc)]


@dataclass
class Workspace:
    """One folder and one namespace per document; blocks run once each, in order."""

    folder: Path
    namespace: dict[str, Any] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    last_output: dict[int, str] = field(default_factory=dict)


_WORKSPACES: dict[Path, Workspace] = {}


@pytest.fixture(scope="module")
def docs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("docs")


def _workspace(doc: Path, root: Path) -> Workspace:
    if doc not in _WORKSPACES:
        folder = root / doc.stem
        folder.mkdir()
        shutil.copytree(REPO / "examples", folder / "examples")
        _WORKSPACES[doc] = Workspace(folder)
    return _WORKSPACES[doc]


def _env() -> dict[str, str]:
    env = {**os.environ, "CI": "1", "NO_COLOR": "1", "COLUMNS": "100"}
    src = str(REPO / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _gradprobe(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    words = shlex.split(command, comments=True)
    assert words and words[0] == "gradprobe", f"not a gradprobe command: {command!r}"
    return subprocess.run(
        [sys.executable, "-m", "gradprobe", *words[1:]],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=BLOCK_SECONDS * 2,
    )


# -- running each kind of block ---------------------------------------------------------------
def _run_python(block: Block, ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> str:
    first = block.body.splitlines()[0] if block.body.strip() else ""
    name = re.fullmatch(r"#\s*([\w./-]+\.py)\s*", first)
    if name:
        path = ws.folder / name.group(1)
        path.write_text(block.body, encoding="utf-8")
        compile(block.body, str(path), "exec")
        return ""
    monkeypatch.chdir(ws.folder)
    before = set(ws.namespace)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.body, block.where, "exec"), ws.namespace)
        for key in sorted(set(ws.namespace) - before):
            if key.startswith("test_") and callable(ws.namespace[key]):
                ws.namespace[key]()
    return out.getvalue()


def _expected_code(line: str) -> int:
    comment = line.partition("#")[2]
    m = re.search(r"\bexit (?:code )?(\d+)", comment)
    return int(m.group(1)) if m else 0


def _run_bash(block: Block, ws: Workspace) -> str:
    output = ""
    for raw in block.body.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert line.startswith("gradprobe "), (
            f"{block.where}: {line!r} is not a gradprobe command; mark the block `bash skip`"
        )
        proc = _gradprobe(line, ws.folder)
        expected = _expected_code(line)
        assert proc.returncode == expected, (
            f"{block.where}: `{line}` exited {proc.returncode}, the docs say {expected}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
        output = proc.stdout
    return output


def _run_toml(block: Block, ws: Workspace) -> None:
    from gradprobe.errors import SuiteConfigError
    from gradprobe.suites.config import load_suite

    data = tomllib.loads(block.body)
    first = block.body.splitlines()[0] if block.body.strip() else ""
    name = re.fullmatch(r"#\s*([\w./-]+\.toml)\s*", first)
    path = ws.folder / (name.group(1) if name else f"suite_{block.line}.toml")
    path.write_text(block.body, encoding="utf-8")
    if "checks" not in data:
        return
    if "error" in block.attrs:  # an example of a config mistake
        with pytest.raises(SuiteConfigError):
            load_suite(path)
        return
    assert load_suite(path).names == tuple(data["checks"])


def _pattern(line: str) -> re.Pattern[str]:
    parts = [re.escape(p) for p in " ".join(line.split()).split("…")]
    return re.compile(".*".join(parts))


def _compare(block: Block, actual: str) -> None:
    want = [ln for ln in block.body.splitlines() if ln.strip()]
    have = [" ".join(ln.split()) for ln in actual.splitlines() if ln.strip()]
    assert have, f"{block.where}: the command printed nothing to compare with"
    i = 0
    for line in want:
        pattern = _pattern(line)
        while i < len(have) and not pattern.fullmatch(have[i]):
            i += 1
        assert i < len(have), (
            f"{block.where}: this documented line is not in the output (in order):\n  {line}\n"
            "the output:\n" + "\n".join(have)
        )
        i += 1
    if "abridged" not in block.attrs:
        assert len(want) == len(have), (
            f"{block.where}: {len(want)} lines documented, {len(have)} printed; mark the block "
            "`abridged` when lines are left out"
        )


def _run(block: Block, ws: Workspace, monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    if block.language == "python":
        try:
            ws.last_output[index] = _run_python(block, ws, monkeypatch)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] not in OPTIONAL_MODULES:
                raise
            ws.done.add(index)
            pytest.skip(f"{block.where} needs {exc.name}, which is not installed")
    elif block.language == "bash":
        ws.last_output[index] = _run_bash(block, ws)
    elif block.language == "toml":
        _run_toml(block, ws)
    elif block.language == "text":
        command = block.attrs.get("output")
        if command:
            proc = _gradprobe(command, ws.folder)
            _compare(block, proc.stdout + proc.stderr)
        else:
            assert index - 1 in ws.last_output, (
                f"{block.where}: `output` must follow a python or bash block"
            )
            _compare(block, ws.last_output[index - 1])
    ws.done.add(index)


def _check_kind(block: Block) -> None:
    assert block.language in LANGUAGES, (
        f"{block.where}: a ```{block.language} block; use python, bash, toml or text (or add "
        "`skip`)"
    )
    if block.language == "text" and "skip" not in block.attrs:
        assert "output" in block.attrs, (
            f"{block.where}: a text block must be generated (`text output` or "
            '`text output="gradprobe ..."`) or marked `skip`'
        )


def _params() -> list[Any]:
    return [
        pytest.param(block, id=block.where, marks=[pytest.mark.slow] * ("slow" in block.attrs))
        for block in ALL_BLOCKS
    ]


@pytest.mark.timeout(BLOCK_SECONDS * 4)
@pytest.mark.parametrize("block", _params())
def test_doc_block(block, docs_root, monkeypatch):
    _check_kind(block)
    if "skip" in block.attrs:
        pytest.skip("marked skip in the docs")
    ws = _workspace(block.doc, docs_root)
    blocks = [b for b in ALL_BLOCKS if b.doc == block.doc]
    me = blocks.index(block)
    # Blocks run in document order, once each; under -k the earlier ones that leave state
    # behind (python names, written files, outputs of commands) run first.
    plain_output = block.language == "text" and not block.attrs.get("output")
    for k, earlier in enumerate(blocks[:me]):
        if k in ws.done or "skip" in earlier.attrs:
            continue
        needed = earlier.language == "python" or (
            earlier.language == "bash" and "slow" not in earlier.attrs
        )
        if needed or (plain_output and k == me - 1):
            with contextlib.suppress(pytest.skip.Exception):  # needs a missing framework
                _run(earlier, ws, monkeypatch, k)
    _run(block, ws, monkeypatch, me)


TEST_REF = re.compile(r"tests/([\w/]+\.py)::(\w+)")


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_referenced_tests_exist(doc):
    text = doc.read_text(encoding="utf-8")
    missing = []
    for path, name in set(TEST_REF.findall(text)):
        file = REPO / "tests" / path
        if not file.is_file() or not re.search(
            rf"^def {name}\(", file.read_text(encoding="utf-8"), re.M
        ):
            missing.append(f"tests/{path}::{name}")
    assert not missing, f"{doc.name} names tests that do not exist: {sorted(missing)}"


def test_every_doc_has_been_found():
    assert (REPO / "README.md") in DOC_FILES and len(ALL_BLOCKS) > 5
