"""An adapter's vmap verified inside its own calls (CheckedVmap): each pattern of mapped inputs
at its first call, by one extra row at the inputs, and one direct call per copy where vmap
raises or gives another value there."""

from __future__ import annotations

import numpy as np
import pytest

from gradprobe.functional.adapted import CheckedVmap, framework_roles
from gradprobe.functional.reduction import prepare

BASE = {"x": np.linspace(-1.0, 1.0, 6), "y": np.array([0.5, 2.0])}


def forward(p):
    return [np.tanh(p["x"]) * p["y"].sum()]


class FakeVmap:
    """forward over the leading axis; ``wrong``/``raises``: patterns (sets of mapped inputs)
    where it gives a value off by 1e-3 or raises, as a broken batching rule would."""

    def __init__(self, wrong=(), raises=()):
        self.wrong, self.raises = [set(w) for w in wrong], [set(r) for r in raises]
        self.calls: list[tuple[set, int]] = []

    def __call__(self, p):
        b = max(a.shape[0] for a in p.values())
        mapped = {n for n, a in p.items() if a.shape[0] == b}
        self.calls.append((mapped, b))
        if mapped in self.raises:
            raise RuntimeError("vmap: no batching rule")
        rows = [
            forward({n: a[r] if a.shape[0] == b else a[0] for n, a in p.items()}) for r in range(b)
        ]
        out = np.stack([r[0] for r in rows])
        return [out + 1e-3 if mapped in self.wrong else out]


def _checked(fake):
    setup = prepare(
        forward, BASE, None, None, {}, framework_roles("t", "b", "g"), value=forward(BASE)
    )
    return CheckedVmap(fake, forward, setup, BASE)


def _rows(x_rows):
    return {"x": x_rows, "y": BASE["y"][np.newaxis]}


def test_each_pattern_verified_once_in_its_first_call():
    fake = FakeVmap()
    checked = _checked(fake)
    x = BASE["x"] + np.arange(3)[:, None] * 1e-3
    first = checked(_rows(x))
    again = checked(_rows(x))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(
        first[0], np.stack([forward({"x": r, "y": BASE["y"]})[0] for r in x])
    )
    # The first call carried one more row (the inputs), the second did not; no other call.
    assert fake.calls == [({"x"}, 4), ({"x"}, 3)]
    assert not checked.failed


@pytest.mark.parametrize("fault", ["wrong", "raises"])
def test_a_failing_pattern_runs_one_direct_call_per_copy(fault):
    fake = FakeVmap(**{fault: [{"x"}]})
    checked = _checked(fake)
    x = BASE["x"] + np.arange(3)[:, None] * 1e-3
    out = checked(_rows(x))
    np.testing.assert_array_equal(
        out[0], np.stack([forward({"x": r, "y": BASE["y"]})[0] for r in x])
    )
    checked(_rows(x))
    assert fake.calls == [({"x"}, 4)]  # never vmapped again over x
    assert set(checked.failed) == {frozenset({"x"})}
    assert ("raised RuntimeError" if fault == "raises" else "where the direct call gives") in (
        checked.failed[frozenset({"x"})]
    )
    # Another pattern still runs vmapped.
    y = BASE["y"] + np.arange(2)[:, None] * 1e-3
    checked({"x": BASE["x"][np.newaxis], "y": y})
    assert fake.calls[1:] == [({"y"}, 3)]
    assert frozenset({"y"}) not in checked.failed
