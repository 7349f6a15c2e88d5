"""Choosing a suite's checks by name: ``-k EXPR`` (pytest style) and ``--check NAME``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..errors import InvalidInputError
from .config import CheckSpec, Suite

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


def _keyword_matcher(expr: str) -> Callable[[str], bool]:
    """Compile a pytest-style ``-k`` expression: substrings joined by and/or/not, parentheses."""
    tokens = _TOKEN.findall(expr)
    if not tokens or "".join(tokens) != re.sub(r"\s+", "", expr):
        raise InvalidInputError(f"-k: cannot parse {expr!r}; write e.g. -k 'mlp and not bug'.")
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def parse_or() -> Any:
        left = parse_and()
        while peek() == "or":
            take()
            right = parse_and()
            left = (lambda a, b: lambda n: a(n) or b(n))(left, right)
        return left

    def parse_and() -> Any:
        left = parse_not()
        while peek() == "and":
            take()
            right = parse_not()
            left = (lambda a, b: lambda n: a(n) and b(n))(left, right)
        return left

    def parse_not() -> Any:
        if peek() == "not":
            take()
            inner = parse_not()
            return lambda n: not inner(n)
        return parse_atom()

    def parse_atom() -> Any:
        tok = peek()
        if tok is None or tok in ("and", "or", ")"):
            raise InvalidInputError(
                f"-k: expected a name or '(' in {expr!r}; write e.g. -k 'mlp and not bug'."
            )
        take()
        if tok == "(":
            inner = parse_or()
            if peek() != ")":
                raise InvalidInputError(f"-k: missing ')' in {expr!r}.")
            take()
            return inner
        return lambda n: tok in n

    matcher = parse_or()
    if pos != len(tokens):
        raise InvalidInputError(f"-k: unexpected {tokens[pos]!r} in {expr!r}.")
    return matcher


def select_checks(
    suite: Suite, keyword: str | None = None, names: tuple[str, ...] | list[str] = ()
) -> tuple[CheckSpec, ...]:
    """Checks whose names match ``keyword`` (pytest ``-k`` style) and, if given, are in ``names``.

    Raises
    ------
    InvalidInputError
        An unknown name in ``names`` or an unparsable expression.
    """
    unknown = [n for n in names if n not in suite.names]
    if unknown:
        raise InvalidInputError(
            f"--check: no check named {unknown} in {suite.path}; checks there: {list(suite.names)}."
        )
    chosen = [c for c in suite.checks if not names or c.name in names]
    if keyword:
        match = _keyword_matcher(keyword)
        chosen = [c for c in chosen if match(c.name)]
    return tuple(chosen)
