"""gradprobe.sweep (step_sweep.py): the relative error over a range of steps draws a V."""

from __future__ import annotations

import numpy as np
import pytest

import gradprobe
from gradprobe.examples import make_mlp


def test_sweep_draws_the_classic_v():
    m = make_mlp((8, 6, 6, 3), batch=4)
    result = gradprobe.sweep(m.loss, m.grad, m.params, entries=3)
    assert result.rel_errors.shape == (3, result.steps.size) == result.numeric.shape
    assert np.all(np.diff(result.steps) > 0)
    best = result.rel_errors.min(axis=1)
    # Round-off ruins the smallest steps, truncation the largest; the bottom is far below both.
    assert np.all(best < 1e-8)
    assert np.all(result.rel_errors[:, 0] > 1e3 * best)
    assert np.all(result.rel_errors[:, -1] > 1e3 * best)
    # The default step sits near the bottom of the V (within two decades).
    assert np.all(np.abs(np.log10(result.best_steps / result.default_step)) < 2)
    assert result.n_evaluations == 2 * 3 * result.steps.size
    assert len(result.entries) == 3 and result.method == "central"
    d = result.to_dict()
    assert len(d["rel_errors"]) == 3 and d["default_step"] == result.default_step


def test_sweep_takes_entries_from_the_named_parameter_and_custom_steps():
    m = make_mlp((8, 6, 6, 3), batch=4)
    result = gradprobe.sweep(m.loss, m.grad, m.params, param="W2", entries=2, steps=[1e-3, 1e-6])
    assert [name for name, _ in result.entries] == ["W2", "W2"]
    assert result.steps.tolist() == [1e-6, 1e-3]
    g = m.grad(m.params)["W2"]
    assert abs(g[result.entries[0][1]]) == pytest.approx(np.abs(g).max())


def test_sweep_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    m = make_mlp((8, 6, 6, 3), batch=4)
    path = tmp_path / "v.png"
    result = gradprobe.sweep(m.loss, m.grad, m.params, entries=2, plot=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.plot(tmp_path / "again.png").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"entries": 0}, "entries: expected an int >= 1"),
        ({"param": "nope"}, "param: expected names among"),
        ({"steps": [1e-3, -1.0]}, "steps: expected positive"),
        ({"method": "forward"}, "method: expected one of"),
    ],
)
def test_sweep_validates_its_arguments(kwargs, match):
    m = make_mlp((4, 3), batch=2)
    with pytest.raises(gradprobe.InvalidInputError, match=match):
        gradprobe.sweep(m.loss, m.grad, m.params, **kwargs)


def test_sweep_result_prints_a_small_table():
    m = make_mlp((8, 6, 6, 3), batch=4)
    result = gradprobe.sweep(m.loss, m.grad, m.params, entries=2, steps=np.logspace(-9, -2, 8))
    text = str(result)
    lines = text.splitlines()
    assert lines[0] == (
        "step sweep: central differences, 8 relative steps from 1e-09 to 0.01 "
        f"({result.n_evaluations:,} loss evaluations)"
    )
    header = lines[2].split()
    assert header[:2] == ["entry", "analytic"] and "best step" in lines[2]
    rows = lines[3:]
    assert len(rows) == 2
    for row, (name, index), best in zip(rows, result.entries, result.best_steps, strict=True):
        assert row.split()[0] == f"{name}[{', '.join(map(str, index))}]".split()[0]
        assert f"{best:.2g}" in row
