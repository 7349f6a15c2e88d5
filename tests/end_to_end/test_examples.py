"""Each planted bug of the example model fails exactly the parameters it breaks."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.examples import MLP_BUGS, make_mlp


@pytest.mark.parametrize("bug", sorted(MLP_BUGS))
def test_planted_bug_fails_the_right_parameters(bug):
    m = make_mlp(bug=bug)
    report = gradprobe.check(m.loss, m.grad, m.params)
    failed = {p.name for p in report.failures}
    assert failed == set(m.expected_failures), str(report)
    assert not report.passed


def test_correct_example_passes_under_several_seeds():
    for seed in range(5):
        m = make_mlp(seed=seed)
        report = gradprobe.check(m.loss, m.grad, m.params, seed=seed)
        assert report.passed, str(report)


def test_example_rejects_unknown_bug_and_bad_sizes():
    with pytest.raises(ValueError, match="bug: expected None or one of"):
        make_mlp(bug="nope")
    with pytest.raises(ValueError, match="square W2"):
        make_mlp(sizes=(4, 3, 2, 2), bug="transpose")
    with pytest.raises(ValueError, match="sizes"):
        make_mlp(sizes=(4,))


def test_example_loss_matches_definition():
    m = make_mlp(sizes=(3, 2), batch=4, l2=0.5)
    X, y = m.data["X"], m.data["y"]
    z = X @ m.params["W1"] + m.params["b1"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = -np.log(p[np.arange(4), y]).mean() + 0.25 * np.sum(m.params["W1"] ** 2)
    assert m.loss(m.params) == pytest.approx(expected, rel=1e-12)
