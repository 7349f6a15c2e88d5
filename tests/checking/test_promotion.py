"""float32 checks that verify (issue 22): promote="auto" rechecks in float64 what a float32
check left at the round-off floor, or says what was not verified."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe

RNG = np.random.default_rng(0)
W = RNG.standard_normal((64, 512)).astype(np.float32)
G = RNG.standard_normal((64, 512)).astype(np.float32)


def _loss(p):
    return float(np.sum(np.tanh(p["W"]) * G, dtype=p["W"].dtype))


def _planted(p):
    g = (G * (1 - np.tanh(p["W"]) ** 2)).astype(p["W"].dtype)
    g[3, 7] *= 1.5  # one entry 50% wrong, below the float32 round-off floor
    return {"W": g}


def test_planted_float32_entry_is_found_by_default():
    r = gradprobe.check(_loss, _planted, {"W": W})
    assert not r.passed
    assert r.params["W"].bad_indices == ((3, 7),)
    assert "promote='auto'" in r.warnings[0] and "float64" in r.warnings[0]
    assert W.dtype == np.float32  # the caller's array is not changed


def test_promote_false_keeps_the_float32_check():
    r = gradprobe.check(_loss, _planted, {"W": W}, promote=False)
    assert r.passed and r.params["W"].dtype == "float32"
    assert not any("promote='auto'" in w for w in r.warnings)


def test_a_loss_that_refuses_float64_says_what_was_not_verified():
    def loss32(p):
        if p["W"].dtype != np.float32:
            raise TypeError("float32 only")
        return _loss(p)

    r = gradprobe.check(loss32, _planted, {"W": W})
    assert r.params["W"].dtype == "float32"
    note = [w for w in r.warnings if "promote='auto'" in w]
    assert note and "NOT verified" in note[0] and "W (" in note[0]


@pytest.mark.parametrize("value", ["yes", 1.5, None])
def test_promote_refuses_other_values(value):
    with pytest.raises(
        gradprobe.InvalidInputError, match="promote: expected True, False or 'auto'"
    ):
        gradprobe.check(_loss, _planted, {"W": W}, promote=value)
