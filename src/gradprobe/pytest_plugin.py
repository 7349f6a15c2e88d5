"""pytest plugin (entry point ``gradprobe``): ``--gradprobe-seed N`` and a ``gradprobe_seed`` fixture.

``pytest --gradprobe-seed 7`` makes :func:`gradprobe.testing.assert_gradients_ok` use seed 7
wherever a test does not pass one; the ``gradprobe_seed`` fixture gives the same number to tests
that call :func:`gradprobe.check` themselves.
"""

from __future__ import annotations

from typing import Any

import pytest

from . import testing


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise pytest.UsageError(f"--gradprobe-seed: expected an int >= 0, found {text!r}") from None
    if value < 0:
        raise pytest.UsageError(f"--gradprobe-seed: expected an int >= 0, found {value}")
    return value


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("gradprobe", "gradient checks")
    group.addoption(
        "--gradprobe-seed",
        action="store",
        default=None,
        metavar="N",
        help="seed for gradprobe.testing.assert_gradients_ok when a test gives none (default 0)",
    )


def pytest_configure(config: Any) -> None:
    raw = config.getoption("--gradprobe-seed", default=None)
    config._gradprobe_previous_seed = testing._default_seed
    testing.set_default_seed(None if raw is None else _seed(raw))


def pytest_unconfigure(config: Any) -> None:
    testing.set_default_seed(getattr(config, "_gradprobe_previous_seed", None))


def pytest_report_header(config: Any) -> str | None:
    raw = config.getoption("--gradprobe-seed", default=None)
    return None if raw is None else f"gradprobe seed: {raw}"


@pytest.fixture
def gradprobe_seed() -> int:
    """The seed from ``--gradprobe-seed`` (0 when not given)."""
    return testing.default_seed()
